"""CPU tests of the fused backward GEMMs: the deterministic second pass, the warp reduction of the
dgrad epilogue (simulated lanes), the config checks, the registry entries and the runtime argument
layouts.  The real DSL compile of every variant (HMMA/HGMMA present, zero spills) is
tests/test_kernels_build.py (``cutlass_kernels.build --check``); the numerics of the kernels need a
GPU: tests/gpu/test_gemm_bwd.py.
"""
from __future__ import annotations

import pytest
import torch

from rational_reference import reference_grads, reference_rational

from cutlass_kernels.gemm.bwd_launch import fold_partials, unsupported_reason

CHUNK = 8  # the kernel's partial granularity (asserted against the module below)


def _partials_like_the_kernel(x, grad, num, den, form, row_blocks):
    """The workspace the dgrad epilogue writes, built from the float64 reference: slot (r, c) holds
    the coefficient gradient of sum(grad * F(x)) restricted to row block r and 8-column chunk c,
    laid out [d a_0..a_m (of the chunk's group), d b_1..b_n (of the chunk's group)]."""
    m1, n = num.shape[1], den.shape[1]
    k, g = x.shape[1], den.shape[0]
    ws = torch.empty(len(row_blocks), k // CHUNK, m1 + n, dtype=torch.float64)
    fn = lambda nm, dn: reference_rational(x, nm, dn, form)  # noqa: E731
    for r, rows in enumerate(row_blocks):
        for c in range(k // CHUNK):
            mask = torch.zeros_like(grad)
            mask[rows, c * CHUNK : (c + 1) * CHUNK] = 1
            d_num, d_den = reference_grads(fn, grad * mask, num, den)
            grp = c // (k // CHUNK // g)
            ws[r, c, :m1] = d_num[grp if num.shape[0] > 1 else 0]
            ws[r, c, m1:] = d_den[grp]
    return ws


@pytest.mark.parametrize("form", ["A", "B"])
@pytest.mark.parametrize("shared", [True, False])
def test_fold_partials_matches_reference(form, shared, seeded):
    import cutlass_kernels.gemm.bwd_sm80 as k

    assert k.CHUNK == CHUNK
    g, k_dim, rows = 2, 32, 10
    x = torch.randn(rows, k_dim, generator=seeded, dtype=torch.float64)
    grad = torch.randn(rows, k_dim, generator=seeded, dtype=torch.float64)
    num = torch.randn(1 if shared else g, 6, generator=seeded, dtype=torch.float64)
    den = torch.randn(g, 4, generator=seeded, dtype=torch.float64)
    ws = _partials_like_the_kernel(x, grad, num, den, form, [slice(0, 4), slice(4, 7), slice(7, 10)])
    d_num, d_den = fold_partials(ws, g, shared, m=5)
    ref_num, ref_den = reference_grads(lambda nm, dn: reference_rational(x, nm, dn, form), grad, num, den)
    torch.testing.assert_close(d_num, ref_num, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(d_den, ref_den, rtol=1e-10, atol=1e-10)
    # Dense, as the custom op's fake impl promises (column slices broke compiled KAT on an H100).
    assert d_num.is_contiguous() and d_den.is_contiguous()
    # Deterministic: the same partials fold to bitwise the same result.
    again = fold_partials(ws.clone(), g, shared, m=5)
    assert torch.equal(again[0], d_num) and torch.equal(again[1], d_den)


def test_config_rejects_bad_parameters():
    from cutlass_kernels.gemm.bwd_sm80 import BwdConfig

    with pytest.raises(ValueError, match="mode"):
        BwdConfig("xgrad", "bf16", "bf16")
    with pytest.raises(ValueError, match="form"):
        BwdConfig("dgrad", "bf16", "bf16", form="C")
    with pytest.raises(ValueError, match="ab_dtype"):
        BwdConfig("wgrad", "fp32", "fp32")
    with pytest.raises(ValueError, match="dx in x's dtype"):
        BwdConfig("dgrad", "bf16", "fp32")
    with pytest.raises(ValueError, match="tile"):
        BwdConfig("dgrad", "bf16", "bf16", tile=(100, 128, 32))
    assert BwdConfig("wgrad", "bf16", "fp32").key() != BwdConfig("wgrad", "bf16", "fp32", form="B").key()


def test_unsupported_reason_on_cpu_tensors():
    x = torch.randn(4, 64, dtype=torch.bfloat16)
    why = unsupported_reason(torch.randn(4, 16), x, torch.randn(1, 6), torch.randn(8, 4), torch.randn(16, 64))
    assert why is not None and "CUDA" in why


def test_registered_variants_names_and_expectations():
    from cutlass_kernels.gemm.bwd_variants import variants

    vs = variants()
    names = {v.name for v in vs}
    # sm80 dgrad/wgrad x 2 dtypes x 2 forms, sm90wspp x 2 x 2, sm90ws x 2 (form A only); the old
    # sm90 dgrad / wgrad pair is gone
    assert len(names) == len(vs) == 14
    assert not any("_sm90_" in name for name in names)
    for v in vs:
        assert "rational" in v.name and "gemm" in v.name
        ws = "_sm90ws_" in v.name or "_sm90wspp_" in v.name
        mma = "HGMMA" if ws else "HMMA"
        assert bool(v.role_check) == ws
        assert dict(v.expect_sass)[mma] >= 1 and v.arches == (("sm_90a",) if mma == "HGMMA" else ("sm_80",))


def _bwd_entry(tmp_path, mode: str, ffi: bool):
    """A backward pointer entry (the sm_80 mma.sync pair, the one with a wgrad) compiled with
    placeholders, AOT-exported and loaded back (the launcher's path through
    ``cutlass_kernels.runtime``), offline."""
    import shutil

    pytest.importorskip("cutlass")
    if ffi:
        pytest.importorskip("tvm_ffi")
    if shutil.which("g++") is None:
        pytest.skip("no g++ for the AOT link")
    from cutlass_kernels import runtime

    fields = {"mode": mode, "ab_dtype": "bf16", "c_dtype": "bf16" if mode == "dgrad" else "fp32", "form": "A",
              "m": 5, "n": 4, "shared_numerator": False, "kernel": "sm80"}
    prefix = f"fk_bwd_{mode}_sm80_{int(ffi)}"
    runtime._export(runtime._compile("cutlass_kernels.gemm.bwd_compile:compile_variant", fields, "sm_80", ffi),
                    prefix, tmp_path, ffi)
    return runtime._load(tmp_path, prefix, ffi)


def _bwd_problem(mode: str):
    """Launcher arguments of one dgrad / wgrad call (CPU tensors: only addresses and sizes are read)."""
    rows, k, n_out, g = 300, 192, 768, 8
    go, w = torch.zeros(rows, n_out, dtype=torch.bfloat16), torch.zeros(n_out, k, dtype=torch.bfloat16)
    x = torch.zeros(rows, k, dtype=torch.bfloat16)
    ws = torch.empty(24, k // 8, 10)
    num, den = torch.zeros(g, 6), torch.zeros(g, 4)
    if mode == "dgrad":
        return (go, w, torch.empty_like(x), x, ws, num, den), (rows, n_out // 8, k // 8, 24, g, g, k // g)
    return (go, x, torch.empty(n_out, k), x, ws, num, den), (rows, n_out // 8, k // 8, 24, g, g, k // g)


@pytest.mark.parametrize("mode", ["dgrad", "wgrad"])
def test_launch_arguments_bind_to_the_compiled_entry(tmp_path, mode):
    """What the launcher passes reaches the compiled backward entry in the intended slots: the
    AOT-loaded entry packs the arguments (the DSL's own marshalling, no GPU) and each packed value
    is the address or size meant for that parameter; TVM-FFI gets the same values as ints."""
    import ctypes

    import cuda.bindings.driver as cuda

    from cutlass_kernels.gemm.bwd_launch import launch_arguments

    entry = _bwd_entry(tmp_path, mode, ffi=False)
    tensors, sizes = _bwd_problem(mode)
    args = launch_arguments(*tensors, ffi=False)  # kept alive: exe points into these objects
    exe, _ = entry.generate_execution_args(*args, cuda.CUstream(0))
    values = [ctypes.cast(a, ctypes.POINTER(ctypes.c_uint64)).contents.value for a in exe]
    assert len(values) == 7 + 7 + 1
    assert values[:7] == [t.data_ptr() for t in tensors]
    ints = [v & 0xFFFFFFFF for v in values[7:14]]
    assert ints == list(sizes)
    assert launch_arguments(*tensors, ffi=True) == (*values[:7], *ints)


@pytest.mark.skipif(torch.cuda.is_available(), reason="calls the entry with host addresses: CPU-only machines")
@pytest.mark.parametrize("mode", ["dgrad", "wgrad"])
def test_tvm_ffi_entry_accepts_the_launch_arguments(tmp_path, mode):
    """The TVM-FFI backward entry type-checks the launcher's ints in C and only fails at the missing
    CUDA driver; a wrong count or type fails the checks."""
    from cutlass_kernels.gemm.bwd_launch import launch_arguments

    fn = _bwd_entry(tmp_path, mode, ffi=True)
    args = launch_arguments(*_bwd_problem(mode)[0], ffi=True)
    with pytest.raises(RuntimeError, match="(?i)cuda"):
        fn(*args, 0)
    with pytest.raises(TypeError, match="Expects 15 parameters"):
        fn(*args)
    with pytest.raises(TypeError, match="Mismatched type on argument #7"):
        fn(*args[:7], 1.5, *args[8:], 0)


def test_pointer_entry_builds_the_tensor_interface_layouts(tmp_path):
    """PointerEntry builds, inside the trace, tensors with the layouts of the kernels' tensor
    interface (``fake_arguments``): both compile, and to kernels with the same tensor-core, shuffle
    and vector-memory instructions (the address arithmetic differs: 32-bit offsets from Int32
    sizes, and with it the integer divisions' MUFU count)."""
    pytest.importorskip("cutlass")
    from cutlass_kernels import dsl, sass
    from cutlass_kernels.gemm import bwd_compile

    fields = {"mode": "dgrad", "ab_dtype": "bf16", "c_dtype": "bf16", "form": "A", "kernel": "sm80"}
    counts = []
    for i, fn in enumerate((bwd_compile.compile_variant, bwd_compile.compile_tensor_variant)):
        compiled = fn("sm_80", dsl.compile_options("sm_80", tmp_path / f"dump{i}"), **fields)
        cubin = tmp_path / f"k{i}.cubin"
        cubin.write_bytes(dsl.compiled_cubin(compiled))
        info = sass.inspect_cubin(cubin)
        counts.append({op: info["sass"].get(op, 0) for op in ("HMMA", "SHFL", "LDL", "STL")}
                      | {op: info["sass_full"].get(op, 0) for op in ("LDG.E.128", "STG.E.128")})
    assert counts[0] == counts[1], counts
    assert counts[0]["HMMA"] > 0 and counts[0]["LDG.E.128"] > 0 and counts[0]["LDL"] == 0


class _NumpyWarp:
    """reduce_scatter's operations on 32 simulated lanes (one numpy array per value)."""

    lanes = None

    @staticmethod
    def bit(lane, off):
        return (lane & off) != 0

    @staticmethod
    def select(cond, a, b):
        import numpy as np

        return np.where(cond, a, b)

    select_int = select

    @staticmethod
    def shfl_xor(v, off):
        import numpy as np

        return v[np.arange(32) ^ off]


@pytest.mark.parametrize("n", [1, 5, 10, 20, 40, 64, 160])
def test_warp_reduce_scatter_sums_every_index_once(n):
    """The dgrad epilogue's cross-lane reduction, run on a CPU model of a warp: each original index
    ends on exactly one writer lane, holding the sum over the 32 lanes (float64: exact order aside)."""
    import numpy as np

    from cutlass_kernels.gemm.bwd_epilogue import reduce_scatter

    rng = np.random.default_rng(n)
    data = rng.standard_normal((n, 32))
    lane = np.arange(32)
    vals, base, rest = reduce_scatter([data[i].copy() for i in range(n)], lane, _NumpyWarp)
    base = np.broadcast_to(base, (32,))
    seen = []
    for ln in range(32):
        if ln & rest:
            continue
        for j, v in enumerate(vals):
            idx = int(base[ln]) + j
            seen.append(idx)
            assert v[ln] == pytest.approx(data[idx].sum(), rel=1e-12, abs=1e-12)
    assert sorted(seen) == list(range(n))
    # Shuffle count actually issued per lane (what the kernel pays): far below the 5n of a butterfly.
    shuffles, m, off = 0, n, 16
    while off >= 1 and m % 2 == 0:
        m //= 2
        shuffles += m
        off //= 2
    while off >= 1:
        shuffles += m
        off //= 2
    assert shuffles <= 5 * n


def test_fused_backward_policy_follows_the_env_and_the_measured_arch_default(monkeypatch):
    """Unset/auto: unfused on sm_90 (measured faster on an H100, bench/results/) and on sm_80-89
    (the cost model's prediction at the KAT-B shape, cutlass_kernels.decisions);
    1/0 force it; anything else is an error, not a silent default.  The capability query is
    replaced because this runs without a GPU."""
    from cutlass_kernels import abi
    from cutlass_kernels.gemm import bwd_launch

    cuda0 = torch.device("cuda", 0)
    monkeypatch.delenv("FUSEDKAT_FUSED_BWD", raising=False)
    for cap, fused in (((9, 0), False), ((8, 0), False), ((8, 9), False)):
        monkeypatch.setattr(abi, "device_info", lambda device, cap=cap: (cap, 132))
        assert bwd_launch.enabled(cuda0) is fused, cap
        monkeypatch.setenv("FUSEDKAT_FUSED_BWD", "auto")
        assert bwd_launch.enabled(cuda0) is fused, cap
        monkeypatch.setenv("FUSEDKAT_FUSED_BWD", "1")
        assert bwd_launch.enabled(cuda0) is True
        monkeypatch.setenv("FUSEDKAT_FUSED_BWD", "0")
        assert bwd_launch.enabled(cuda0) is False
        monkeypatch.delenv("FUSEDKAT_FUSED_BWD")
    monkeypatch.setenv("FUSEDKAT_FUSED_BWD", "yes please")
    with pytest.raises(ValueError, match="FUSEDKAT_FUSED_BWD='yes please'"):
        bwd_launch.enabled(cuda0)


@pytest.mark.parametrize("weight_dtype", [torch.float32, torch.float64], ids=["fp32-weight", "same-dtype"])
def test_unfused_backward_composition_on_cpu(monkeypatch, weight_dtype):
    """The host side of the unfused CUDA backward (``launch._unfused_backward``), run on CPU float64
    tensors with its one kernel launch (``launch._backward``) replaced by that kernel's contract
    written in torch: dx/dcoefs from torch_impl, F(x) into the first K columns of ``f_out`` and
    (1, 0, ..., 0) into the rest.  Checks the [F(x) | 1] GEMM trick, the slicing and the dtypes and
    dense strides against torch_impl's backward; the real kernel is checked by tests/gpu."""
    from cutlass_kernels import launch
    from cutlass_kernels.rational_elementwise import TAIL
    from fusedkat.ops import torch_impl

    def kernel_contract(grad, x, num, den, form, f_out=None, ones_tail=False):
        k = x.shape[-1]
        f_out[:, :k] = torch_impl.group_rational_forward(x, num, den, form).reshape(-1, k)
        f_out[:, k:] = 0
        f_out[:, k] = 1 if ones_tail else float("nan")
        return torch_impl.group_rational_backward(grad, x, num, den, form)

    monkeypatch.setattr(launch, "_backward", kernel_contract)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(3, 41, 96, generator=gen, dtype=torch.float64)
    go = torch.randn(3 * 41, 80, generator=gen, dtype=torch.float64)
    num, den = torch.randn(1, 6, generator=gen), torch.randn(8, 4, generator=gen)
    w = torch.randn(80, 96, generator=gen).to(weight_dtype)
    got = launch._unfused_backward(go, x, num.double(), den.double(), w, "B")
    want = torch_impl.rational_linear_backward(go, x, num.double(), den.double(), w.double(), True, "B")
    assert TAIL == 8
    for name, a, b in zip(("dx", "dnum", "dden", "dw", "db"), got, want):
        assert a.shape == b.shape and a.is_contiguous(), name
        torch.testing.assert_close(a.double(), b.double(), rtol=1e-6, atol=1e-9, msg=name)
    assert got[3].dtype == got[4].dtype == weight_dtype

"""CPU tests of the fused forward GEMM (issue 6): real CuTe DSL compiles for sm_80 and sm_90a with
SASS inspection, the registry entries, and the launcher's config logic.  No GPU needed; what runs
on a GPU is in tests/gpu/test_gemm_fwd.py."""
from __future__ import annotations

import pytest
import torch

from cutlass_kernels.gemm import fwd_launch


def _sass(variant_name: str, arch: str, tmp_path):
    """Compile a registered variant (or, for ``"launcher:<json fields>"``, a launcher config)."""
    pytest.importorskip("cutlass")
    import json

    from cutlass_kernels import dsl, sass
    from cutlass_kernels.gemm.variants import TARGET, SOURCES, fwd_variants
    from cutlass_kernels.registry import make_variant

    if variant_name.startswith("launcher:"):
        v = make_variant("rational_gemm_fwd_test", TARGET, json.loads(variant_name[9:]), arches=(arch,),
                         expect_sass={"HMMA": 16, "MUFU.RCP": 48}, sources=SOURCES)
    else:
        (v,) = [v for v in fwd_variants() if v.name == variant_name]
    compiled = v.compile_function()(arch=arch, options=dsl.compile_options(arch, tmp_path / "dump"),
                                    **v.kwargs_dict)
    cubin = tmp_path / "k.cubin"
    cubin.write_bytes(dsl.compiled_cubin(compiled))
    return v, sass.inspect_cubin(cubin)


def _count(full: dict, op: str) -> int:
    return sum(c for name, c in full.items() if name == op or name.startswith(op + "."))


@pytest.mark.parametrize("name,arch,mma,max_regs", [
    ("rational_gemm_fwd_sm80_bf16_A", "sm_80", "HMMA", 200),
    ("rational_gemm_fwd_sm90_fp16_B", "sm_90a", "HGMMA", 168),
    ("rational_gemm_fwd_sm80_bf16_A_smem", "sm_80", "HMMA", 200),
    # the launcher's small-grid tile, fp16 / form B / 16-aligned groups, built for sm_86
    ('launcher:{"kernel": "sm80", "tile": [128, 64, 32], "atoms": [4, 2, 1], "stages": 3, "group_align": 16,'
     ' "dtype": "fp16", "form": "B"}', "sm_86", "HMMA", 200),
])
def test_fused_forward_compiles_to_tensor_core_code_without_spills(name, arch, mma, max_regs, tmp_path):
    v, info = _sass(name, arch, tmp_path)
    full = info["sass_full"]
    for op, minimum in v.expect_sass:  # the registry's own expectations hold
        assert _count(full, op) >= minimum, (op, _count(full, op))
    assert _count(full, mma) >= (16 if mma == "HMMA" else 4)
    # no spills: neither local memory nor stack traffic
    assert info["spills"] == 0 and _count(full, "STL") == 0 and _count(full, "LDL") == 0
    assert info["registers"] <= max_regs, info["registers"]
    # the prologue is there and uses the fast reciprocal: >= one MUFU.RCP per transformed A value
    # (3 k-blocks x 16 values per thread on sm_80, 2 x 16 smem values with the smem prologue, 4 x 8
    # on sm_90a) -- a prologue whose result is
    # overwritten before the MMA would be dead code and vanish from here -- and Horner's FFMAs
    # (5 numerator + 3 denominator per value at degrees 5/4).  The large-|x| exact path adds its
    # own reciprocals (and fewer FFMAs each), so the FFMA floor is per transformed value, not per
    # MUFU.RCP.
    values = 32 if mma == "HGMMA" or name.endswith("_smem") else 48
    rcp = _count(full, "MUFU.RCP")
    assert rcp >= values
    assert _count(full, "FFMA") >= 8 * values


def test_registry_entries():
    from cutlass_kernels.gemm.common import FwdConfig  # noqa: F401  (imports the DSL)
    from cutlass_kernels.gemm.variants import fwd_variants, variants

    fwd = fwd_variants()
    names = {v.name for v in fwd}
    assert {f"rational_gemm_fwd_sm80_{d}_{f}" for d in ("bf16", "fp16") for f in "AB"} <= names
    assert {f"rational_gemm_fwd_sm90_{d}_{f}" for d in ("bf16", "fp16") for f in "AB"} <= names
    for v in fwd:
        assert "rational" in v.name and "gemm" in v.name
        kw = v.kwargs_dict
        assert v.arches == (("sm_90a",) if kw["kernel"] == "sm90" else ("sm_80",))
        assert dict(v.expect_sass).get("HGMMA" if kw["kernel"] == "sm90" else "HMMA", 0) >= 4
        FwdConfig(**{k: val for k, val in kw.items() if k != "kernel"})  # valid config
    assert len({v.name for v in variants()}) == len(variants())  # + backward, no duplicates


@pytest.mark.parametrize("k,g", [(192, 8), (384, 8), (768, 8), (1536, 8), (3072, 8), (224, 2), (96, 12)])
@pytest.mark.parametrize("arch", ["sm_80", "sm_86", "sm_90a"])
def test_candidates_fit_the_problem(arch, k, g):
    kg = k // g
    cands = fwd_launch.candidates(arch, k, kg)
    assert cands
    for c in cands:
        assert k % c["tile"][2] == 0, "K is never predicated: bK must divide K"
        assert kg % c["group_align"] == 0, "a coefficient set must not straddle groups"
        assert c["kernel"] == "sm80" or arch == "sm_90a"
    assert (cands[0]["kernel"] == "sm90") == (arch == "sm_90a" and k % 64 == 0)


def test_heuristic_fills_the_machine():
    big = fwd_launch.heuristic(128 * 197, 3072, 768, 8, "sm_90a", 132)
    assert big["kernel"] == "sm90" and big["tile"][1] == 256  # 197 x 12 tiles: wide N amortises F
    small = fwd_launch.heuristic(256, 768, 192, 8, "sm_80", 108)
    assert small["tile"][:2] == (128, 64)  # too few 128x128 tiles for 108 SMs: the smallest tile
    mid = fwd_launch.heuristic(4096, 768, 192, 8, "sm_80", 108)
    assert mid["tile"][:2] == (128, 128)


def test_config_validation():
    pytest.importorskip("cutlass")
    from cutlass_kernels.gemm.common import FwdConfig

    with pytest.raises(ValueError):
        FwdConfig(dtype="fp32")
    with pytest.raises(ValueError):
        FwdConfig(form="C")
    with pytest.raises(ValueError):
        FwdConfig(tile=(128, 128, 24))
    with pytest.raises(ValueError):
        FwdConfig(group_align=24)
    assert FwdConfig().key() != FwdConfig(form="B").key()


def test_unsupported_reason_on_cpu_tensors():
    x = torch.randn(4, 192, dtype=torch.bfloat16)
    w = torch.randn(768, 192, dtype=torch.bfloat16)
    reason = fwd_launch.unsupported_reason(x, torch.randn(1, 6), torch.randn(8, 4), w, None)
    assert reason is not None and "CUDA" in reason
    with pytest.raises(ValueError, match="CUDA"):
        fwd_launch.rational_linear_forward(x, torch.randn(1, 6), torch.randn(8, 4), w, None, "A")


def test_fused_forward_policy_follows_the_env_and_the_measured_arch_default(monkeypatch):
    """Unset/auto: the decision table (cutlass_kernels.decisions) at the KAT-B shape: unfused on
    sm_90 (measured), unfused on sm_80/86 (cost model), fused for a device of None; 1/0 force it;
    anything else is an error.  The capability query is replaced because this runs without a GPU."""
    from cutlass_kernels import abi

    cuda0 = torch.device("cuda", 0)
    monkeypatch.delenv(fwd_launch.ENV_FUSED_FWD, raising=False)
    assert fwd_launch.enabled() is True
    for cap, fused in (((9, 0), False), ((8, 0), False), ((8, 6), False)):
        monkeypatch.setattr(abi, "device_info", lambda device, cap=cap: (cap, 132))
        for value in (None, "auto", " AUTO "):
            if value is None:
                monkeypatch.delenv(fwd_launch.ENV_FUSED_FWD, raising=False)
            else:
                monkeypatch.setenv(fwd_launch.ENV_FUSED_FWD, value)
            assert fwd_launch.enabled(cuda0) is fused, (cap, value)
        monkeypatch.setenv(fwd_launch.ENV_FUSED_FWD, "1")
        assert fwd_launch.enabled(cuda0) is True
        monkeypatch.setenv(fwd_launch.ENV_FUSED_FWD, "0")
        assert fwd_launch.enabled(cuda0) is False
    monkeypatch.setenv(fwd_launch.ENV_FUSED_FWD, "fused")
    with pytest.raises(ValueError, match="FUSEDKAT_FUSED_FWD='fused'"):
        fwd_launch.enabled(cuda0)


def _aot_entry(tmp_path, prefix: str, ffi: bool = False):
    """The sm_90a pointer-ABI entry, compiled with placeholders, AOT-exported and loaded back (the
    launcher's path through ``cutlass_kernels.runtime``), offline; ``ffi``: as a TVM-FFI function."""
    import shutil

    pytest.importorskip("cutlass")
    if shutil.which("g++") is None:
        pytest.skip("no g++ for the AOT link")
    from cutlass_kernels import runtime
    from cutlass_kernels.gemm.variants import TARGET

    fields = {"kernel": "sm90", "tile": (128, 128, 64), "atoms": (2, 1, 1), "stages": 4, "group_align": 8,
              "dtype": "bf16", "form": "A", "m": 5, "n": 4}
    if ffi:
        pytest.importorskip("tvm_ffi")
    runtime._export(runtime._compile(TARGET, dict(fields), "sm_90a", ffi), prefix, tmp_path, ffi)
    assert (tmp_path / "kernel.so").stat().st_size > 0
    return runtime._load(tmp_path, prefix, ffi)


def test_launch_entry_exports_ahead_of_time_and_loads(tmp_path):
    assert callable(_aot_entry(tmp_path, "fk_fwd_test"))


def test_launch_arguments_bind_to_the_compiled_entry_as_intended(tmp_path):
    """What the launcher passes reaches the compiled kernel in the right slots: the AOT-loaded
    pointer-ABI entry packs the arguments (the DSL's own marshalling, no GPU needed) and every
    packed value is the tensor address or size meant for that parameter."""
    import ctypes

    entry = _aot_entry(tmp_path, "fk_fwd_args")
    import cuda.bindings.driver as cuda

    m_rows, k, n_out, g = 197, 384, 1536, 8
    wide = torch.zeros(m_rows, 520, dtype=torch.bfloat16)
    x2 = wide[:, :k]  # row stride 520: passed in place, lda = 520
    w, y = torch.zeros(n_out, k, dtype=torch.bfloat16), torch.empty(m_rows, n_out, dtype=torch.bfloat16)
    bias, num, den = torch.zeros(n_out), torch.zeros(g, 6), torch.zeros(g, 4)
    args = fwd_launch.launch_arguments(x2, w, y, bias, num, den, ffi=False)
    exe, _ = entry.generate_execution_args(*args, cuda.CUstream(0))
    values = [ctypes.cast(p, ctypes.POINTER(ctypes.c_uint64)).contents.value for p in exe]
    assert values[:6] == [t.data_ptr() for t in (x2, w, y, bias, num, den)]
    ints = [v & 0xFFFFFFFF for v in values[6:13]]
    assert ints == [m_rows, n_out // 8, k // 8, 520 // 8, g, g, k // g]
    # the TVM-FFI convention passes the same values, as plain ints, in the same order
    assert fwd_launch.launch_arguments(x2, w, y, bias, num, den, ffi=True) == (*values[:6], *ints)


@pytest.mark.skipif(torch.cuda.is_available(), reason="calls the entry with host addresses: CPU-only machines")
def test_tvm_ffi_entry_accepts_the_launch_arguments(tmp_path):
    """The TVM-FFI entry (compiled with --enable-tvm-ffi, exported, loaded as a tvm_ffi.Function)
    type-checks every argument in C before touching CUDA: the launcher's ints pass those checks and
    the call only fails at the missing driver; a wrong count or a wrong type fails the checks."""
    fn = _aot_entry(tmp_path, "fk_fwd_ffi", ffi=True)
    m_rows, k, n_out, g = 197, 384, 1536, 8
    x2, w = torch.zeros(m_rows, k, dtype=torch.bfloat16), torch.zeros(n_out, k, dtype=torch.bfloat16)
    y, bias, num, den = torch.empty(m_rows, n_out, dtype=torch.bfloat16), torch.zeros(n_out), torch.zeros(1, 6), torch.zeros(g, 4)
    args = fwd_launch.launch_arguments(x2, w, y, bias, num, den, ffi=True)
    with pytest.raises(RuntimeError, match="(?i)cuda"):
        fn(*args, 0)
    with pytest.raises(TypeError, match="Expects 14 parameters"):
        fn(*args)
    with pytest.raises(TypeError, match="Mismatched type on argument #6"):
        fn(*args[:6], 1.5, *args[7:], 0)


def test_row_strided_views_are_used_without_a_copy():
    base = torch.zeros(64, 520, dtype=torch.bfloat16)
    assert fwd_launch._rows_ok(base[:, :384])  # row stride 520 = 8 * 65: usable in place
    assert not fwd_launch._rows_ok(base[:, 1:385])  # base not 16-byte aligned
    assert not fwd_launch._rows_ok(torch.zeros(64, 390, dtype=torch.bfloat16)[:, :384])  # stride 390
    assert not fwd_launch._rows_ok(torch.zeros(384, 64, dtype=torch.bfloat16).t())  # K not contiguous
    copied = fwd_launch._aligned(base[:, 1:385])
    assert copied.is_contiguous() and torch.equal(copied, base[:, 1:385])

"""CPU tests of the sm90ws GR-KAN backward (issue 16): the real sm_90a compile of the persistent
warp-specialized dgrad and its per-role SASS check (which must be able to fail), the launch
arguments against the compiled entry, the dispatch knob, and the host-side composition
(``bwd_launch.ws_backward``) in float64 with the kernel replaced by its contract.  The kernel's
numerics need a GPU: tests/gpu/test_gemm_bwd.py.
"""
from __future__ import annotations

import shutil

import pytest
import torch

from rational_reference import reference_grads, reference_rational

from cutlass_kernels.gemm import bwd_launch

_FIELDS = {"mode": "dgrad", "ab_dtype": "bf16", "c_dtype": "bf16", "form": "A", "m": 5, "n": 4,
           "shared_numerator": True, "kernel": "sm90ws"}


@pytest.fixture(scope="module")
def compiled_dgrad(tmp_path_factory):
    """(resource usage, per-role counts) of the bf16 form-A sm90ws dgrad compiled for sm_90a."""
    pytest.importorskip("cutlass")
    from cutlass_kernels import dsl, sass
    from cutlass_kernels.gemm.bwd_compile import compile_variant

    try:
        sass._cuobjdump()
    except FileNotFoundError:
        pytest.skip("no cuobjdump")
    out = tmp_path_factory.mktemp("ws_dgrad")
    compiled = compile_variant("sm_90a", dsl.compile_options("sm_90a", out / "dump"), **_FIELDS)
    cubin = out / "kernel.cubin"
    cubin.write_bytes(dsl.compiled_cubin(compiled))
    return sass.inspect_cubin(cubin), sass.role_counts(sass.sass_text(cubin))


def test_ws_pingpong_dgrad_compiles_without_spills_and_passes_its_role_check(tmp_path):
    """The ping-pong variant (each consumer warpgroup owns alternate 64-row tiles) compiles as
    cleanly: 0 spills / stack, its role check passes."""
    pytest.importorskip("cutlass")
    from cutlass_kernels import dsl, sass
    from cutlass_kernels.gemm import ws_check
    from cutlass_kernels.gemm.bwd_compile import compile_variant

    try:
        sass._cuobjdump()
    except FileNotFoundError:
        pytest.skip("no cuobjdump")
    fields = {**_FIELDS, "form": "B", "ab_dtype": "fp16", "c_dtype": "fp16", "kernel": "sm90wspp"}
    cubin = tmp_path / "kernel.cubin"
    cubin.write_bytes(dsl.compiled_cubin(compile_variant("sm_90a", dsl.compile_options("sm_90a", tmp_path / "d"),
                                                         **fields)))
    info, roles = sass.inspect_cubin(cubin), sass.role_counts(sass.sass_text(cubin))
    assert info["spills"] == 0 and info["stack"] == 0, info
    assert ws_check.dgrad_role_failures(roles, fields) == []
    assert sum(n for op, n in roles["consumer"].items() if op.startswith("HGMMA.64x128x16")) == 4


def test_ws_dgrad_compiles_without_spills_and_passes_its_role_check(compiled_dgrad):
    from cutlass_kernels.gemm import ws_check

    info, roles = compiled_dgrad
    assert info["spills"] == 0 and info["stack"] == 0, info
    assert info["registers"] <= 168  # the launch cap of 384 threads; setmaxnreg re-partitions at run time
    assert ws_check.dgrad_role_failures(roles, _FIELDS) == []
    assert roles["consumer"]["HGMMA.64x128x16.F32.BF16"] == 4  # the whole k-tile's MMAs in the k-loop
    slots = ws_check.epilogue_slots_per_element(roles)
    assert 40 < slots <= ws_check.MAX_EPILOGUE_SLOTS_PER_ELEMENT


def test_ws_role_check_fails_on_broken_kernels(compiled_dgrad):
    """The check reports each property a kernel could lose: an integer division or an IEEE divide
    in the epilogue, a missing HGMMA, a missing role, a missing TMA load."""
    from cutlass_kernels.gemm import ws_check

    _, roles = compiled_dgrad

    def broken(role, op, delta):
        r = {k: dict(v) for k, v in roles.items()}
        r[role][op] = r[role].get(op, 0) + delta
        return ws_check.dgrad_role_failures(r, _FIELDS)

    assert any("I2F" in f for f in broken("epilogue", "I2F", 1))
    assert any("MUFU.RCP" in f for f in broken("epilogue", "MUFU.RCP", 64))
    assert any("HGMMA" in f for f in broken("consumer", "HGMMA.64x128x16.F32.BF16", -1))
    assert any("UTMALDG" in f for f in broken("producer", "UTMALDG.2D", -1))
    assert any("slots" in f for f in broken("epilogue", "FFMA", 64 * 100))
    no_epi = {k: v for k, v in roles.items() if k != "epilogue"}
    assert ws_check.dgrad_role_failures(no_epi, _FIELDS) == ["no epilogue loop found in the SASS"]


def test_ws_launch_arguments_bind_to_the_compiled_entry(tmp_path):
    """What ``ws_backward`` passes reaches the AOT-exported WsPointerEntry in the intended slots
    (the DSL's own argument packing, no GPU)."""
    import ctypes

    pytest.importorskip("cutlass")
    if shutil.which("g++") is None:
        pytest.skip("no g++ for the AOT link")
    import cuda.bindings.driver as cuda

    from cutlass_kernels import runtime

    prefix = "fk_bwd_ws"
    runtime._export(runtime._compile("cutlass_kernels.gemm.bwd_compile:compile_variant", _FIELDS, "sm_90a", False),
                    prefix, tmp_path, False)
    entry = runtime._load(tmp_path, prefix, False)
    rows, k, n_out, g = 300, 192, 768, 8
    go, w = torch.zeros(rows, n_out, dtype=torch.bfloat16), torch.zeros(n_out, k, dtype=torch.bfloat16)
    x = torch.zeros(rows, k, dtype=torch.bfloat16)
    tensors = (go, w, torch.empty_like(x), x, torch.empty(rows, k + 8, dtype=torch.bfloat16),
               torch.empty(24, k // 8, 10), torch.zeros(1, 6), torch.zeros(g, 4))
    args = bwd_launch.ws_launch_arguments(*tensors, ctas=132, ffi=False)
    exe, _ = entry.generate_execution_args(*args, cuda.CUstream(0))
    values = [ctypes.cast(a, ctypes.POINTER(ctypes.c_uint64)).contents.value for a in exe]
    assert len(values) == 8 + 8 + 1
    assert values[:8] == [t.data_ptr() for t in tensors]
    assert [v & 0xFFFFFFFF for v in values[8:16]] == [rows, n_out // 8, k // 8, 24, g, 1, k // g, 132]


def test_bwd_kernel_knob(monkeypatch):
    """sm_90: sm90wspp unless FUSEDKAT_BWD_KERNEL says sm90ws (or FUSEDKAT_BWD_SM90=0: mma.sync);
    other majors: mma.sync; the removed sm90 pair and an unknown value are errors that say so.
    The capability query is replaced (no GPU)."""
    from cutlass_kernels import abi

    cuda0 = torch.device("cuda", 0)
    monkeypatch.delenv(bwd_launch.ENV_BWD_KERNEL, raising=False)
    monkeypatch.delenv("FUSEDKAT_BWD_SM90", raising=False)
    monkeypatch.setattr(abi, "device_info", lambda device: ((9, 0), 132))
    assert bwd_launch.bwd_kernel(cuda0) == "sm90wspp"  # the ping-pong kernel: the model's pick
    monkeypatch.setenv(bwd_launch.ENV_BWD_KERNEL, "sm90")
    with pytest.raises(ValueError, match="was removed.*lost to the unfused backward"):
        bwd_launch.bwd_kernel(cuda0)
    monkeypatch.setenv(bwd_launch.ENV_BWD_KERNEL, "sm90ws")
    assert bwd_launch.bwd_kernel(cuda0) == "sm90ws"
    monkeypatch.setenv(bwd_launch.ENV_BWD_KERNEL, "sm90wspp")
    assert bwd_launch.bwd_kernel(cuda0) == "sm90wspp"
    monkeypatch.setenv("FUSEDKAT_BWD_SM90", "0")
    assert bwd_launch.bwd_kernel(cuda0) == "sm80"
    monkeypatch.delenv("FUSEDKAT_BWD_SM90")
    monkeypatch.setattr(abi, "device_info", lambda device: ((8, 0), 108))
    assert bwd_launch.bwd_kernel(cuda0) == "sm80"
    monkeypatch.setenv(bwd_launch.ENV_BWD_KERNEL, "fast")
    with pytest.raises(ValueError, match="FUSEDKAT_BWD_KERNEL='fast'"):
        bwd_launch.bwd_kernel(cuda0)


def _slot_partials(x, grad, num, den, form, slots):
    """The kernel's partials contract: ``slots`` slots, slot ``s`` = rows ``16 s .. 16 s + 15``
    (empty past M), chunk ``c`` = columns ``8 c .. 8 c + 7``; values = the float64 reference's
    coefficient gradients of ``sum(grad * F(x))`` restricted to that block."""
    m1, n = num.shape[1], den.shape[1]
    k, g = x.shape[1], den.shape[0]
    ws = torch.zeros(slots, k // 8, m1 + n, dtype=torch.float64)
    fn = lambda nm, dn: reference_rational(x, nm, dn, form)  # noqa: E731
    for s in range(min(slots, -(-x.shape[0] // 16))):
        for c in range(k // 8):
            mask = torch.zeros_like(grad)
            mask[16 * s : 16 * s + 16, 8 * c : 8 * c + 8] = 1
            d_num, d_den = reference_grads(fn, grad * mask, num, den)
            grp = c // (k // 8 // g)
            ws[s, c, :m1] = d_num[grp if num.shape[0] > 1 else 0]
            ws[s, c, m1:] = d_den[grp]
    return ws


@pytest.mark.parametrize("kernel,form", [("sm90ws", "A"), ("sm90wspp", "A"), ("sm90wspp", "B")])
@pytest.mark.parametrize("shared", [True, False])
@pytest.mark.parametrize("weight_dtype", [torch.float32, torch.float64], ids=["fp32-weight", "same-dtype"])
def test_ws_backward_composition_on_cpu(monkeypatch, weight_dtype, shared, kernel, form):
    """``bwd_launch.ws_backward`` on CPU float64 tensors with its kernel launch replaced by the
    kernel's contract (dx = (dY W) F'(x), the 16-row x 8-column partials, F(x) into the first K
    columns of the ``[M, K + 8]`` buffer -- the tail is the host's): the fold, the ones-column GEMM
    trick, the slicing, dtypes and dense strides against torch_impl's backward."""
    from fusedkat.ops import torch_impl

    seen = {}

    def kernel_contract(go, w, dx, x2, f_aug, ws, num32, den32, fields):
        k = x2.shape[1]
        seen["tail"] = f_aug[:, k:].clone()
        seen["fields"] = fields
        assert fields["form"] == form
        g_in = go @ w
        dx.copy_(torch_impl.group_rational_backward(g_in, x2, num32, den32, form)[0])
        f_aug[:, :k] = torch_impl.group_rational_forward(x2, num32, den32, form)
        tile_m = 64 if fields["kernel"] == "sm90wspp" else 128  # the kernel's M tile: 16-row slots
        assert ws.shape[0] == -(-x2.shape[0] // tile_m) * (tile_m // 16)
        ws.copy_(_slot_partials(x2, g_in, num32, den32, form, ws.shape[0]))

    monkeypatch.setattr(bwd_launch, "_launch_ws_dgrad", kernel_contract)
    monkeypatch.setitem(bwd_launch._AB, torch.float64, "bf16")  # names the kernel only
    gen = torch.Generator().manual_seed(1)
    rows, k, n_out, g = 150, 48, 40, 3
    x = torch.randn(rows, k, generator=gen, dtype=torch.float64)
    go = torch.randn(rows, n_out, generator=gen, dtype=torch.float64)
    num = torch.randn(1 if shared else g, 6, generator=gen, dtype=torch.float64)
    den = torch.randn(g, 4, generator=gen, dtype=torch.float64)
    w = torch.randn(n_out, k, generator=gen).to(weight_dtype)
    got = bwd_launch.ws_backward(go, x, w.double(), num, den, form, weight_dtype, kernel)
    want = torch_impl.rational_linear_backward(go, x, num, den, w.double(), True, form)
    expected_tail = torch.zeros(rows, 8, dtype=torch.float64)
    expected_tail[:, 0] = 1
    assert torch.equal(seen["tail"], expected_tail)  # (1, 0, ..., 0) written before the launch
    assert seen["fields"]["kernel"] == kernel and seen["fields"]["shared_numerator"] == shared
    for name, a, b in zip(("dx", "dnum", "dden", "dw", "db"), got, want):
        assert a.shape == b.shape and a.is_contiguous(), name
        # fp32: the partials (the kernel's contract) and dW / db cast to an fp32 weight's dtype
        tol = 1e-9 if name == "dx" or (name in ("dw", "db") and weight_dtype == torch.float64) else 1e-6
        atol = tol
        if name in ("dnum", "dden"):  # sums of a few hundred fp32 partials: fp32 rounding of the largest
            atol = 1e-6 * float(b.abs().max())
        torch.testing.assert_close(a.double(), b.double(), rtol=tol, atol=atol, msg=name)
    assert got[3].dtype == got[4].dtype == weight_dtype


def test_cooperative_ws_backward_refuses_form_b(monkeypatch):
    """The cooperative sm90ws dgrad is built for form A only: form B is refused with a message
    that names the kernels that do take it, before any launch."""
    launched = []
    monkeypatch.setattr(bwd_launch, "_launch_ws_dgrad", lambda *a: launched.append(a))
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(64, 16, generator=gen, dtype=torch.float64)
    go = torch.randn(64, 8, generator=gen, dtype=torch.float64)
    w = torch.randn(8, 16, generator=gen, dtype=torch.float64)
    num = torch.randn(1, 6, generator=gen, dtype=torch.float64)
    den = torch.randn(2, 4, generator=gen, dtype=torch.float64)
    with pytest.raises(RuntimeError, match="form A only.*sm90wspp"):
        bwd_launch.ws_backward(go, x, w, num, den, "B", torch.float64, "sm90ws")
    assert launched == []


_FAKE_DGRAD_SASS = """
        /*0000*/                   MOV R1, c[0x0][0x28] ;
        /*0010*/                   HGMMA.64x128x16.F32.BF16 R24, gdesc[UR16], R24 ;
        /*0020*/                   SYNCS.ARRIVE.TRANS64.ART0 RZ, [UR16+0x20], R6 ;
        /*0030*/               @P0 BRA 0x10 ;
        /*0040*/                   MUFU.RCP R6, R6 ;
        /*0050*/                   STG.E [R2.64], R6 ;
        /*0060*/               @P0 BRA 0x10 ;
        /*0070*/                   STG.E [R4.64], R7 ;
        /*0080*/               @P1 BRA 0x0 ;
        /*0090*/                   EXIT ;
"""


def test_role_counts_finds_the_epilogue_around_the_k_loop():
    """The epilogue role: the smallest loop around the HGMMA k-loop that stores to global memory,
    minus the k-loop (here the loop 0x10..0x60, not the outer one)."""
    from cutlass_kernels import sass

    roles = sass.role_counts(_FAKE_DGRAD_SASS)
    assert dict(roles["consumer"]) == {"HGMMA.64x128x16.F32.BF16": 1, "SYNCS.ARRIVE.TRANS64.ART0": 1, "BRA": 1}
    assert dict(roles["epilogue"]) == {"MUFU.RCP": 1, "STG.E": 1, "BRA": 1}
    no_store = _FAKE_DGRAD_SASS.replace("STG.E [R2.64], R6", "FADD R6, R6, R6")
    assert dict(sass.role_counts(no_store)["epilogue"]) == {"MUFU.RCP": 1, "FADD": 1, "BRA": 2, "STG.E": 1,
                                                           "MOV": 1}


def test_role_counts_tell_a_shift_from_a_division():
    """``IMAD.HI`` by an immediate 2^k (the high word of a 64-bit index shift) is counted as
    ``IMAD.SHL`` and passes the division check; by a magic number (a division by a constant) or a
    register it stays ``IMAD.HI`` and fails it."""
    from cutlass_kernels import sass
    from cutlass_kernels.gemm import ws_check

    shift = _FAKE_DGRAD_SASS.replace("MUFU.RCP R6, R6 ;", "MUFU.RCP R6, R6 ;\n        /*0048*/               @P0 IMAD.HI.U32 R10, R11, 0x8, R8 ;")
    assert sass.role_counts(shift)["epilogue"]["IMAD.SHL.U32"] == 1
    assert not any("IMAD.HI" in f for f in ws_check.dgrad_role_failures(sass.role_counts(shift), _FIELDS))
    for operands in ("R19, R97, -0x33333333, RZ", "R2, R97, 0x66666667, RZ", "R2, R3, R5, R2"):
        div = _FAKE_DGRAD_SASS.replace("MUFU.RCP R6, R6 ;", f"MUFU.RCP R6, R6 ;\n        /*0048*/                   IMAD.HI.U32 {operands} ;")
        roles = sass.role_counts(div)
        assert roles["epilogue"]["IMAD.HI.U32"] == 1, operands
        assert any("IMAD.HI" in f for f in ws_check.dgrad_role_failures(roles, _FIELDS)), operands


def test_self_check_key_follows_the_backward_knobs(monkeypatch):
    """Switching FUSEDKAT_BWD_KERNEL (or the fused/unfused choice) in-process makes the first-use
    self-check of ``rational_linear_backward`` verify the newly selected kernel too."""
    from cutlass_kernels import launch

    monkeypatch.setenv("FUSEDKAT_FUSED_BWD", "1")
    monkeypatch.setenv("FUSEDKAT_BWD_KERNEL", "sm90ws")
    first = launch._backward_route()
    monkeypatch.setenv("FUSEDKAT_BWD_KERNEL", "sm90wspp")
    second = launch._backward_route()
    monkeypatch.setenv("FUSEDKAT_FUSED_BWD", "0")
    assert len({first, second, launch._backward_route()}) == 3

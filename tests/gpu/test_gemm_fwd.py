"""GPU tests of the fused forward GEMM ``y = F(x) W^T + b``; skipped without CUDA sm_80+.

Reference: the independent float64 formula (tests/rational_reference.py) on the *same*
bf16/fp16-rounded x and W.  The kernel rounds F(x) to the MMA dtype before the tensor cores, as any
bf16 GEMM fed with F(x) would, so its error is judged against cuBLAS doing exactly that: ``F.linear``
of the float64 F(x) rounded to the dtype.  The fused error must stay within 1.5x of that baseline
(plus 2e-4 absolute slack; the fast reciprocal adds ~2^-22).  An emulation of the kernel's
rounding (fp32 F -> dtype, fp32 accumulation) lands at 0.9-1.0x the baseline on these shapes, and
the coefficients of a neighbouring group give errors above 0.3.
"""
from __future__ import annotations

import pytest
import torch

from rational_reference import reference_rational, reference_rational_linear

pytestmark = pytest.mark.gpu

if not torch.cuda.is_available() or torch.cuda.get_device_capability()[0] < 8:
    pytest.skip("needs a CUDA GPU with sm_80 or newer", allow_module_level=True)
pytest.importorskip("cutlass")

from cutlass_kernels.gemm import fwd_launch  # noqa: E402

# (M, K, N, groups, shared numerator): M tails, every KAT K, groups 1..16, N not a tile multiple.
SHAPES = [
    (394, 192, 768, 8, True),
    (130, 768, 192, 8, False),
    (77, 384, 1536, 4, True),
    (256, 1536, 200, 16, True),
    (1000, 3072, 768, 1, False),
    (1, 768, 3072, 2, True),
    (4133, 768, 3072, 8, True),  # 33 x 16 tiles: several per persistent CTA, one M tail
]
IS_SM90 = torch.cuda.get_device_capability()[0] == 9
#: On sm_90 both fused WGMMA kernels are tested (FUSEDKAT_FWD_KERNEL); elsewhere only the default.
HOPPER_KERNELS = fwd_launch.HOPPER_KERNELS if IS_SM90 else fwd_launch.HOPPER_KERNELS[:1]


def _inputs(m_rows, k, n_out, g, shared, dtype, seed=0):
    gen = torch.Generator(device="cuda").manual_seed(seed)
    x = (torch.randn(m_rows, k, device="cuda", generator=gen) * 1.5).to(dtype)
    w = (torch.randn(n_out, k, device="cuda", generator=gen) / k**0.5).to(dtype)
    b = torch.randn(n_out, device="cuda", generator=gen)
    num = torch.randn(1 if shared else g, 6, device="cuda", generator=gen) * 0.5
    den = torch.randn(g, 4, device="cuda", generator=gen) * 0.5
    return x, num, den, w, b


def _rel(a, b):
    a, b = a.double(), b.double()
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


def _check(y, x, num, den, w, b, form):
    ref = reference_rational_linear(x, num, den, w, b, form)
    f_rounded = reference_rational(x, num, den, form).to(x.dtype)
    baseline = torch.nn.functional.linear(f_rounded, w, b.to(x.dtype))  # cuBLAS on rounded F(x)
    err, base = _rel(y, ref), _rel(baseline, ref)
    assert torch.isfinite(y).all()
    assert err <= 1.5 * base + 2e-4, f"fused rel err {err:.2e} vs cuBLAS-on-rounded-F {base:.2e}"


def _configs():
    """Every config the heuristic / autotune can pick on this device for K = 768 (the kernels),
    the warp-specialized sm_90a kernel's (both N tiles, at groups of 96 and 24) included."""
    arch = fwd_launch.kernel_arch(torch.device("cuda"))
    ws = [{**c, "group_size": gs} for c in fwd_launch.ws_candidates(264, 384) for gs in (96, 24)] if IS_SM90 else []
    return ws + fwd_launch.candidates(arch, 768, 96) + fwd_launch.candidates(arch, 768, 24)


@pytest.mark.parametrize("hopper", HOPPER_KERNELS)
@pytest.mark.parametrize("form", ["A", "B"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("shape", SHAPES)
def test_fused_forward_matches_float64_reference(shape, dtype, form, hopper, monkeypatch):
    monkeypatch.setenv(fwd_launch.ENV_FWD_KERNEL, hopper)
    x, num, den, w, b = _inputs(*shape, dtype)
    y = fwd_launch.rational_linear_forward(x, num, den, w, b, form)
    assert y.shape == (shape[0], shape[2]) and y.dtype == dtype
    _check(y, x, num, den, w, b, form)


def _config_id(c):
    if c["kernel"] == "sm90ws":
        return f"sm90ws_n{c['bn']}{'_panel' if c.get('panel') else ''}_gs{c['group_size']}"
    return f"{c['kernel']}_{'x'.join(map(str, c['tile']))}_ga{c['group_align']}_{c.get('prologue', 'regs')}"


@pytest.mark.parametrize("cfg", _configs(), ids=_config_id)
@pytest.mark.parametrize("form", ["A", "B"])
def test_every_config_is_correct_and_writes_exactly_the_output(cfg, form):
    """Poisoned output: every element of [M, N] written, nothing past it (NaN guard rows)."""
    m_rows, n_out = 333, 264
    k = 384 if cfg.get("panel") else 768  # the resident panel holds K <= 384
    cfg = dict(cfg)
    g = k // (cfg.pop("group_size") if "group_size" in cfg else 96 if cfg["group_align"] == 16 else 24)
    x, num, den, w, b = _inputs(m_rows, k, n_out, g, False, torch.bfloat16, seed=1)
    buf = torch.full((m_rows + 64, n_out), float("nan"), dtype=torch.bfloat16, device="cuda")
    y = fwd_launch.rational_linear_forward(x, num, den, w, b, form, config=cfg, out=buf[:m_rows])
    assert y.data_ptr() == buf.data_ptr()
    assert torch.isnan(buf[m_rows:]).all(), "the kernel wrote past row M"
    _check(buf[:m_rows], x, num, den, w, b, form)


def test_no_bias_batch_dims_and_strided_input():
    x, num, den, w, _ = _inputs(2 * 97, 384, 1536, 8, True, torch.bfloat16, seed=2)
    x3 = x.reshape(2, 97, 384)
    y = fwd_launch.rational_linear_forward(x3, num, den, w, None, "A")
    assert y.shape == (2, 97, 1536)
    _check(y.reshape(-1, 1536), x, num, den, w, torch.zeros(1536, device="cuda"), "A")
    wide = torch.randn(97, 768, device="cuda").to(torch.bfloat16)
    xs = wide[:, ::2]  # non-contiguous: copied by the launcher
    ys = fwd_launch.rational_linear_forward(xs, num, den, w, None, "A")
    torch.testing.assert_close(ys, fwd_launch.rational_linear_forward(xs.contiguous(), num, den, w, None, "A"),
                               rtol=0, atol=0)
    xr = torch.randn(97, 512, device="cuda").to(torch.bfloat16)[:, :384]  # row stride 512: used in place
    torch.testing.assert_close(fwd_launch.rational_linear_forward(xr, num, den, w, None, "A"),
                               fwd_launch.rational_linear_forward(xr.contiguous(), num, den, w, None, "A"),
                               rtol=0, atol=0)


def test_weight_in_fp32_is_cast_to_the_activation_dtype():
    x, num, den, w, b = _inputs(64, 192, 768, 8, True, torch.float16, seed=3)
    y32 = fwd_launch.rational_linear_forward(x, num, den, w.float(), b, "B")
    y16 = fwd_launch.rational_linear_forward(x, num, den, w, b, "B")
    torch.testing.assert_close(y32, y16, rtol=0, atol=0)


@pytest.mark.parametrize("fused", ["1", "0", "auto"])
def test_dispatch_follows_the_fused_forward_switch_and_compiled_equals_eager(fused, monkeypatch):
    """FUSEDKAT_FUSED_FWD=1 reaches the fused kernel, 0 does not, auto follows the arch default
    (unfused on sm_90); eager and compiled agree bitwise on either path."""
    import fusedkat
    from fusedkat.ops import rational_linear

    monkeypatch.setenv(fwd_launch.ENV_FUSED_FWD, fused)
    expect_fused = fused == "1" or (fused == "auto" and torch.cuda.get_device_capability()[0] != 9)
    calls = []
    real = fwd_launch.forward_unchecked  # the dispatcher's entry (it has validated the arguments)
    monkeypatch.setattr(fwd_launch, "forward_unchecked", lambda *a, **k: calls.append(1) or real(*a, **k))
    x, num, den, w, b = _inputs(197, 768, 3072, 8, True, torch.bfloat16, seed=4)
    b = b.to(torch.bfloat16)  # a module's bias has the weight's dtype
    with fusedkat.ops.use_backend("cute"):
        eager = rational_linear(x, num, den, w, b, form="A")
        compiled = torch.compile(lambda *t: rational_linear(*t, form="A"), fullgraph=True)(x, num, den, w, b)
    assert bool(calls) == expect_fused, (fused, len(calls))
    torch.testing.assert_close(compiled, eager, rtol=0, atol=0)
    _check(eager, x, num, den, w, b.float(), "A")


def test_autotune_picks_a_candidate_and_caches_it(tmp_path, monkeypatch):
    monkeypatch.setenv("FUSEDKAT_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(fwd_launch, "_TUNED", {})
    x, num, den, w, b = _inputs(512, 768, 768, 8, True, torch.bfloat16, seed=5)
    y = fwd_launch.rational_linear_forward(x, num, den, w, b, "A", autotune=True)
    _check(y, x, num, den, w, b, "A")
    assert (tmp_path / "gemm_fwd_autotune.json").exists()
    (entry,) = fwd_launch._TUNED.values()
    assert entry["ms"] > 0 and entry["kernel"] in ("sm80", "sm90", "sm90ws")


@pytest.mark.skipif(not IS_SM90, reason="the warp-specialized kernel is sm_90a only")
@pytest.mark.parametrize("bn,panel", [(192, False), (128, False), (192, True)])
def test_ws_diagnostic_variants_compute_what_they_claim(bn, panel):
    """``identity``: y = x W^T + b (F skipped, same pipeline); ``mma=False``: y = b (F computed, no
    MMA).  Poisoned outputs, an M tail and several tiles per CTA (ctas = 7), so the panel variant
    also starts CTAs in the middle of an m-tile."""
    m_rows, k, n_out = 1000, 384 if panel else 768, 3 * bn
    x, num, den, w, b = _inputs(m_rows, k, n_out, 8, True, torch.bfloat16, seed=6)
    base = {"kernel": "sm90ws", "bn": bn, "stages": 3 if panel else 4, "ring": 3, "panel": panel}
    for extra, expect in (({"identity": True}, torch.nn.functional.linear(x.double(), w.double(), b.double())),
                          ({"mma": False}, b.double().expand(m_rows, n_out))):
        buf = torch.full((m_rows + 8, n_out), float("nan"), dtype=torch.bfloat16, device="cuda")
        fields = fwd_launch._fields({**base, **extra}, "bf16", "A", 5, 4)
        fn = fwd_launch._kernel(fields, "sm_90a", False)
        fwd_launch._launch(fn, x, w, buf[:m_rows], b, num, den, False, ctas=7)
        torch.cuda.synchronize()
        assert torch.isnan(buf[m_rows:]).all(), extra
        got = buf[:m_rows].double()
        assert torch.isfinite(got).all(), extra
        assert _rel(got, expect) < 1e-2, (extra, _rel(got, expect))


@pytest.mark.skipif(not IS_SM90, reason="the warp-specialized kernel is sm_90a only")
@pytest.mark.parametrize("knob", ["sm90ws", "sm90"])
def test_fused_switch_on_sm90_reaches_the_selected_kernel_and_the_self_check_passes(knob, monkeypatch):
    """FUSEDKAT_FUSED_FWD=1 on sm_90 launches the kernel FUSEDKAT_FWD_KERNEL names (sm90ws by
    default); the first-use self-check compares it with the torch path and keeps it ("ok")."""
    from cutlass_kernels import launch, selfcheck

    monkeypatch.setenv(fwd_launch.ENV_FUSED_FWD, "1")
    monkeypatch.setenv(fwd_launch.ENV_FWD_KERNEL, knob)
    monkeypatch.setenv("FUSEDKAT_KERNEL_SELFCHECK", "1")
    selfcheck.reset()
    kernels = []
    real = fwd_launch._kernel
    monkeypatch.setattr(fwd_launch, "_kernel", lambda fields, *a: kernels.append(fields["kernel"]) or real(fields, *a))
    x, num, den, w, b = _inputs(300, 384, 1536, 8, True, torch.bfloat16, seed=7)
    y = launch.rational_linear_forward(x, num, den, w, b, "A")
    assert kernels == [knob]
    assert list(selfcheck.verdicts().values()) == ["ok"]
    _check(y, x, num, den, w, b, "A")

"""CPU tests of the persistent warp-specialized sm_90a fused forward (issue 15): its config, the
per-role SASS parser (:func:`cutlass_kernels.sass.role_counts`) and check, a real compile whose role
check is made to fail, the launcher's dispatch and the binding of its launch arguments to the
compiled entry.  The whole registry (every sm90ws variant included) is compiled and role-checked
by tests/test_kernels_build.py; what runs on a GPU is in tests/gpu/test_gemm_fwd.py."""
from __future__ import annotations

import shutil

import pytest
import torch

from cutlass_kernels import registry, sass
from cutlass_kernels.gemm import fwd_launch, ws_check
from cutlass_kernels.gemm.ws_config import WsFwdConfig, pick_bn


# ---------------------------------------------------------------------------- config
def test_config_names_keys_and_validation():
    base = WsFwdConfig()
    assert base.variant_name() == "rational_gemm_fwd_sm90ws_bf16_A"
    assert WsFwdConfig(dtype="fp16", form="B", bn=128).variant_name() == "rational_gemm_fwd_sm90ws_fp16_B_n128"
    assert WsFwdConfig(identity=True).variant_name().endswith("_fid")
    assert WsFwdConfig(mma=False).variant_name().endswith("_nomma")
    assert WsFwdConfig(panel=True, stages=3, identity=True).variant_name() == "rational_gemm_fwd_sm90ws_bf16_A_panel_fid"
    with pytest.raises(ValueError, match="shared memory"):
        WsFwdConfig(panel=True)  # 4 W stages + the 128 x 384 panel do not fit
    keys = {c.cache_key() for c in (base, WsFwdConfig(bn=128), WsFwdConfig(identity=True), WsFwdConfig(mma=False),
                                    WsFwdConfig(stages=3), WsFwdConfig(form="B"))}
    assert len(keys) == 6 and WsFwdConfig().cache_key() == base.cache_key()
    for bad in ({"bn": 256}, {"dtype": "fp32"}, {"form": "C"}, {"ring": 1}, {"stages": 9},
                {"identity": True, "mma": False}):
        with pytest.raises(ValueError):
            WsFwdConfig(**bad)
    p, t, c = base.regs
    assert p + t + 2 * c <= 512 and p < 128 and t < 128 < c
    assert pick_bn(192) == pick_bn(384) == pick_bn(3072) == 192 and pick_bn(264) == 128


def test_registry_lists_the_ws_variants_with_their_role_check():
    from cutlass_kernels.gemm.variants import ws_variants

    vs = {v.name: v for v in ws_variants()}
    assert {f"rational_gemm_fwd_sm90ws_{d}_{f}" for d in ("bf16", "fp16") for f in "AB"} <= set(vs)
    assert any(n.endswith("_fid") for n in vs) and any(n.endswith("_nomma") for n in vs)
    for v in vs.values():
        assert v.arches == ("sm_90a",) and v.role_check.endswith("ws_check:role_failures")
        kw = v.kwargs_dict
        assert kw.pop("kernel") == "sm90ws"
        assert WsFwdConfig(**kw).variant_name() == v.name


# ---------------------------------------------------------------------------- SASS roles
_FAKE_SASS = """
        /*0000*/                   MOV R1, c[0x0][0x28] ;
        /*0010*/                   UTMALDG.2D [UR16], [UR8], desc[URZ] ;
        /*0020*/                   UTMALDG.2D [UR12], [UR24], desc[URZ] ;
        /*0030*/               @P0 BRA 0x10 ;
        /*0040*/                   LDS.128 R24, [R22] ;
        /*0050*/                   FFMA R29, R9, R32, R8 ;
        /*0060*/                   MUFU.RCP R6, R6 ;
        /*0070*/                   IADD3 R15, R15, 0x1, RZ ;
        /*0080*/               @P1 BRA 0x70 ;
        /*0090*/                   STS.128 [R23+0x2800], R24 ;
        /*00a0*/               @P0 BRA 0x40 ;
        /*00b0*/                   HGMMA.64x192x16.F32.BF16 R24, gdesc[UR16], R24 ;
        /*00c0*/                   SYNCS.ARRIVE.TRANS64.ART0 RZ, [UR16+0x20], R6 ;
        /*00d0*/               @P0 BRA 0xb0 ;
        /*00e0*/                   EXIT ;
        /*00f0*/                   SYNCS.PHASECHK.TRANS64.TRYWAIT P0, [UR12], R5 ;
        /*0100*/                   BRA 0x50 ;
"""


def test_role_counts_finds_each_roles_smallest_loop():
    roles = sass.role_counts(_FAKE_SASS)
    assert roles["producer"] == {"UTMALDG.2D": 2, "BRA": 1}
    # the transform loop 0x40..0xa0 with its nested group loop once; the retry stub after EXIT
    # (a jump back into the loop) is no loop of its own
    assert roles["transform"] == {"LDS.128": 1, "FFMA": 1, "MUFU.RCP": 1, "IADD3": 1, "BRA": 2, "STS.128": 1}
    assert roles["consumer"] == {"HGMMA.64x192x16.F32.BF16": 1, "SYNCS.ARRIVE.TRANS64.ART0": 1, "BRA": 1}
    assert sass.base_counts(roles["consumer"])["HGMMA"] == 1
    assert len(sass.loops(sass.instructions(_FAKE_SASS))) == 4


def test_role_counts_finds_an_identity_transform_by_its_shared_stores():
    no_rcp = _FAKE_SASS.replace("MUFU.RCP R6, R6", "FMUL R6, R6, R6")
    roles = sass.role_counts(no_rcp)
    assert "STS.128" in roles["transform"] and "HGMMA.64x192x16.F32.BF16" not in roles["transform"]


def _roles(transform_extra=None, hgmma=4, other=40, per_element=13):
    t = {"FFMA": 9 * 64, "MUFU.RCP": 64, "FMUL": 64, "LOP3.LUT": 64 * (per_element - 11)}
    t.update(transform_extra or {})
    return {"producer": {"UTMALDG.2D": 2, "BRA": 1},
            "transform": t,
            "consumer": {"HGMMA.64x192x16.F32.BF16": hgmma, "UIADD3": other}}


def test_role_check_passes_a_good_kernel_and_names_each_violation():
    fields = {"kernel": "sm90ws", "mma": True, "identity": False}
    assert ws_check.role_failures(_roles(), fields) == []
    assert ws_check.slots_per_element(_roles()) == 13
    assert any("I2F" in f for f in ws_check.role_failures(_roles({"I2F.U32.RP": 1}), fields))
    assert any("IMAD.HI" in f for f in ws_check.role_failures(_roles({"IMAD.HI.U32": 2}), fields))
    assert any("MUFU.RCP" in f for f in ws_check.role_failures(_roles({"MUFU.RCP": 65}), fields))
    assert any("issue slots" in f for f in ws_check.role_failures(_roles(per_element=16), fields))
    assert any("HGMMA" in f for f in ws_check.role_failures(_roles(hgmma=2), fields))
    assert any("non-HGMMA" in f for f in ws_check.role_failures(_roles(other=200), fields))
    no_consumer = {k: v for k, v in _roles().items() if k != "consumer"}
    assert any("consumer" in f for f in ws_check.role_failures(no_consumer, fields))
    assert ws_check.role_failures(no_consumer, {**fields, "mma": False}) == []
    assert any("a no-MMA variant" in f for f in ws_check.role_failures(_roles(), {**fields, "mma": False}))


def test_build_check_fails_a_real_kernel_that_misses_its_role_budget(monkeypatch):
    """The bf16 form A kernel, really compiled: it passes its role check, and fails it once the
    slot budget is below what the SASS holds -- the check reads the cubin, it cannot pass blindly."""
    pytest.importorskip("cutlass")
    from cutlass_kernels.build import build_one
    from cutlass_kernels.gemm.variants import ws_variants

    (v,) = [v for v in ws_variants() if v.name == "rational_gemm_fwd_sm90ws_bf16_A"]
    row = build_one(v, "sm_90a", None)
    assert row["ok"], row["errors"]
    assert row["spills"] == 0 and row["registers"] == 128  # the launch cap of 512 threads
    roles = row["roles"]
    # transform_rescue: the large-|x| exact path (sass.rescue_blocks), a real branch off the hot
    # loop; epilogue: the per-tile code outside the k-loop (issue 16)
    assert set(roles) == {"producer", "transform", "consumer", "transform_rescue", "epilogue"}
    assert sass.base_counts(roles["transform_rescue"])["MUFU"] > 0
    slots = ws_check.slots_per_element(roles)
    assert 12.5 <= slots <= ws_check.MAX_SLOTS_PER_ELEMENT
    assert sass.base_counts(roles["consumer"])["HGMMA"] == 4
    monkeypatch.setattr(ws_check, "MAX_SLOTS_PER_ELEMENT", slots - 0.5)
    failed = registry.role_check_failures(v, roles)
    assert failed == [f"transform loop: {slots:.2f} issue slots per element (limit {slots - 0.5})"]


# ---------------------------------------------------------------------------- dispatch
def _meta_problem(m_rows=128 * 197, k=768, n_out=3072, g=8):
    x2 = torch.empty(m_rows, k, dtype=torch.bfloat16, device="meta")
    w = torch.empty(n_out, k, dtype=torch.bfloat16, device="meta")
    return x2, w, torch.empty(g, 4, device="meta")


def test_sm90_runs_the_ws_kernel_unless_the_knob_picks_the_old_one(monkeypatch, tmp_path):
    """On an sm_90 device (capability faked: no GPU here) the config is the sm90ws kernel's, bN=192
    where N allows; ``FUSEDKAT_FWD_KERNEL=sm90`` gives the first WGMMA kernel; K % 64 != 0 falls
    back to it as well; a bad value is an error.  ``auto`` still means unfused on sm_90."""
    from cutlass_kernels import abi

    monkeypatch.setenv("FUSEDKAT_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(fwd_launch, "_TUNED", {})
    monkeypatch.setattr(abi, "device_info", lambda device: ((9, 0), 132))
    monkeypatch.delenv(fwd_launch.ENV_FWD_KERNEL, raising=False)
    cfg = fwd_launch.choose_config(*_meta_problem(), "A", 5, 4, autotune=False)
    assert cfg == {"kernel": "sm90ws", "bn": 192, "stages": 4, "ring": 3}
    assert fwd_launch.choose_config(*_meta_problem(n_out=264), "A", 5, 4, autotune=False)["bn"] == 128
    # K <= 384 and several N tiles: the resident panel; one N tile (N = 192): no panel to reuse
    small_k = fwd_launch.choose_config(*_meta_problem(k=192, n_out=768), "A", 5, 4, autotune=False)
    assert small_k == {"kernel": "sm90ws", "bn": 192, "stages": 3, "ring": 3, "panel": True}
    assert "panel" not in fwd_launch.choose_config(*_meta_problem(k=384, n_out=192), "A", 5, 4, autotune=False)
    assert all("panel" not in c for c in fwd_launch.ws_candidates(3072, 448))  # K > 384: never
    assert fwd_launch.choose_config(*_meta_problem(k=96, g=4), "A", 5, 4, autotune=False)["kernel"] == "sm80"
    monkeypatch.setenv(fwd_launch.ENV_FWD_KERNEL, "sm90")
    assert fwd_launch.choose_config(*_meta_problem(), "A", 5, 4, autotune=False)["kernel"] == "sm90"
    monkeypatch.setenv(fwd_launch.ENV_FWD_KERNEL, "fast")
    with pytest.raises(ValueError, match="FUSEDKAT_FWD_KERNEL='fast'"):
        fwd_launch.choose_config(*_meta_problem(), "A", 5, 4, autotune=False)
    monkeypatch.delenv(fwd_launch.ENV_FUSED_FWD, raising=False)
    assert fwd_launch.enabled(torch.device("cuda", 0)) is False  # auto: unfused on sm_90 until measured
    monkeypatch.setenv(fwd_launch.ENV_FUSED_FWD, "1")
    assert fwd_launch.enabled(torch.device("cuda", 0)) is True


def test_persistent_grid():
    assert fwd_launch.ws_ctas(128 * 197, 3072, 192, 132) == 132
    assert fwd_launch.ws_ctas(130, 192, 192, 132) == 2  # 2 x 1 tiles
    assert fwd_launch.ws_ctas(1, 768, 128, 114) == 6
    assert fwd_launch.ws_candidates(768, 96) == []  # K % 64 != 0


def test_self_check_key_follows_the_kernel_knobs(monkeypatch):
    from cutlass_kernels import launch

    monkeypatch.setenv("FUSEDKAT_FUSED_FWD", "1")
    monkeypatch.setenv("FUSEDKAT_FWD_KERNEL", "sm90ws")
    first = launch._forward_route()
    monkeypatch.setenv("FUSEDKAT_FWD_KERNEL", "sm90")
    assert launch._forward_route() != first


# ---------------------------------------------------------------------------- launch arguments
def test_launch_arguments_bind_to_the_compiled_ws_entry(tmp_path):
    """The AOT-exported sm90ws pointer entry (compiled offline, loaded back) packs what the launcher
    passes: every value is the tensor address or size meant for its slot, ``ctas`` last."""
    import ctypes

    pytest.importorskip("cutlass")
    if shutil.which("g++") is None:
        pytest.skip("no g++ for the AOT link")
    import cuda.bindings.driver as cuda

    from cutlass_kernels import runtime

    fields = {"kernel": "sm90ws", "bn": 192, "stages": 4, "ring": 3, "dtype": "bf16", "form": "A", "m": 5, "n": 4}
    runtime._export(runtime._compile(fwd_launch.WS_TARGET, dict(fields), "sm_90a", False), "fk_ws_args", tmp_path, False)
    entry = runtime._load(tmp_path, "fk_ws_args", False)
    m_rows, k, n_out, g = 197, 384, 1536, 8
    x2 = torch.zeros(m_rows, 520, dtype=torch.bfloat16)[:, :k]
    w, y = torch.zeros(n_out, k, dtype=torch.bfloat16), torch.empty(m_rows, n_out, dtype=torch.bfloat16)
    bias, num, den = torch.zeros(n_out), torch.zeros(1, 6), torch.zeros(g, 4)
    ctas = fwd_launch.ws_ctas(m_rows, n_out, 192, 132)
    args = fwd_launch.launch_arguments(x2, w, y, bias, num, den, ffi=False, ctas=ctas)
    exe, _ = entry.generate_execution_args(*args, cuda.CUstream(0))
    values = [ctypes.cast(p, ctypes.POINTER(ctypes.c_uint64)).contents.value for p in exe]
    assert values[:6] == [t.data_ptr() for t in (x2, w, y, bias, num, den)]
    ints = [v & 0xFFFFFFFF for v in values[6:14]]
    assert ints == [m_rows, n_out // 8, k // 8, 520 // 8, g, 1, k // g, ctas] and ctas == 16
    assert fwd_launch.launch_arguments(x2, w, y, bias, num, den, ffi=True, ctas=ctas) == (*values[:6], *ints)

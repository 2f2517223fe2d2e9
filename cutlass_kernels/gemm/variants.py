"""Registry entries of the fused rational GEMMs (``cutlass_kernels.registry.VARIANT_MODULES``).

Cheap to import (no DSL).  Forward variants (issue 6) are listed here; the backward ones come from
:mod:`.bwd_variants` (issue 7).  Names: ``rational_gemm_fwd_{sm80|sm90}_{dtype}_{form}[_...]``.

Register budget (sm_80, 128x128x32 tile, 4x2 warps = 256 threads, 32x64 warp tiles): fp32
accumulator 64 registers, A/B fragments of one 32-wide k-tile 16 + 32, one coefficient set
(m+1+n = 10 fp32), Horner temporaries and addressing: 160-167 registers, 0 spills (one CTA of 8
warps per SM).  The 2x2-warp layout with 64x64 warp tiles (the CUTLASS example's) reached the
255-register cap with the prologue (the plain GEMM alone used 230) and spilled for form B / fp16.
The smem-prologue 128x256 tile (2x4 warps, 64x64 warp tiles) keeps no A values live for F: 248.
sm_90a: 64xbN fp32 accumulator per warpgroup (64 registers at bN=128, 128 at 256), the A fragment
of one 64-wide k-tile 16, coefficients 10 -> 122 / 245 registers, 0 spills.
"""
from __future__ import annotations

from fusedkat.ops import rational_math as rm

from ..registry import Variant, make_variant

TARGET = "cutlass_kernels.gemm.fwd_compile:compile_variant"
SOURCES: tuple[str, ...] = ("fusedkat.ops.rational_math", "cutlass_kernels.dsl", "cutlass_kernels.gemm.common",
                            "cutlass_kernels.gemm.fwd_sm80", "cutlass_kernels.gemm.fwd_sm90",
                            "cutlass_kernels.gemm.sm90_common", "cutlass_kernels.gemm.fwd_compile")

#: Default tiles (also what the launcher's heuristic starts from).
SM80_FIELDS = {"kernel": "sm80", "tile": (128, 128, 32), "atoms": (4, 2, 1), "stages": 3}
SM90_FIELDS = {"kernel": "sm90", "tile": (128, 128, 64), "atoms": (2, 1, 1), "stages": 4}


def fwd_variants() -> list[Variant]:
    """Forward variants: both dtypes and forms per arch, plus the wide-N sm_90a tile."""
    out = []
    for dtype in ("bf16", "fp16"):
        for form in rm.FORMS:
            base = {"dtype": dtype, "form": form, "group_align": 8}
            # main loop: 2 k-blocks x (2x8 m16n8k16 per warp) = 32 HMMA; F on 3 k-blocks of 16 values
            out.append(make_variant(f"rational_gemm_fwd_sm80_{dtype}_{form}", TARGET, {**base, **SM80_FIELDS},
                                    arches=("sm_80",), sources=SOURCES,
                                    expect_sass={"HMMA": 32, "MUFU.RCP": 48, "LDSM": 8, "LDGSTS": 4}))
            # main loop: 4 k-blocks x one 64x128x16 WGMMA; F on 4 x 8 values per thread
            out.append(make_variant(f"rational_gemm_fwd_sm90_{dtype}_{form}", TARGET, {**base, **SM90_FIELDS},
                                    arches=("sm_90a",), sources=SOURCES,
                                    expect_sass={"HGMMA": 4, "MUFU.RCP": 32, "LDSM": 4, "UTMALDG": 2}))
    # F applied in shared memory, once per CTA (2 places x 16 values per thread)
    out.append(make_variant("rational_gemm_fwd_sm80_bf16_A_smem", TARGET,
                            {"dtype": "bf16", "form": "A", "group_align": 8, **SM80_FIELDS, "prologue": "smem"},
                            arches=("sm_80",), sources=SOURCES,
                            expect_sass={"HMMA": 32, "MUFU.RCP": 32, "LDSM": 8, "LDGSTS": 4}))
    out.append(make_variant("rational_gemm_fwd_sm80_bf16_A_smem_n256", TARGET,
                            {"dtype": "bf16", "form": "A", "group_align": 8, **SM80_FIELDS, "prologue": "smem",
                             "tile": (128, 256, 32), "atoms": (2, 4, 1)},
                            arches=("sm_80",), sources=SOURCES,
                            expect_sass={"HMMA": 64, "MUFU.RCP": 32, "LDSM": 8, "LDGSTS": 4}))
    out.append(make_variant("rational_gemm_fwd_sm90_bf16_A_n256_ga16", TARGET,
                            {"dtype": "bf16", "form": "A", "group_align": 16, **SM90_FIELDS, "tile": (128, 256, 64)},
                            arches=("sm_90a",), sources=SOURCES,
                            expect_sass={"HGMMA": 4, "MUFU.RCP": 32, "LDSM": 4, "UTMALDG": 2}))
    return out


WS_TARGET = "cutlass_kernels.gemm.fwd_compile:compile_ws_variant"
WS_SOURCES: tuple[str, ...] = SOURCES + ("cutlass_kernels.gemm.fwd_sm90ws", "cutlass_kernels.gemm.fwd_sm90ws_panel",
                                          "cutlass_kernels.gemm.ws_config")


def ws_variants() -> list[Variant]:
    """The warp-specialized sm_90a forward (issue 15): both dtypes and forms at bN = 192, bf16 form
    A at bN = 128, the resident-panel variant, and the diagnostic variants ``_fid`` (F = identity)
    and ``_nomma`` (no MMA) of both (11 builds: the CI build check compiles each one).
    Per-role SASS expectations are checked by :func:`cutlass_kernels.gemm.ws_check.role_failures`."""
    from .ws_config import WsFwdConfig

    cfgs = [WsFwdConfig(dtype=d, form=f) for d in ("bf16", "fp16") for f in rm.FORMS]
    cfgs += [WsFwdConfig(bn=128), WsFwdConfig(identity=True), WsFwdConfig(mma=False)]
    # the resident-panel variant (K <= 384): W ring 3 deep to leave room for the 128 x 384 panel;
    # its diagnostics are what the benchmark runs at the KAT fc1 shapes with K <= 384
    panel = {"panel": True, "stages": 3}
    cfgs += [WsFwdConfig(**panel), WsFwdConfig(dtype="fp16", form="B", **panel),
             WsFwdConfig(identity=True, **panel), WsFwdConfig(mma=False, **panel)]
    out = []
    for cfg in cfgs:
        fields = {k: v for k, v in cfg.to_dict().items() if k != "family"}
        expect = {"UTMALDG": 2}  # (x and W; in one loop, or in two for the panel variant)
        if cfg.mma:  # (ptxas drops the setmaxnreg of a kernel without WGMMA)
            expect.update(HGMMA=4, USETMAXREG=3)
        if not cfg.identity:
            expect["MUFU.RCP"] = 64
        out.append(make_variant(cfg.variant_name(), WS_TARGET, {"kernel": "sm90ws", **fields}, arches=("sm_90a",),
                                sources=WS_SOURCES, expect_sass=expect,
                                role_check="cutlass_kernels.gemm.ws_check:role_failures"))
    return out


def variants() -> list[Variant]:
    """Every fused GEMM variant (forward here, backward from :mod:`.bwd_variants`)."""
    out = fwd_variants() + ws_variants()
    try:
        from .bwd_variants import variants as bwd_variants
    except ModuleNotFoundError as e:  # the backward module not present: forward only
        if e.name != f"{__package__}.bwd_variants":
            raise
    else:
        out += bwd_variants()
    return out

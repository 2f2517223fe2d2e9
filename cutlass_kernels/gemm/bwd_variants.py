"""Registry entries for the fused backward GEMMs (dgrad with the rational-derivative epilogue,
wgrad with the rational prologue).  Imported by ``cutlass_kernels.gemm.variants``; cheap (no DSL).

Names: ``rational_gemm_{dgrad|wgrad}_sm80_{ab}_{c}_{form}`` (``sm80``: the mma.sync kernel family).
The CI build compiles them for sm_80 only, to keep its time down (they also compile for sm_90a,
0 spills, which is what the launcher JIT-compiles on Hopper with ``FUSEDKAT_BWD_SM90=0``).
``rational_gemm_dgrad_{sm90wspp|sm90ws}_*``: the persistent warp-specialized dgrads of
:mod:`.bwd_sm90ws`, the fused backward on sm_90 (ping-pong consumers the default).  The TMA + WGMMA
dgrad / fused-wgrad pair that preceded them was removed (issue 16): on the H100 it cost 3.8-11x a
linear backward and lost to the unfused backward at all six KAT shapes (``bench/results/2026-11-22-*``).
"""
from __future__ import annotations

from fusedkat.ops import rational_math as rm

from ..registry import Variant, make_variant

_TARGET = "cutlass_kernels.gemm.bwd_compile:compile_variant"
SOURCES: tuple[str, ...] = ("fusedkat.ops.rational_math", "cutlass_kernels.dsl", "cutlass_kernels.gemm.common",
                            "cutlass_kernels.gemm.bwd_sm80", "cutlass_kernels.gemm.bwd_sm90ws",
                            "cutlass_kernels.gemm.bwd_epilogue", "cutlass_kernels.gemm.sm90_common",
                            "cutlass_kernels.gemm.bwd_compile")
#: dW is written in fp32 (the usual dtype of master weights under autocast); the launcher casts
#: when the weight has another dtype.
WGRAD_OUT = "fp32"


def variant_name(mode: str, ab: str, c: str, form: str) -> str:
    return f"rational_gemm_{mode}_sm80_{ab}_{c}_{form}"


def variants() -> list[Variant]:
    out = []
    for mode in ("dgrad", "wgrad"):
        for ab in ("bf16", "fp16"):
            for form in rm.FORMS:
                c = ab if mode == "dgrad" else WGRAD_OUT
                # 8 warps x (4x4 m16n8k16 atoms x 2 k-blocks) = 32 HMMA in the unrolled main loop;
                # dgrad's epilogue must use the fast reciprocal (MUFU.RCP) and warp shuffles (SHFL).
                expect = {"HMMA": 32, "MUFU.RCP": 1}
                if mode == "dgrad":
                    expect["SHFL.BFLY"] = 1
                out.append(make_variant(
                    variant_name(mode, ab, c, form), _TARGET,
                    {"mode": mode, "ab_dtype": ab, "c_dtype": c, "form": form},
                    arches=("sm_80",), expect_sass=expect, sources=SOURCES))
    # Hopper, issue 16: the persistent warp-specialized dgrad whose epilogue also writes F(x)
    # (bwd_sm90ws); dW and db come from one cuBLAS GEMM.  Per-role SASS check: ws_check.
    # ``sm90wspp``: the same with ping-ponged consumer warpgroups (FUSEDKAT_BWD_KERNEL=sm90wspp).
    # The cooperative sm90ws kernel is form A only: its form-B build holds an IMAD.HI in the
    # epilogue (ptxas' magic-number division in the partials' scatter, after the large-|x| rework
    # of rational_math), which its role check rejects; ws_backward refuses that combination.
    for kernel in ("sm90ws", "sm90wspp"):
        for ab in ("bf16", "fp16"):
            for form in (rm.FORMS if kernel == "sm90wspp" else ("A",)):
                out.append(make_variant(
                    f"rational_gemm_dgrad_{kernel}_{ab}_{ab}_{form}", _TARGET,
                    {"mode": "dgrad", "ab_dtype": ab, "c_dtype": ab, "form": form, "kernel": kernel},
                    arches=("sm_90a",), expect_sass={"HGMMA": 4, "MUFU.RCP": 64, "SHFL.BFLY": 1}, sources=SOURCES,
                    role_check="cutlass_kernels.gemm.ws_check:dgrad_role_failures"))
    return out

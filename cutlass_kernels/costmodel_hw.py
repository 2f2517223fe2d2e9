"""Hardware constants of the static cycle model (:mod:`cutlass_kernels.costmodel`), per GPU.

Rates are per SM per clock unless said otherwise; sources are the vendors' whitepapers and data
sheets (dense rates: no 2:4 sparsity).  The identity used to check each tensor rate:
``peak dense FLOP/s = 2 * tensor_fma * sms * boost clock``.

* **H100 SXM5** (sm_90): 132 SMs; 4 SMSPs, each issuing one warp instruction per clock; FP32 128
  lanes, MUFU 16 lanes, dense bf16/fp16 HGMMA 2048 FMA (989 TFLOP/s at 1.83 GHz: 4096 FLOP/clk/SM);
  HBM3 3.35 TB/s; L2 50 MB; 228 KB shared memory; 64 K registers.
  **Clock 1.755 GHz**: the results JSON records no SM clock; 1.755 GHz lies between the data
  sheet's tensor-rate clock (1.83 GHz) and what H100s sustain under long dense GEMMs (power-capped,
  ~1.6-1.8 GHz).  The fitted MMA efficiency (``costmodel.Fit.eta_mma``) absorbs the error of this
  choice for tensor-core time; ALU time scales with it directly.
* **H200 SXM** (sm_90): the H100's SM at the same clocks, HBM3e 4.8 TB/s, L2 50 MB.
* **A100 SXM4 80 GB** (sm_80): 108 SMs at 1.41 GHz; FP32 64 lanes; MUFU 16; dense bf16 mma.sync
  1024 FMA (312 TFLOP/s = 2 * 1024 * 108 * 1.41 GHz); HBM2e 2.04 TB/s; L2 40 MB; 164 KB smem.
* **A10** (sm_86, GA102, the common data-centre GA10x): 72 SMs at 1.695 GHz; FP32 128 lanes
  (GA10x doubled FP32); MUFU 16; dense fp16/bf16 tensor 512 FMA (125 TFLOP/s); GDDR6 0.6 TB/s;
  L2 6 MB; 100 KB smem.  (GeForce GA10x run fp32-accumulate MMA at half this rate.)
* **L40S** (sm_89, AD102): 142 SMs at 2.52 GHz; FP32 128 lanes; MUFU 16; dense bf16 tensor 512
  FMA (362 TFLOP/s); GDDR6 0.864 TB/s; L2 96 MB; 100 KB smem.

L2 bandwidth is not on data sheets and the model has no L2 term (see
:func:`.costmodel_kernels.l2_gbytes`); ``l2_mb`` is recorded for reference.
"""
from __future__ import annotations

from dataclasses import dataclass

from .arch import normalize_arch


@dataclass(frozen=True)
class GpuSpec:
    """Per-GPU constants (see the module docstring for the sources)."""

    name: str
    arch: str
    sms: int
    clock_ghz: float
    tensor_fma: int  # dense bf16/fp16 FMA per clock per SM
    fp32_lanes: int
    mufu_lanes: int
    hbm_tbps: float
    l2_mb: float
    smem_kb: int
    smsps: int = 4
    regs: int = 65536

    @property
    def dense_tflops(self) -> float:
        return 2 * self.tensor_fma * self.sms * self.clock_ghz / 1e3

    def us(self, cycles: float) -> float:
        """Microseconds of ``cycles`` SM clocks."""
        return cycles / (self.clock_ghz * 1e3)


H100 = GpuSpec("H100 SXM5 80GB", "sm_90a", sms=132, clock_ghz=1.755, tensor_fma=2048, fp32_lanes=128,
               mufu_lanes=16, hbm_tbps=3.35, l2_mb=50, smem_kb=228)
H200 = GpuSpec("H200 SXM 141GB", "sm_90a", sms=132, clock_ghz=1.755, tensor_fma=2048, fp32_lanes=128,
               mufu_lanes=16, hbm_tbps=4.8, l2_mb=50, smem_kb=228)
A100 = GpuSpec("A100 SXM4 80GB", "sm_80", sms=108, clock_ghz=1.41, tensor_fma=1024, fp32_lanes=64,
               mufu_lanes=16, hbm_tbps=2.04, l2_mb=40, smem_kb=164)
A10 = GpuSpec("A10", "sm_86", sms=72, clock_ghz=1.695, tensor_fma=512, fp32_lanes=128, mufu_lanes=16,
              hbm_tbps=0.6, l2_mb=6, smem_kb=100)
L40S = GpuSpec("L40S", "sm_89", sms=142, clock_ghz=2.52, tensor_fma=512, fp32_lanes=128, mufu_lanes=16,
               hbm_tbps=0.864, l2_mb=96, smem_kb=100)

#: ``--gpu`` names of the CLI.
GPUS: dict[str, GpuSpec] = {"h100": H100, "h200": H200, "a100": A100, "a10": A10, "l40s": L40S}
#: The GPU whose constants stand for an arch when only the arch is known (the dispatcher's case).
BY_ARCH: dict[str, GpuSpec] = {"sm_90a": H100, "sm_80": A100, "sm_86": A10, "sm_89": L40S}


def spec_for(gpu_or_arch: str) -> GpuSpec:
    """The :class:`GpuSpec` of a ``--gpu`` name (``h100``) or an arch (``sm_90``, ``sm_80`` ...)."""
    key = gpu_or_arch.strip().lower()
    if key in GPUS:
        return GPUS[key]
    try:
        arch = normalize_arch(key)
    except (TypeError, ValueError):
        raise ValueError(f"unknown GPU or arch {gpu_or_arch!r}: expected one of {sorted(GPUS)} or "
                         f"an arch among {sorted(BY_ARCH)}") from None
    if arch not in BY_ARCH:
        raise ValueError(f"no cost-model constants for {arch}: known arches {sorted(BY_ARCH)}")
    return BY_ARCH[arch]

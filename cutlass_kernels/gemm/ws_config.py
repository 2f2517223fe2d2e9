"""Config of the warp-specialized sm_90a fused forward (:mod:`.fwd_sm90ws`).

Cheap to import (no DSL): the registry, the launcher and the cost model read it.  The cache key is
derived from the fields (:meth:`cutlass_kernels.config.KernelConfig.cache_key`), never written by
hand; :meth:`WsFwdConfig.variant_name` is the registry name
``rational_gemm_fwd_sm90ws_{dtype}_{form}[_n{bn}][_panel][_fid|_nomma]``.
"""
from __future__ import annotations

import dataclasses
from typing import ClassVar

from fusedkat.ops import rational_math as rm

from ..config import KernelConfig

#: Rows of a CTA tile (two consumer warpgroups of 64 rows) and the k-tile width (one 128-byte
#: swizzle row of bf16/fp16).
BM = 128
BK = 64
#: Threads: warpgroup 0 = producer (warp 0 issues TMA), 1 = transform, 2-3 = consumers.
NUM_THREADS = 512
#: Registers per thread at launch: 64K / 512 threads.
LAUNCH_REGS = 65536 // NUM_THREADS
#: ``setmaxnreg`` per role, by tile width: (producer, transform, consumer).  They must sum (x 128
#: threads, consumers twice) to at most the 64K registers of an SM: 40 + T + 2 C <= 512.  A target
#: below :data:`LAUNCH_REGS` is a ``setmaxnreg.dec``, above it an ``.inc``.  ``setmaxnreg`` only
#: re-partitions the register file at run time: ptxas allocates every role within the launch cap
#: (128), which is why there is no bN = 256 (its 64 x 256 WGMMA alone needs 154 registers: "C7602
#: Insufficient registers (128)", seen with ``stages=3``).
REGS: dict[int, tuple[int, int, int]] = {128: (40, 104, 184), 192: (40, 104, 184)}
#: Diagnostic suffixes (reachable from the build and the benchmark, not from dispatch).
SUFFIX_IDENTITY = "_fid"
SUFFIX_NOMMA = "_nomma"
#: Shared memory besides the rings: the coefficient table (64 groups x 12 fp32), mbarriers, alignment.
SMEM_TABLES = 4096
#: The resident-panel variant: largest K it holds (6 k-tiles of 128 x 64), and its raw-x ring depth.
PANEL_MAX_K = 384
PANEL_X_STAGES = 2


@dataclasses.dataclass(frozen=True)
class WsFwdConfig(KernelConfig):
    """One variant of the warp-specialized forward ``y = F(x) W^T + bias``.

    ``bn``: N tile (128, or 192 for N = 192 / 384 / multiples of 192); ``stages``: depth of the raw
    (TMA) ring of x and W k-tiles; ``ring``: depth of the transformed-A ring (3: slack for the transform while the consumers run the epilogue); ``identity``: F = id
    (the MMA / pipeline floor, suffix ``_fid``); ``mma``: False skips the WGMMAs (the ALU floor,
    suffix ``_nomma``; y = bias then).  ``panel``: the resident-panel variant (:mod:`.fwd_sm90ws_panel`,
    suffix ``_panel``) for K <= :data:`PANEL_MAX_K`: the transformed 128 x K panel of x stays in
    shared memory while the CTA sweeps its N tiles, so F runs once per element per CTA and m-tile;
    ``stages`` is then the depth of the W ring and x has a ring of :data:`PANEL_X_STAGES`.
    """

    family: ClassVar[str] = "rational_gemm_fwd_sm90ws"

    dtype: str = "bf16"
    form: str = rm.DEFAULT_FORM
    m: int = rm.DEFAULT_ORDER[0]
    n: int = rm.DEFAULT_ORDER[1]
    bn: int = 192
    stages: int = 4
    ring: int = 3
    identity: bool = False
    mma: bool = True
    panel: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        rm.RationalSpec(self.m, self.n, self.form)
        if self.dtype not in ("bf16", "fp16"):
            raise ValueError(f"the fused GEMM takes bf16 or fp16, got {self.dtype!r}")
        if self.bn not in REGS:
            raise ValueError(f"sm90ws N tile must be one of {sorted(REGS)}, got {self.bn}")
        if self.stages < 2 or self.ring < 2:
            raise ValueError(f"need stages >= 2 and ring >= 2, got {self.stages}, {self.ring}")
        if self.identity and not self.mma:
            raise ValueError("identity and no-MMA together measure nothing")
        p, t, c = self.regs
        if p + t + 2 * c > 4 * LAUNCH_REGS or not (p < LAUNCH_REGS and t < LAUNCH_REGS < c):
            raise ValueError(f"register split {self.regs} does not fit 4 warpgroups x {LAUNCH_REGS}")
        if self.smem_bytes() + SMEM_TABLES > 227 * 1024:
            raise ValueError(f"{self.smem_bytes()} bytes of shared memory: lower stages/ring")

    @property
    def num_coefs(self) -> int:
        """Coefficients per group in the smem table: a_0..a_m, b_1..b_n."""
        return self.m + 1 + self.n

    @property
    def regs(self) -> tuple[int, int, int]:
        """``setmaxnreg`` targets (producer, transform, consumer)."""
        return REGS[self.bn]

    @property
    def panel_slots(self) -> int:
        """k-tile slots of the resident panel (its K capacity / 64)."""
        return PANEL_MAX_K // BK

    def smem_bytes(self) -> int:
        """Shared memory of the rings (raw x + W stages, transformed x), without the small tables."""
        if self.panel:
            return 2 * (self.stages * self.bn * BK + PANEL_X_STAGES * BM * BK + self.panel_slots * BM * BK)
        return 2 * (self.stages * (BM + self.bn) * BK + self.ring * BM * BK)

    def variant_name(self) -> str:
        """Registry name: ``rational_gemm_fwd_sm90ws_{dtype}_{form}[_n{bn}][_panel][_fid|_nomma]``."""
        suffix = SUFFIX_IDENTITY if self.identity else SUFFIX_NOMMA if not self.mma else ""
        width = "" if self.bn == 192 else f"_n{self.bn}"
        return f"{self.family}_{self.dtype}_{self.form}{width}{'_panel' if self.panel else ''}{suffix}"


def pick_bn(n_out: int) -> int:
    """192 when N is a multiple of 192 (192, 384, 768, ..., 3072: no padded columns), else 128."""
    return 192 if n_out % 192 == 0 else 128

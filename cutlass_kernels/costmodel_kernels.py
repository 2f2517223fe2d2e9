"""Kernel time formulas of the static cycle model (:mod:`cutlass_kernels.costmodel`).

Every function returns microseconds for one call on ``spec`` (:class:`~.costmodel_hw.GpuSpec`)
with the fitted efficiencies ``fit`` (:class:`Fit`).  Shapes are ``(M, K, N)``: the forward is
``y[M, N] = F(x)[M, K] @ W[N, K]^T``; the backward's dgrad ``G[M, K] = dY[M, N] @ W`` and wgrad
``dW[N, K] = dY^T @ F(x)``.  All tensors are 2-byte (bf16/fp16) unless said otherwise.

Structure of a kernel's time (cycles of the busiest SM, then ``spec.us``):

* **tensor-core time**: FMAs of the (padded) tiles the SM runs / (``tensor_fma`` * ``eta_mma``);
* **ALU time**: SMSP issue clocks (SASS counts, :mod:`.costmodel_sass`) / ``ETA_ISSUE``; the
  four SMSPs of an SM work in parallel, so a CTA's clocks are its warps' per-SMSP share;
* **memory time**: unique HBM bytes / (``hbm_tbps`` * ``eta_hbm``), a lower bound the kernel time
  never goes below;
* **overlap**: per k-tile (old kernels) or per SM (warp-specialized designs)
  ``max(a, b) + (1 - phi) * min(a, b)``: ``phi = 0`` is the serial sum, ``phi = 1`` full overlap.
* **waves**: non-persistent grids run ``ceil(tiles / SMs)`` rounds (one CTA per SM: the 4-stage
  shared-memory rings of these kernels leave no room for a second); persistent kernels give the
  busiest SM ``ceil(tiles / SMs)`` tiles.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from .costmodel_hw import GpuSpec

#: Assumed, not fitted: issue efficiency of ALU-heavy warps (DESIGN section 3 / issue 15: 70%).
ETA_ISSUE = 0.70
#: Assumed, not fitted: fraction of the shorter of (MMA, transform/epilogue) a warp-specialized
#: kernel hides behind the longer (ping-pong and producer/consumer designs reach ~90%).
PHI_WS = 0.90
#: Assumed: clocks to fill a tile's pipeline (one DRAM round trip, ~570 ns at 1.755 GHz).
FILL_CYCLES = 1000.0
#: Issue 16's estimate of the deterministic fold of the dgrad's coefficient partials, us.
FOLD_US = 10.0
#: Issue slots per element a dedicated transform warp spends besides F itself: one 16-byte LDS
#: and one 16-byte STS per 8 elements (0.25) and the mbarrier/fence handoff per stage (0.25).
RING_SLOTS = 0.5


@dataclass(frozen=True)
class Fit:
    """Efficiencies fitted to the H100 measurements (see :func:`cutlass_kernels.costmodel.fit`)."""

    eta_mma: float  # cuBLAS F.linear: achieved fraction of the dense MMA rate
    eta_hbm: float  # elementwise F(x): achieved fraction of HBM bandwidth
    phi_old: float  # old fused forward: fraction of min(ALU, MMA) hidden per k-tile


@dataclass(frozen=True)
class SerialKernel:
    """A non-persistent kernel whose warps all run one loop (the old sm_90a kernels).

    ``loop``: SMSP clocks per warp per k-tile; ``producer``: clocks of the TMA-issuing branch per
    CTA per k-tile; ``per_tile``: clocks per warp per tile outside the loop (prologue, epilogue).
    """

    tile: tuple[int, int, int]
    warps: int
    loop: float
    producer: float
    per_tile: float


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def overlap(a: float, b: float, phi: float) -> float:
    """``max + (1 - phi) * min``: the time of two activities that overlap by ``phi``."""
    return max(a, b) + (1.0 - phi) * min(a, b)


def mma_cycles(spec: GpuSpec, fit: Fit, fma: float) -> float:
    return fma / (spec.tensor_fma * fit.eta_mma)


def hbm_us(spec: GpuSpec, fit: Fit, nbytes: float) -> float:
    return nbytes / (spec.hbm_tbps * fit.eta_hbm * 1e6)


def cublas_gemm_us(spec: GpuSpec, fit: Fit, m: int, n: int, k: int) -> float:
    """A well-tuned GEMM ``C[m, n] = A[m, k] B[k, n]``: the MMA roofline at ``eta_mma``, or memory."""
    fma_cycles = m * n * k / (spec.tensor_fma * spec.sms * fit.eta_mma)
    return max(spec.us(fma_cycles), hbm_us(spec, fit, 2 * (m * k + k * n + m * n)))


def elementwise_us(spec: GpuSpec, fit: Fit, nbytes: float, elements: int = 0, slots: float = 0.0) -> float:
    """An elementwise kernel moving ``nbytes``: memory time, or issue time when ``elements`` each
    take ``slots`` issue slots (SASS of its loop) and that is longer (the rational backward is)."""
    alu = elements * slots / (32 * spec.smsps * spec.sms) / ETA_ISSUE
    return max(hbm_us(spec, fit, nbytes), spec.us(alu))


def serial_kernel_us(spec: GpuSpec, fit: Fit, kern: SerialKernel, out_rows: int, out_cols: int,
                     reduction: int, phi: float, min_bytes: float) -> float:
    """Old kernel over an ``out_rows x out_cols`` output reducing over ``reduction``."""
    bm, bn, bk = kern.tile
    tiles = _cdiv(out_rows, bm) * _cdiv(out_cols, bn)
    waves = _cdiv(tiles, spec.sms)
    per_smsp = kern.warps / spec.smsps
    alu = (per_smsp * kern.loop + kern.producer / spec.smsps) / ETA_ISSUE
    mma = mma_cycles(spec, fit, bm * bn * bk)
    tile = _cdiv(reduction, bk) * overlap(alu, mma, phi) + per_smsp * kern.per_tile / ETA_ISSUE + FILL_CYCLES
    return max(spec.us(waves * tile), hbm_us(spec, fit, min_bytes))


def old_fwd_us(spec: GpuSpec, fit: Fit, kern: SerialKernel, shape: tuple[int, int, int],
               phi: Optional[float] = None) -> float:
    """The old fused forward (F on the RS-WGMMA A fragment, once per N tile)."""
    m, k, n = shape
    return serial_kernel_us(spec, fit, kern, m, n, k, fit.phi_old if phi is None else phi,
                            2 * (m * k + n * k + m * n))


def old_bwd_us(spec: GpuSpec, fit: Fit, dgrad: SerialKernel, wgrad: SerialKernel,
               shape: tuple[int, int, int], phi: Optional[float] = None) -> float:
    """The old fused dgrad (F'(x) epilogue) + wgrad (F on the x tile in smem), kernels only."""
    m, k, n = shape
    phi = fit.phi_old if phi is None else phi
    d = serial_kernel_us(spec, fit, dgrad, m, k, n, phi, 2 * (m * n + n * k + 2 * m * k))
    w = serial_kernel_us(spec, fit, wgrad, n, k, m, phi, 2 * (m * n + m * k) + 4 * n * k)
    return d + w


@dataclass(frozen=True)
class WsForward:
    """Issue 15's warp-specialized forward, as designed (or as measured, when ``source`` says so).

    ``slots_per_element``: transform-warp issue slots per element of x (F plus ring I/O);
    ``epilogue_slots``: slots per output element (bias, convert, store), overlapped except for
    the last tile; ``resident``: the 128 x K transformed panel stays in smem while the CTA sweeps N;
    ``share``: CTAs of a cluster along N that split one A tile's transform (issue 15 item 3: each
    transforms 1/share of it and stores to all through DSMEM).
    """

    slots_per_element: float
    epilogue_slots: float
    source: str
    resident: bool = False
    mode: str = "full"  # "full" | "fid" (F = identity: ring copy only) | "nomma" (no MMA)
    share: int = 1


def ws_block_n(n: int) -> int:
    """bN of the new kernel: 192 where N is a multiple of 192 but not of 256 (N = 192, 384), else 256."""
    return 192 if (n % 256 and n % 192 == 0) else 256


def ws_fwd_us(spec: GpuSpec, fit: Fit, design: WsForward, shape: tuple[int, int, int]) -> float:
    m, k, n = shape
    bm, bn, kp = 128, ws_block_n(n), _cdiv(k, 64) * 64
    m_tiles, n_tiles = _cdiv(m, bm), _cdiv(n, bn)
    tiles_sm = _cdiv(m_tiles * n_tiles, spec.sms)  # persistent, balanced: a contiguous run of tiles
    if design.resident:  # F once per 128-row panel the run touches (at most one more than it spans)
        elements_sm = min(tiles_sm, _cdiv(tiles_sm, n_tiles) + 1) * bm * kp
    else:
        elements_sm = tiles_sm * bm * kp / design.share
    slots = RING_SLOTS if design.mode == "fid" else design.slots_per_element
    alu = elements_sm * slots / (32 * spec.smsps) / ETA_ISSUE
    mma = 0.0 if design.mode == "nomma" else mma_cycles(spec, fit, tiles_sm * bm * bn * kp)
    last_epilogue = bm * bn * design.epilogue_slots / (32 * spec.smsps) / ETA_ISSUE
    cycles = overlap(alu, mma, PHI_WS) + FILL_CYCLES + last_epilogue
    # HBM: x, W and y once (tiles rasterised along N share their A rows in L2).  L2 -> smem traffic
    # (every tile's A and B) is not a term: see l2_gbytes.
    return max(spec.us(cycles), hbm_us(spec, fit, 2 * (m * k + n * k + m * n)))


def l2_gbytes(m: int, n: int, k: int, bm: int, bn: int) -> float:
    """GB a tiled GEMM reads from L2 into shared memory (every tile its A and B panels), no multicast."""
    return _cdiv(m, bm) * _cdiv(n, bn) * (bm + bn) * k * 2 / 1e9


def ws_dgrad_us(spec: GpuSpec, fit: Fit, epilogue_slots: float, shape: tuple[int, int, int],
                pingpong: bool = True) -> float:
    """Issue 16's persistent dgrad ``G = dY W``; the epilogue writes dx, the partials and
    ``[F(x) | 1]`` (``epilogue_slots`` per element of G), overlapped with the other consumer's MMA
    (``pingpong``, by :data:`PHI_WS`) or, for the cooperative kernel in the tree
    (:mod:`cutlass_kernels.gemm.bwd_sm90ws`: both consumer warpgroups on one tile), not at all."""
    m, k, n = shape
    bm, bn = 128, 128
    tiles_sm = _cdiv(_cdiv(m, bm) * _cdiv(k, bn), spec.sms)
    mma = mma_cycles(spec, fit, tiles_sm * bm * bn * _cdiv(n, 64) * 64)
    epi = tiles_sm * bm * bn * epilogue_slots / (32 * spec.smsps) / ETA_ISSUE
    cycles = overlap(mma, epi, PHI_WS if pingpong else 0.0) + FILL_CYCLES
    hbm = 2 * (m * n + n * k + 2 * m * k + m * (k + 8))  # dY, W, x in; dx, [F(x) | 1] out
    return max(spec.us(cycles), hbm_us(spec, fit, hbm))


def linear_bwd_us(spec: GpuSpec, fit: Fit, shape: tuple[int, int, int]) -> float:
    """A plain linear layer's backward as the benchmark runs it: cuBLAS dgrad, wgrad, bias column sum."""
    m, k, n = shape
    return (cublas_gemm_us(spec, fit, m, k, n) + cublas_gemm_us(spec, fit, n, k, m)
            + elementwise_us(spec, fit, 2 * m * n))


def unfused_fwd_us(spec: GpuSpec, fit: Fit, shape: tuple[int, int, int], f_slots: float) -> float:
    """Elementwise F(x) (read x, write F(x); ``f_slots`` per element) then cuBLAS ``F.linear``."""
    m, k, n = shape
    return elementwise_us(spec, fit, 4 * m * k, m * k, f_slots) + cublas_gemm_us(spec, fit, m, n, k)


def unfused_bwd_us(spec: GpuSpec, fit: Fit, shape: tuple[int, int, int], bwdf_slots: float) -> float:
    """The tree's three-launch unfused backward: cuBLAS dgrad; the elementwise backward reading G
    and x, writing dx and ``[F(x) | 1]`` (``bwdf_slots`` per element); one cuBLAS GEMM
    ``dY^T [F(x) | 1]``; the partial fold."""
    m, k, n = shape
    bwdf = elementwise_us(spec, fit, 2 * (3 * m * k + m * (k + 8)), m * k, bwdf_slots)
    return cublas_gemm_us(spec, fit, m, k, n) + bwdf + cublas_gemm_us(spec, fit, n, k + 8, m) + FOLD_US


def new_bwd_us(spec: GpuSpec, fit: Fit, epilogue_slots: float, shape: tuple[int, int, int],
               pingpong: bool = True) -> float:
    """Issue 16: the warp-specialized dgrad with its epilogue, one cuBLAS wgrad, the fold."""
    m, k, n = shape
    return (ws_dgrad_us(spec, fit, epilogue_slots, shape, pingpong) + cublas_gemm_us(spec, fit, n, k + 8, m)
            + FOLD_US)


def mma_floor_us(spec: GpuSpec, shape: tuple[int, int, int]) -> float:
    """The tensor cores at 100% of the dense rate: no kernel of ``2 M N K`` FLOP is faster."""
    m, k, n = shape
    return spec.us(m * n * k / (spec.tensor_fma * spec.sms))


def solve_phi(spec: GpuSpec, fit: Fit, kern: SerialKernel, shape: tuple[int, int, int], measured_us: float) -> float:
    """The ``phi`` at which :func:`old_fwd_us` equals ``measured_us`` (clamped to [0, 1])."""
    lo, hi = 0.0, 1.0
    for _ in range(60):  # old_fwd_us decreases in phi
        mid = (lo + hi) / 2
        if old_fwd_us(spec, fit, kern, shape, mid) > measured_us:
            lo = mid
        else:
            hi = mid
    return min(1.0, max(0.0, (lo + hi) / 2))

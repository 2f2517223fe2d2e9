"""What the sm_90a GEMMs (the fused forward, and the dgrad/wgrad backward) share: the TMA copy atoms
of A and B, the mbarrier pipeline that tracks them, their partitions and the producer step.

Trace-time helpers: they emit the same ops, in the same order, as the code that each kernel
carried before (the build check compiled byte-identical cubins after the move).  Runtime control
flow (the elected producer warp, the refill condition) stays in the kernel bodies.
"""
from __future__ import annotations

from typing import Any

import cutlass.cute as cute
import cutlass.pipeline as pipeline


def make_tma_atoms(mA: cute.Tensor, mB: cute.Tensor, sA_staged: Any, sB_staged: Any,
                   tile: tuple[int, int, int]) -> tuple[Any, Any, Any, Any]:
    """Host side: ``(tma_a, tma_mA, tma_b, tma_mB)``, the bulk-tensor G2S atoms for one stage of
    ``sA_staged`` (bM x bK) and ``sB_staged`` (bN x bK)."""
    bM, bN, bK = tile
    op = cute.nvgpu.cpasync.CopyBulkTensorTileG2SOp()
    tma_a, tma_mA = cute.nvgpu.cpasync.make_tiled_tma_atom(op, mA, cute.slice_(sA_staged, (None, None, 0)), (bM, bK))
    tma_b, tma_mB = cute.nvgpu.cpasync.make_tiled_tma_atom(op, mB, cute.slice_(sB_staged, (None, None, 0)), (bN, bK))
    return tma_a, tma_mA, tma_b, tma_mB


def create_tma_pipeline(barrier_ptr: Any, stages: int, num_threads: int, dtype: Any, sA_staged: Any,
                        sB_staged: Any) -> Any:
    """The TMA -> consumer mbarrier pipeline: one producer thread, every consumer warp, and a
    transaction count of one A stage plus one B stage."""
    tx_bytes = cute.size_in_bytes(dtype, cute.slice_(sA_staged, (None, None, 0))) + \
        cute.size_in_bytes(dtype, cute.slice_(sB_staged, (None, None, 0)))
    return pipeline.PipelineTmaAsync.create(
        barrier_storage=barrier_ptr, num_stages=stages,
        producer_group=pipeline.CooperativeGroup(pipeline.Agent.Thread),
        consumer_group=pipeline.CooperativeGroup(pipeline.Agent.Thread, num_threads // 32),
        tx_count=tx_bytes, cta_layout_vmnk=cute.make_layout((1, 1, 1, 1)))


def partition_tma(tma_a: Any, tma_b: Any, sA: cute.Tensor, sB: cute.Tensor, gA: cute.Tensor,
                  gB: cute.Tensor) -> tuple[Any, Any, Any, Any]:
    """``(tAsA, tAgA, tBsB, tBgB)``: the smem stages and gmem k-tiles as the TMA atoms see them."""
    tAsA, tAgA = cute.nvgpu.cpasync.tma_partition(tma_a, 0, cute.make_layout(1),
                                                  cute.group_modes(sA, 0, 2), cute.group_modes(gA, 0, 2))
    tBsB, tBgB = cute.nvgpu.cpasync.tma_partition(tma_b, 0, cute.make_layout(1),
                                                  cute.group_modes(sB, 0, 2), cute.group_modes(gB, 0, 2))
    return tAsA, tAgA, tBsB, tBgB


def produce(pipe: Any, prod: Any, tma_a: Any, tAgA: Any, tAsA: Any, tma_b: Any, tBgB: Any, tBsB: Any) -> None:
    """Acquire stage ``prod.index`` and start the TMA loads of k-tile ``prod.count`` into it."""
    pipe.producer_acquire(prod)
    bar = pipe.producer_get_barrier(prod)
    cute.copy(tma_a, tAgA[None, prod.count], tAsA[None, prod.index], tma_bar_ptr=bar)
    cute.copy(tma_b, tBgB[None, prod.count], tBsB[None, prod.index], tma_bar_ptr=bar)
    pipe.producer_commit(prod)


@cute.jit
def pipe_load(raw, prod, tma_a, tAgA, tAsA, tma_b, tBgB, tBsB, kt):
    """Acquire raw stage ``prod.index`` and start the TMA loads of k-tile ``kt`` of this tile."""
    raw.producer_acquire(prod)
    bar = raw.producer_get_barrier(prod)
    cute.copy(tma_a, tAgA[None, kt], tAsA[None, prod.index], tma_bar_ptr=bar)
    cute.copy(tma_b, tBgB[None, kt], tBsB[None, prod.index], tma_bar_ptr=bar)

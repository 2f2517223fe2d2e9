"""A model of the sm90ws forward's barrier protocol, run under random schedules (no GPU, no DSL).

The roles below make the same waits, arrivals and smem reads/writes, in the same order, as the
role loops of ``cutlass_kernels/gemm/fwd_sm90ws.py`` and ``fwd_sm90ws_panel.py`` (keep them in
step).  An mbarrier phase completes when its arrival count (the kernel's ``CooperativeGroup``
sizes: 12 / 128 / 256, or 4 / 8 for the panel's x / W rings) is reached; a TMA load lands at a
random later step; a WGMMA reads its smem operands at issue *and* when it retires (at the
``wait_group`` that retires it), so a stage released or refilled too early shows up as a wrong
value.  Checked: no deadlock, every transform reads the x k-tile it expects, every WGMMA reads the
F(x) and W k-tiles of its own tile, for several schedules and shapes.  This tests the protocol's
design, not the compiled code (that is for tests/gpu).
"""
from __future__ import annotations

import random
from collections import defaultdict

import pytest


class Barrier:
    """An mbarrier: phase ``k`` completes after ``count`` arrivals of that phase."""

    def __init__(self, count: int):
        self.count, self.arrived, self.phases = count, 0, 0

    def arrive(self, n: int = 1) -> None:
        self.arrived += n
        assert self.arrived <= self.count, "more arrivals than the barrier's count in one phase"
        if self.arrived == self.count:
            self.arrived, self.phases = 0, self.phases + 1


class Ring:
    """``stages`` slots with full/empty barriers; uses are numbered per slot (what the phase bit tracks)."""

    def __init__(self, stages: int, full_count: int, empty_count: int):
        self.stages = stages
        self.full = [Barrier(full_count) for _ in range(stages)]
        self.empty = [Barrier(empty_count) for _ in range(stages)]
        self.data: list = [None] * stages

    def slot(self, i: int) -> tuple[int, int]:
        return i % self.stages, i // self.stages  # (index, use of that slot)

    def can_fill(self, i: int) -> bool:  # producer_acquire of the i-th use overall
        s, use = self.slot(i)
        return self.empty[s].phases >= use

    def is_full(self, i: int) -> bool:  # consumer_wait
        s, use = self.slot(i)
        return self.full[s].phases >= use + 1


def tiles_of(cta, ctas, tiles_m, tiles_n):
    total = tiles_m * tiles_n
    return [(t // tiles_n, t % tiles_n) for t in range(cta * total // ctas, (cta + 1) * total // ctas)]


def run_cta(tiles, k_tiles, stages, ring, panel, seed, tiles_n, bug=""):
    """Simulate one CTA; returns the number of steps (raises on a protocol violation).
    ``bug`` injects a protocol error (tests of the model itself): ``"early_release"`` -- the
    consumers release a k-tile's stages right after issuing its WGMMAs instead of one k-tile
    later; ``"one_transform_arrival"`` -- the transformed stage's full barrier gets one arrival per
    warp instead of one per thread (it never completes)."""
    rng = random.Random(seed)
    pending_tma = []  # (ring, slot, value, arrive-count) landing later
    if panel:
        xr, wr = Ring(2, 1, 4), Ring(stages, 1, 8)
        pr = Ring(6, 128, 256)
    else:
        raw = Ring(stages, 1, 12)
        tr = Ring(ring, 128, 256)

    def wait(cond):
        while not cond():
            yield

    def tma(r, i, value):
        s, _ = r.slot(i)
        pending_tma.append((r, s, value))

    def producer():
        xi = wi = 0
        m_prev = None
        for m, n in tiles:
            if panel:
                if m != m_prev:
                    for kt in range(k_tiles):
                        yield from wait(lambda: xr.can_fill(xi))
                        tma(xr, xi, ("x", m, kt))
                        xi += 1
                    m_prev = m
                for kt in range(k_tiles):
                    yield from wait(lambda: wr.can_fill(wi))
                    tma(wr, wi, ("w", n, kt))
                    wi += 1
            else:
                for kt in range(k_tiles):
                    yield from wait(lambda: raw.can_fill(wi))
                    tma(raw, wi, (("x", m, kt), ("w", n, kt)))
                    wi += 1

    def transform():
        ri = wi = 0
        m_prev = None
        for m, n in tiles:
            if panel and m == m_prev:
                continue
            for kt in range(k_tiles):
                src, dst = (xr, pr) if panel else (raw, tr)
                yield from wait(lambda: src.is_full(ri))
                yield from wait(lambda: dst.can_fill(wi))
                got = src.data[src.slot(ri)[0]]
                x = got if panel else got[0]
                assert x == ("x", m, kt), f"transform read {x} for {(m, kt)}"
                yield
                dst.data[dst.slot(wi)[0]] = ("F", m, kt)
                dst.full[dst.slot(wi)[0]].arrive(4 if bug == "one_transform_arrival" else 128)
                src.empty[src.slot(ri)[0]].arrive(4)  # lane 0 of each transform warp
                ri += 1
                wi += 1
            m_prev = m

    def consumer(wg):
        """One consumer warpgroup (4 warps, 128 threads)."""
        ri = rel = 0
        pi = prel = 0
        base = 0
        inflight = []  # MMAs issued, not retired: (reads) checked again at retirement
        m_prev = None

        def check(reads):
            for r, s, want in reads:
                got = r.data[s]
                got = got if (panel or r is tr) else got[1]
                assert got == want, f"WGMMA operand {want} overwritten by {got}"

        def retire(keep):
            while len(inflight) > keep:
                check(inflight.pop(0))

        for t, (m, n) in enumerate(tiles):
            first = m != m_prev
            if panel and first:
                base = pi
            for kt in range(k_tiles):
                w_ring = wr if panel else raw
                yield from wait(lambda: w_ring.is_full(ri))
                if panel:
                    if first:
                        yield from wait(lambda: pr.is_full(pi))
                        pi += 1
                    a_ring, a_slot = pr, (base + kt) % pr.stages
                else:
                    yield from wait(lambda: tr.is_full(ri))
                    a_ring, a_slot = tr, tr.slot(ri)[0]
                reads = [(a_ring, a_slot, ("F", m, kt)), (w_ring, w_ring.slot(ri)[0], ("w", n, kt))]
                check(reads)
                inflight.append(reads)
                yield
                if bug == "early_release":
                    w_ring.empty[w_ring.slot(ri)[0]].arrive(4)
                    if not panel:
                        tr.empty[tr.slot(ri)[0]].arrive(128)
                    rel += 1
                retire(1)  # wait_group(1)
                if kt > 0 and not bug:
                    w_ring.empty[w_ring.slot(rel)[0]].arrive(4)  # lane 0 of each warp
                    if not panel:
                        tr.empty[tr.slot(rel)[0]].arrive(128)  # every thread
                    rel += 1
                ri += 1
            retire(0)
            w_ring = wr if panel else raw
            if not bug:
                w_ring.empty[w_ring.slot(rel)[0]].arrive(4)
                if not panel:
                    tr.empty[tr.slot(rel)[0]].arrive(128)
                rel += 1
            if panel and (n + 1 == tiles_n or t + 1 == len(tiles)):
                for _ in range(k_tiles):
                    pr.empty[pr.slot(prel)[0]].arrive(128)
                    prel += 1
            m_prev = m
            yield  # epilogue

    roles = [producer(), transform(), consumer(0), consumer(1)]
    live = list(roles)
    steps = 0
    while live or pending_tma:
        steps += 1
        assert steps < 200000, "no progress: deadlock"
        if pending_tma and rng.random() < 0.3:  # a TMA load lands
            r, s, value = pending_tma.pop(rng.randrange(len(pending_tma)))
            r.data[s] = value
            r.full[s].arrive(1)
            continue
        if not live:
            continue
        role = rng.choice(live)
        try:
            next(role)
        except StopIteration:
            live.remove(role)
    return steps


def _cases():
    for panel in (False, True):
        for k_tiles in ((3, 6) if panel else (1, 3, 12)):
            for stages, ring in ((2, 2), (4, 3)) if not panel else ((3, 3),):
                for tiles_m, tiles_n, ctas in ((3, 4, 2), (5, 2, 3), (2, 16, 5), (1, 1, 1)):
                    yield panel, k_tiles, stages, ring, tiles_m, tiles_n, ctas


@pytest.mark.parametrize("panel,k_tiles,stages,ring,tiles_m,tiles_n,ctas", list(_cases()))
def test_protocol_is_deadlock_free_and_reads_the_right_stages(panel, k_tiles, stages, ring, tiles_m, tiles_n, ctas):
    for cta in range(ctas):
        for seed in range(4):
            run_cta(tiles_of(cta, ctas, tiles_m, tiles_n), k_tiles, stages, ring, panel, seed, tiles_n)


@pytest.mark.parametrize("panel", [False, True])
def test_the_model_catches_an_early_release(panel):
    """Releasing before the WGMMAs retired lets the producer / transform overwrite an operand an
    in-flight WGMMA still reads: the model must see it under some schedule."""
    with pytest.raises(AssertionError, match="overwritten|read"):
        for seed in range(50):
            run_cta(tiles_of(0, 1, 2, 4), 6 if panel else 4, 2 if not panel else 3, 2, panel, seed, 4,
                    bug="early_release")


def test_the_model_catches_a_wrong_arrival_count():
    with pytest.raises(AssertionError, match="deadlock"):
        run_cta(tiles_of(0, 1, 1, 2), 2, 2, 2, False, 0, 2, bug="one_transform_arrival")

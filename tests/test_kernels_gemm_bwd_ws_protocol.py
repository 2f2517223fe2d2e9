"""A model of the sm90ws dgrad's barrier protocol (cooperative and ping-pong consumers), run under
random schedules (no GPU, no DSL).

The roles make the same waits, arrivals and smem reads, in the same order, as the role loops of
``cutlass_kernels/gemm/bwd_sm90ws.py`` (keep them in step): the producer fills the TMA ring with
every tile's k-tiles in order; the consumers (cooperative: both warpgroups on every tile, 8 warp
arrivals per empty phase; ping-pong: warpgroup ``w`` takes the CTA's tiles ``w, w + 2, ...``,
advances its ring position over the other's k-tiles, 4 warp arrivals) wait full, issue the
WGMMAs (read at issue and at retire), ``wait_group(1)``, release the previous k-tile's stage, and
after the last k-tile ``wait_group(0)`` and release it.  Checked: no deadlock and every WGMMA reads
the dY and W k-tiles of its own tile.  Tests the protocol's design, not the compiled code.
"""
from __future__ import annotations

import random

import pytest

from test_kernels_gemm_ws_protocol import Ring, tiles_of


def run_cta(tiles, k_tiles, stages, pingpong, seed, bug=""):
    """Simulate one CTA (raises on a violation).  ``bug="no_skip"``: a ping-pong warpgroup does not
    advance over the other's k-tiles (must be caught)."""
    rng = random.Random(seed)
    warps = 4 if pingpong else 8
    ring = Ring(stages, 1, warps)
    pending = []

    def wait(cond):
        while not cond():
            yield

    def producer():
        for i, (m, n) in enumerate(t for t in tiles for _ in range(k_tiles)):
            yield from wait(lambda: ring.can_fill(i))
            pending.append((ring.slot(i)[0], (("dy", m, i % k_tiles), ("w", n, i % k_tiles))))

    def consumer(wg):
        mine = tiles[wg::2] if pingpong else tiles
        pos = wg * k_tiles if pingpong else 0  # the warpgroup's ring position (its pipeline states)
        for m, n in mine:
            inflight = []
            for kt in range(k_tiles):
                i = pos + kt
                yield from wait(lambda: ring.is_full(i))
                want = (("dy", m, kt), ("w", n, kt))
                assert ring.data[ring.slot(i)[0]] == want, f"WGMMA read {ring.data[ring.slot(i)[0]]}, want {want}"
                inflight.append((i, want))
                yield
                while len(inflight) > 1:  # wait_group(1): the previous k-tile's MMAs retire
                    j, w = inflight.pop(0)
                    assert ring.data[ring.slot(j)[0]] == w, "a stage was refilled under a running WGMMA"
                    ring.empty[ring.slot(j)[0]].arrive(warps // (1 if pingpong else 2))
                yield
            j, w = inflight.pop(0)  # wait_group(0), release the last stage
            assert ring.data[ring.slot(j)[0]] == w
            ring.empty[ring.slot(j)[0]].arrive(warps // (1 if pingpong else 2))
            pos += k_tiles * (2 if pingpong and bug != "no_skip" else 1)
            yield  # epilogue

    # cooperative: the two warpgroups each arrive with their 4 warps on every stage
    roles = [producer(), consumer(0), consumer(1)]
    live = list(roles)
    steps = 0
    while live or pending:
        steps += 1
        assert steps < 200000, "no progress: deadlock"
        if pending and rng.random() < 0.3:
            s, value = pending.pop(rng.randrange(len(pending)))
            ring.data[s] = value
            ring.full[s].arrive(1)
            continue
        if not live:
            continue
        role = rng.choice(live)
        try:
            next(role)
        except StopIteration:
            live.remove(role)


@pytest.mark.parametrize("pingpong", [False, True], ids=["cooperative", "ping-pong"])
@pytest.mark.parametrize("k_tiles,stages", [(1, 2), (3, 4), (12, 4), (5, 2)])
@pytest.mark.parametrize("tiles_m,tiles_n,ctas", [(3, 4, 2), (5, 2, 3), (1, 1, 1), (2, 3, 1)])
def test_dgrad_protocol_is_deadlock_free_and_reads_the_right_stages(pingpong, k_tiles, stages, tiles_m, tiles_n,
                                                                     ctas):
    for cta in range(ctas):
        for seed in range(3):
            run_cta(tiles_of(cta, ctas, tiles_m, tiles_n), k_tiles, stages, pingpong, seed)


def test_the_model_catches_a_pingpong_warpgroup_that_does_not_skip():
    with pytest.raises(AssertionError):
        for seed in range(5):
            run_cta(tiles_of(0, 1, 2, 3), 3, 4, True, seed, bug="no_skip")

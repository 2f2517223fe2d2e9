"""Per-role SASS checks of the warp-specialized sm_90a forward (``registry.Variant.role_check``).

Cheap to import (no DSL).  Input: the per-role loop counts of :func:`cutlass_kernels.sass.role_counts`
(one k-tile of each role's main loop, full opcodes) and the variant's fields.  The limits:

* consumer (absent exactly when ``mma=False``): ``BK/16 = 4`` HGMMA per k-tile and at most
  :data:`MAX_CONSUMER_OTHER` other instructions (barrier waits / arrives, descriptor and stage
  bookkeeping);
* transform: no integer division (no I2F / F2I / IMAD.HI, and exactly one MUFU.RCP per element
  -- a MUFU-based divide would add more), and at most :data:`MAX_SLOTS_PER_ELEMENT` instructions
  per element for F (each of the 128 transform threads handles 64 elements per k-tile);
* producer: the two TMA loads (x and W) per k-tile; the resident-panel variant loads x and W in
  loops of their own, one UTMALDG each.

:func:`dgrad_role_failures` checks the sm90ws / sm90wspp dgrad of issue 16 (producer, consumer and
the ``epilogue`` role: no division, one MUFU.RCP per accumulator value, a slot budget).
"""
from __future__ import annotations

from typing import Any

from ..sass import DIVISION_OPCODES

#: Elements of one k-tile per transform thread (128 x 64 / 128).
ELEMENTS_PER_THREAD = 64
#: Issue slots per element in the transform loop's hot path: F itself (issue 15: "at most ~13.5")
#: plus the large-|x| guard of issue 20 (``rational_math.forward_many``: one FMA per element and
#: one test + branch per 8-value vector, measured +1.42).  The guarded exact path is excluded
#: (``sass.rescue_blocks``; it runs only for vectors with huge |x|).
MAX_SLOTS_PER_ELEMENT = 13.5 + 1.5
#: Non-HGMMA instructions the consumer loop may hold per k-tile.
MAX_CONSUMER_OTHER = 96
#: HGMMA per k-tile: bK / 16.
HGMMA_PER_KTILE = 4


def _count(counts: dict[str, int], prefix: str) -> int:
    return sum(n for op, n in counts.items() if op == prefix or op.startswith(prefix + "."))


def slots_per_element(roles: dict[str, dict[str, int]]) -> float:
    """Instructions of one transform k-tile per element."""
    return sum(roles["transform"].values()) / ELEMENTS_PER_THREAD


def role_failures(roles: dict[str, dict[str, int]], fields: dict[str, Any]) -> list[str]:
    """Messages for every role property the SASS misses (empty: the kernel passes)."""
    out = []
    mma, identity = fields.get("mma", True), fields.get("identity", False)
    for role in ("producer", "transform") + (("consumer",) if mma else ()):
        if role not in roles:
            out.append(f"no {role} loop found in the SASS")
    if not mma and "consumer" in roles:
        out.append("a no-MMA variant has an HGMMA loop")
    if "consumer" in roles and mma:
        c = roles["consumer"]
        hgmma = _count(c, "HGMMA")
        other = sum(c.values()) - hgmma
        if hgmma != HGMMA_PER_KTILE:
            out.append(f"consumer loop: {hgmma} HGMMA per k-tile, expected {HGMMA_PER_KTILE}")
        if other > MAX_CONSUMER_OTHER:
            out.append(f"consumer loop: {other} non-HGMMA instructions per k-tile (limit {MAX_CONSUMER_OTHER})")
    if "transform" in roles:
        t = roles["transform"]
        for op in DIVISION_OPCODES:
            if _count(t, op):
                out.append(f"transform loop holds {op} (integer division)")
        rcp = _count(t, "MUFU.RCP")
        want = 0 if identity else ELEMENTS_PER_THREAD
        if rcp != want:
            out.append(f"transform loop: {rcp} MUFU.RCP per k-tile, expected {want} (one per element)")
        slots = slots_per_element(roles)
        if not identity and slots > MAX_SLOTS_PER_ELEMENT:
            out.append(f"transform loop: {slots:.2f} issue slots per element (limit {MAX_SLOTS_PER_ELEMENT})")
    tma = 1 if fields.get("panel", False) else 2
    if "producer" in roles and _count(roles["producer"], "UTMALDG") != tma:
        out.append(f"producer loop: {_count(roles['producer'], 'UTMALDG')} UTMALDG per k-tile, expected {tma}")
    return out


# ---------------------------------------------------------------- the sm90ws dgrad (issue 16)
#: Accumulator values per consumer thread and tile (64 x 128 fp32 per warpgroup / 128 threads).
DGRAD_ELEMENTS_PER_THREAD = 64
#: UTMALDG per k-tile of the dgrad's producer: dY (K-major, one box) + W^T (MN-major 128 x 64:
#: two 64-wide boxes of the 128-byte swizzle).
DGRAD_TMA_PER_KTILE = 3
#: Issue slots per accumulator value in the dgrad's epilogue (dx, 10 partials, F, stores); the
#: cost model's design estimate was ~99, the bf16 form-A build reads ~90.
MAX_EPILOGUE_SLOTS_PER_ELEMENT = 100.0


def epilogue_slots_per_element(roles: dict[str, dict[str, int]]) -> float:
    """Instructions of the dgrad's per-tile epilogue per accumulator value of a thread."""
    return sum(roles["epilogue"].values()) / DGRAD_ELEMENTS_PER_THREAD


def dgrad_role_failures(roles: dict[str, dict[str, int]], fields: dict[str, Any]) -> list[str]:
    """The sm90ws dgrad's per-role SASS check: HGMMA in the consumer k-loop (4 per k-tile), the
    producer's TMA loads, and an epilogue with exactly one MUFU.RCP per accumulator value, no
    integer division and at most :data:`MAX_EPILOGUE_SLOTS_PER_ELEMENT` slots per value."""
    out = [f"no {r} loop found in the SASS" for r in ("producer", "consumer", "epilogue") if r not in roles]
    if "consumer" in roles:
        c = roles["consumer"]
        hgmma = _count(c, "HGMMA")
        if hgmma != HGMMA_PER_KTILE:
            out.append(f"consumer loop: {hgmma} HGMMA per k-tile, expected {HGMMA_PER_KTILE}")
        if sum(c.values()) - hgmma > MAX_CONSUMER_OTHER:
            out.append(f"consumer loop: {sum(c.values()) - hgmma} non-HGMMA instructions per k-tile "
                       f"(limit {MAX_CONSUMER_OTHER})")
    if "producer" in roles and _count(roles["producer"], "UTMALDG") != DGRAD_TMA_PER_KTILE:
        out.append(f"producer loop: {_count(roles['producer'], 'UTMALDG')} UTMALDG per k-tile, "
                   f"expected {DGRAD_TMA_PER_KTILE}")
    if "epilogue" in roles:
        e = roles["epilogue"]
        for op in DIVISION_OPCODES:
            if _count(e, op):
                out.append(f"epilogue holds {op} (integer division)")
        rcp = _count(e, "MUFU.RCP")
        if rcp != DGRAD_ELEMENTS_PER_THREAD:
            out.append(f"epilogue: {rcp} MUFU.RCP per tile, expected {DGRAD_ELEMENTS_PER_THREAD} (one per value)")
        if _count(e, "HGMMA"):
            out.append("epilogue holds HGMMA (the k-loop was not separated)")
        slots = epilogue_slots_per_element(roles)
        if slots > MAX_EPILOGUE_SLOTS_PER_ELEMENT:
            out.append(f"epilogue: {slots:.1f} issue slots per value (limit {MAX_EPILOGUE_SLOTS_PER_ELEMENT})")
    return out

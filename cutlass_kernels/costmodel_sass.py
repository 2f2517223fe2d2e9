"""SASS inputs of the static cycle model (:mod:`cutlass_kernels.costmodel`): where the loop is and
how many issue slots each part of a kernel takes per warp.

* :func:`parse` reads a ``cuobjdump -sass`` listing into ``(address, opcode)`` records.
* :func:`profile` finds the main loop (a backward branch; of the loops holding ``HGMMA`` the
  longest, else the longest loop) and splits the kernel into

  - ``loop``: the loop body as one consumer warp issues it per iteration (each instruction once;
    inline spin-waits count one pass),
  - ``producer``: the part of the loop body that only the TMA-issuing warp runs (the smallest
    forward-branch region holding ``UTMALDG``), issued once per CTA per iteration,
  - ``prologue`` (before the loop) and ``epilogue`` (after it, up to the last ``EXIT``; the
    out-of-line spin-wait blocks behind it are not counted), each once per warp per tile.

* :func:`smsp_cycles` turns an opcode :class:`~collections.Counter` into cycles of one SM
  sub-partition (SMSP): one warp-instruction issued per clock, bounded below by the pipe that the
  mix saturates (Hopper/Ampere pipe widths per SMSP: FP32 32 lanes, IMAD and INT/logic 16 lanes,
  MUFU 4 lanes, so a warp instruction holds its pipe 1, 2, 2 and 8 clocks).
* :func:`variant_sass` compiles a registered variant with fake tensors (through the build's cache,
  so only the first call compiles) and returns its disassembly; :func:`find_variants` looks
  variants up by name prefix (e.g. the warp-specialized ``rational_gemm_fwd_sm90ws_`` family).

No DSL import at module level; only :func:`variant_sass` compiles.
"""
from __future__ import annotations

import collections
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

_LINE_RE = re.compile(r"/\*([0-9a-f]{4,})\*/\s+(@!?U?P[T0-9]+\s+)?([A-Z][A-Z0-9_]*(?:\.[A-Za-z0-9_]+)*)([^;]*);")
_BRA_RE = re.compile(r"^\s*(0x[0-9a-f]+|`?\(?\.L_x_\d+\)?`?)")

#: Clocks a warp instruction holds its pipe on one SMSP (32 threads / lanes per SMSP).
PIPE_CLOCKS = {"fp32": 1.0, "imad": 2.0, "alu": 2.0, "mufu": 8.0}
_FP32 = {"FFMA", "FMUL", "FADD", "FMNMX", "FSEL", "FSETP", "FMUL2", "FFMA2"}
_ALU = {"IADD3", "LOP3", "SHF", "ISETP", "SEL", "PRMT", "IABS", "VIMNMX", "LEA", "MOV", "F2FP", "I2F",
        "F2I", "VIADD", "IMNMX", "FLO", "POPC", "BREV", "PLOP3", "P2R", "R2P", "I2FP", "F2F", "HADD2", "HFMA2",
        "HMUL2"}


@dataclass(frozen=True)
class Instr:
    """One SASS instruction: byte address, full opcode (``HGMMA.64x256x16.F32.BF16``), operands."""

    addr: int
    op: str
    operands: str
    predicated: bool

    @property
    def base(self) -> str:
        return self.op.split(".", 1)[0]


@dataclass(frozen=True)
class KernelProfile:
    """Per-warp opcode counts of a kernel's parts (see the module docstring)."""

    loop: collections.Counter
    producer: collections.Counter
    prologue: collections.Counter
    epilogue: collections.Counter
    loop_span: tuple[int, int]  # byte addresses of the loop's first instruction and its back branch


def parse(sass: str) -> list[Instr]:
    """Instructions of the first kernel function in a ``cuobjdump -sass`` listing, in order."""
    out: list[Instr] = []
    for addr, pred, op, operands in _LINE_RE.findall(sass):
        a = int(addr, 16)
        if out and a <= out[-1].addr:  # the next function starts over at 0
            break
        out.append(Instr(a, op, operands.strip(), bool(pred)))
    if not out:
        raise ValueError("no SASS instructions found (expected `cuobjdump -sass` output)")
    return out


def _branch_target(ins: Instr) -> Optional[int]:
    if ins.base != "BRA":
        return None
    m = re.match(r"^\s*(0x[0-9a-f]+)", ins.operands)
    return int(m.group(1), 16) if m else None


def loops(instrs: list[Instr]) -> list[tuple[int, int]]:
    """``(first index, back-branch index)`` of every backward branch (a loop), in address order.

    Branches behind the last ``EXIT`` (out-of-line spin-wait blocks jumping back) are not loops.
    """
    index = {ins.addr: i for i, ins in enumerate(instrs)}
    exits = [i for i, ins in enumerate(instrs) if ins.base == "EXIT"]
    last = exits[-1] if exits else len(instrs) - 1
    out = []
    for i, ins in enumerate(instrs[: last + 1]):  # behind the last EXIT: out-of-line spin-waits
        t = _branch_target(ins)
        if t is not None and t < ins.addr and t in index:
            out.append((index[t], i))
    return out


def main_loop(instrs: list[Instr]) -> tuple[int, int]:
    """The longest loop holding an ``HGMMA``/``HMMA``, else the longest loop; ValueError if none."""
    found = loops(instrs)
    if not found:
        raise ValueError("the kernel has no loop (no backward branch)")
    mma = [lp for lp in found if any(instrs[j].base in ("HGMMA", "HMMA") for j in range(lp[0], lp[1] + 1))]
    return max(mma or found, key=lambda lp: lp[1] - lp[0])


def _producer_indices(instrs: list[Instr], lo: int, hi: int) -> set[int]:
    """Indices of the smallest forward-branch region inside ``[lo, hi]`` that holds a ``UTMALDG``."""
    index = {ins.addr: i for i, ins in enumerate(instrs)}
    best: Optional[tuple[int, int]] = None
    for i in range(lo, hi + 1):
        t = _branch_target(instrs[i])
        if t is None or t <= instrs[i].addr or t not in index or index[t] > hi + 1:
            continue
        region = (i + 1, index[t])
        if any(instrs[j].base == "UTMALDG" for j in range(*region)):
            if best is None or region[1] - region[0] < best[1] - best[0]:
                best = region
    return set(range(*best)) if best else set()


def profile(sass: str) -> KernelProfile:
    """Split the kernel at its main loop and count opcodes per part (see the module docstring)."""
    instrs = parse(sass)
    lo, hi = main_loop(instrs)
    producer = _producer_indices(instrs, lo, hi)
    exits = [i for i, ins in enumerate(instrs) if ins.base == "EXIT"]
    end = exits[-1] if exits else len(instrs) - 1

    def count(idx) -> collections.Counter:
        return collections.Counter(instrs[i].base for i in idx)

    return KernelProfile(
        loop=count(i for i in range(lo, hi + 1) if i not in producer),
        producer=count(sorted(producer)),
        prologue=count(range(0, lo)),
        epilogue=count(range(hi + 1, end + 1)),
        loop_span=(instrs[lo].addr, instrs[hi].addr),
    )


def pipe_clocks(counts: collections.Counter) -> dict[str, float]:
    """Clocks one SMSP needs for ``counts`` warp instructions: ``issue`` and each pipe's occupancy."""
    fp32 = sum(c for op, c in counts.items() if op in _FP32)
    imad = sum(c for op, c in counts.items() if op == "IMAD")
    alu = sum(c for op, c in counts.items() if op in _ALU)
    return {
        "issue": float(sum(counts.values())),
        # FP32 runs on both FMA pipes (32 lanes), IMAD on the heavy one only (16 lanes)
        "fp32": max(fp32 + imad, PIPE_CLOCKS["imad"] * imad) * PIPE_CLOCKS["fp32"],
        "alu": PIPE_CLOCKS["alu"] * alu,
        "mufu": PIPE_CLOCKS["mufu"] * counts.get("MUFU", 0),
    }


def smsp_cycles(counts: collections.Counter) -> float:
    """Lower bound on the clocks of ``counts`` on one SMSP: the busier of issue and any one pipe."""
    return max(pipe_clocks(counts).values())


def transform_slots(loop: collections.Counter) -> collections.Counter:
    """The part of a transform loop that *is* F: FP32 math, MUFU, bf16/fp16 <-> fp32 conversion.

    The rest of the loop (integer index math, coefficient reloads, ldmatrix, MMA issue, barriers)
    is overhead that a dedicated transform warp need not pay per element.
    """
    keep = _FP32 | {"MUFU", "F2FP", "PRMT", "HADD2", "HFMA2", "HMUL2", "F2F"}
    return collections.Counter({op: c for op, c in loop.items() if op in keep})


# ------------------------------------------------------------------------------------------------
# compiled variants (through the build's cache)
# ------------------------------------------------------------------------------------------------
def find_variants(prefix: str) -> list[str]:
    """Names of registered variants starting with ``prefix`` (empty when none is registered)."""
    from .registry import all_variants

    variants, _ = all_variants()
    return sorted(v.name for v in variants if v.name.startswith(prefix))


def variant_sass(name: str, arch: str = "sm_90a", cache_dir: Optional[str] = None) -> str:
    """Disassembly of registered variant ``name`` compiled for ``arch`` (compiled once, then cached).

    Raises KeyError for an unknown name and RuntimeError if the build fails.
    """
    from . import build, sass
    from .cache import CompileCache

    from .registry import all_variants

    variants, _ = all_variants()
    match = [v for v in variants if v.name == name]
    if not match:
        raise KeyError(f"no registered kernel variant named {name!r}")
    variant = match[0]
    root = str(cache_dir or CompileCache().root)
    row = build.build_one(variant, arch, root)
    if not row["ok"]:
        raise RuntimeError(f"building {name} for {arch} failed: {'; '.join(row['errors'])}")
    entry = CompileCache(root).entry_path(build.cache_key(variant, arch))
    return sass.sass_text(Path(entry) / "kernel.cubin")


def elementwise_loops(instrs: list[Instr]) -> list[tuple[int, int]]:
    """The loops of an elementwise rational kernel that evaluate F, in address order: the hot pass
    first, then the exact pass that only threads which met a huge |x| run
    (``cutlass_kernels.rational_elementwise``); ValueError if there is none.  A loop evaluates F
    if it holds an unpredicated ``MUFU.RCP``."""
    found = [lp for lp in loops(instrs)
             if any(instrs[j].op.startswith("MUFU.RCP") and not instrs[j].predicated for j in range(lp[0], lp[1] + 1))]
    if not found:
        raise ValueError("no loop with an unpredicated MUFU.RCP: not an elementwise rational kernel")
    return sorted(found)


def elementwise_slots(sass: str) -> float:
    """Issue slots per element of an elementwise kernel's hot loop (the first of
    :func:`elementwise_loops`), on the path every element takes.

    Elements are counted by their reciprocal: one unpredicated ``MUFU.RCP`` each.  The large-|x|
    exact path of ``rational_math`` is left out where it is a real branch (its blocks, found by
    :func:`cutlass_kernels.sass.rescue_blocks`, run only for huge |x|) and counted where ptxas
    predicated it into the loop (it is issued for every element then); its own, predicated
    reciprocals are not elements.
    """
    from . import sass as _sass

    instrs = parse(sass)
    lo, hi = elementwise_loops(instrs)[0]
    body = [(ins.addr, ins.predicated, ins.op, ins.operands) for ins in instrs[lo:hi + 1]]
    cold = _sass.rescue_blocks(body)
    hot = [b for i, b in enumerate(body) if i not in cold]
    elems = sum(1 for _, pred, op, _ in hot if op.startswith("MUFU.RCP") and not pred)
    if elems == 0:
        raise ValueError("no unpredicated MUFU.RCP in the main loop: not an elementwise rational kernel")
    return len(hot) / elems

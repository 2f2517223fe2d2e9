"""Inspect a cubin: registers, local memory (where spills go) and SASS opcode counts.

Uses ``cuobjdump`` (PyPI ``nvidia-cuda-cuobjdump``, or one on PATH) — works offline, no GPU.
``spills`` is the per-thread LOCAL memory of the kernel as the cubin records it: register spills
land there (and so would local arrays, which our kernels do not use), so a non-zero value is
treated as a spill.  The SASS counts also show ``STL``/``LDL`` (local stores/loads) explicitly.

:func:`role_counts` splits a warp-specialized kernel's SASS by role (producer / transform /
consumer main loops, one k-tile each) for the build check and the cost model.
"""
from __future__ import annotations

import collections
import importlib.util
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Optional

_RES_RE = re.compile(r"Function\s+(\S+):\s*\n\s*REG:(\d+)\s+STACK:(\d+)\s+SHARED:(\d+)\s+LOCAL:(\d+)")
# e.g. "        /*0090*/                   @!P0 LDG.E.128 R4, desc[UR4][R2.64] ;"
_SASS_RE = re.compile(r"/\*[0-9a-f]{4,}\*/\s+(?:@!?U?P[T0-9]+\s+)?([A-Z][A-Z0-9_]*)((?:\.[A-Z0-9_]+)*)")


def find_tool(name: str) -> Optional[str]:
    """Path of a CUDA binary tool: the PyPI ``nvidia`` packages' ``bin`` dirs first, then PATH."""
    spec = importlib.util.find_spec("nvidia")
    for base in list(spec.submodule_search_locations or []) if spec else []:
        for sub in sorted(os.listdir(base)) if os.path.isdir(base) else []:
            cand = os.path.join(base, sub, "bin", name)
            if os.path.isfile(cand) and os.access(cand, os.X_OK):
                return cand
    return shutil.which(name)


def _cuobjdump() -> str:
    tool = find_tool("cuobjdump")
    if tool is None:
        raise FileNotFoundError("cuobjdump not found: pip install nvidia-cuda-cuobjdump")
    return tool


def resource_usage(cubin: Path) -> dict[str, dict[str, int]]:
    """Per kernel function in the cubin: ``{"registers", "stack", "shared", "local"}``."""
    out = subprocess.run([_cuobjdump(), "-res-usage", str(cubin)], capture_output=True, text=True, check=True)
    res = {}
    for name, reg, stack, shared, local in _RES_RE.findall(out.stdout):
        res[name] = {"registers": int(reg), "stack": int(stack), "shared": int(shared), "local": int(local)}
    if not res:
        raise RuntimeError(f"cuobjdump -res-usage found no kernel in {cubin}:\n{out.stdout}{out.stderr}")
    return res


def sass_text(cubin: Path) -> str:
    """Disassembly of every kernel in the cubin."""
    out = subprocess.run([_cuobjdump(), "-sass", str(cubin)], capture_output=True, text=True, check=True)
    return out.stdout


def opcode_counts(sass: str) -> dict[str, int]:
    """Counts of base opcodes (``LDG.E.128 -> LDG``, ``HMMA.16816.F32 -> HMMA``) in a disassembly."""
    counts: collections.Counter[str] = collections.Counter()
    for base, _mods in _SASS_RE.findall(sass):
        counts[base] += 1
    return dict(sorted(counts.items()))


def full_opcode_counts(sass: str) -> dict[str, int]:
    """Counts of full opcodes with modifiers (``LDG.E.128``) — e.g. to check vector widths."""
    counts: collections.Counter[str] = collections.Counter()
    for base, mods in _SASS_RE.findall(sass):
        counts[base + mods] += 1
    return dict(sorted(counts.items()))


def inspect_cubin(cubin: Path) -> dict:
    """``{"registers", "spills", "local", "stack", "shared", "sass", "sass_full", "functions"}``.

    With several kernels in one cubin, registers/spills are the maxima over them.
    """
    usage = resource_usage(cubin)
    text = sass_text(cubin)
    return {
        "registers": max(u["registers"] for u in usage.values()),
        "spills": max(u["local"] for u in usage.values()),
        "stack": max(u["stack"] for u in usage.values()),
        "shared": max(u["shared"] for u in usage.values()),
        "sass": opcode_counts(text),
        "sass_full": full_opcode_counts(text),
        "functions": sorted(usage),
    }


# ---------------------------------------------------------------------------- per-role SASS (issue 15)
# e.g. "        /*1b30*/              @!P0 BRA 0x9ca0 ;"  (address, predicate, opcode+modifiers, operands)
_INSN_RE = re.compile(r"/\*([0-9a-f]{4,})\*/\s+(@!?U?P[T0-9]+\s+)?([A-Z][A-Z0-9_]*(?:\.[A-Za-z0-9_]+)*)([^;]*);")
_BRA_TARGET_RE = re.compile(r"0x([0-9a-f]+)")

#: Which instruction marks which role's main loop (the smallest loop that holds one).  The transform
#: of an F = identity variant has no MUFU.RCP: its loop is the smallest one with a shared store that
#: holds no HGMMA.
ROLE_MARKERS: dict[str, str] = {"producer": "UTMALDG", "transform": "MUFU.RCP", "consumer": "HGMMA"}


def instructions(sass: str) -> list[tuple[int, bool, str, str]]:
    """``(address, predicated, opcode with modifiers, operands)`` of every instruction, in order."""
    return [(int(a, 16), bool(p), op, args.strip()) for a, p, op, args in _INSN_RE.findall(sass)]


def loops(insns: list[tuple[int, bool, str, str]]) -> list[tuple[int, int]]:
    """Index ranges ``[first, last]`` of the loops of the main body: one per backward ``BRA``.

    Branches placed after the function's last unpredicated ``EXIT`` are ignored: ptxas puts the
    retry stubs of mbarrier waits there, and their jump back into a loop is not a loop."""
    exits = [i for i, (_, pred, op, _) in enumerate(insns) if op == "EXIT" and not pred]
    end = exits[-1] if exits else len(insns)
    index = {addr: i for i, (addr, *_rest) in enumerate(insns)}
    out = []
    for i, (addr, _pred, op, args) in enumerate(insns[:end]):
        if op.split(".")[0] != "BRA":
            continue
        m = _BRA_TARGET_RE.search(args)
        if m and int(m.group(1), 16) < addr and int(m.group(1), 16) in index:
            out.append((index[int(m.group(1), 16)], i))
    return out


def _has(insns: list, first: int, last: int, prefix: str) -> bool:
    return any(op == prefix or op.startswith(prefix + ".") for _, _, op, _ in insns[first:last + 1])


_IMM_RE = re.compile(r"^(0x[0-9a-fA-F]+|[0-9]+)$")


def counted_op(op: str, args: str) -> str:
    """The opcode as the role counts record it: ``op``, except that an ``IMAD.HI`` whose multiplier
    is an immediate power of two becomes ``IMAD.SHL...`` (same modifiers).  That instruction is the
    high word of a left shift -- ptxas's 64-bit address arithmetic for an index times 2^k -- not a
    division: a division by a constant multiplies by a magic number (``0xcccccccd`` for /10), a
    runtime division goes through I2F / MUFU.RCP, and those stay in :data:`DIVISION_OPCODES`."""
    if op.startswith("IMAD.HI"):
        operands = [a.strip() for a in args.split(",")]
        if len(operands) >= 3 and _IMM_RE.match(operands[2]):
            value = int(operands[2], 0)
            if value > 0 and value & (value - 1) == 0:
                return "IMAD.SHL" + op[len("IMAD.HI"):]
    return op


def role_counts(sass: str) -> dict[str, collections.Counter]:
    """Full-opcode counts of each role's main loop body in a warp-specialized kernel's SASS.

    Returns ``{"producer": Counter, "transform": Counter, "consumer": Counter, "epilogue": Counter}``
    (a role absent from the kernel, e.g. the consumer of a ``_nomma`` variant, is left out;
    "epilogue" is the consumers' tile loop minus their k-loop, see :func:`_epilogue_range`).  A role's loop is
    the smallest backward-branch loop (:func:`loops`) holding its marker (:data:`ROLE_MARKERS`);
    for an F = identity transform, the smallest loop with an ``STS`` and no ``HGMMA``.  The counts
    are static instructions of one iteration of that loop -- one k-tile -- including any small
    loop nested in it (e.g. the transform's group-advance loop) once.  Keys are full opcodes
    (``HGMMA.64x192x16.F32.BF16``, ``LDS.128``); use :func:`base_counts` to fold modifiers.
    """
    insns = instructions(sass)
    found = loops(insns)
    out: dict[str, collections.Counter] = {}
    for role, marker in ROLE_MARKERS.items():
        cands = [(b - a, a, b) for a, b in found if _has(insns, a, b, marker)]
        if not cands and role == "transform":
            cands = [(b - a, a, b) for a, b in found
                     if _has(insns, a, b, "STS") and not _has(insns, a, b, "HGMMA") and not _has(insns, a, b, "UTMALDG")]
        if cands:
            _, a, b = min(cands)
            body = insns[a:b + 1]
            if role == "transform":
                cold = rescue_blocks(body)
                if cold:
                    out["transform_rescue"] = collections.Counter(
                        counted_op(op, args) for i, (_, _, op, args) in enumerate(body) if i in cold)
                    body = [ins for i, ins in enumerate(body) if i not in cold]
            out[role] = collections.Counter(counted_op(op, args) for _, _, op, args in body)
    epi = _epilogue_range(insns, found)
    if epi is not None:
        (a, b), (ca, cb) = epi
        body = [ins for i, ins in enumerate(insns[a:b + 1], a) if not ca <= i <= cb]
        cold = rescue_blocks(body)  # the large-|x| exact path, where it is a real branch
        if cold:
            out["epilogue_rescue"] = collections.Counter(
                counted_op(op, args) for i, (_, _, op, args) in enumerate(body) if i in cold)
        out["epilogue"] = collections.Counter(counted_op(op, args) for i, (_, _, op, args) in enumerate(body)
                                              if i not in cold)
    return out


def elementwise_passes(sass: str) -> dict[str, collections.Counter]:
    """The two passes of an elementwise rational kernel (``cutlass_kernels.rational_elementwise``):
    ``{"hot": Counter, "exact": Counter}``, the full-opcode counts of one iteration of its hot loop
    (every element) and of its exact loop (only threads that met a huge |x|): the loops holding an
    unpredicated ``MUFU.RCP``, in address order (a kernel with one such loop has no "exact").
    Predicated instructions are counted under ``"@" + opcode``: a predicated ``MUFU.RCP`` in the hot
    loop is an exact path that ptxas if-converted into it, issued for every element."""
    insns = instructions(sass)
    found = sorted(lp for lp in loops(insns)
                   if any(op.startswith("MUFU.RCP") and not pred for _, pred, op, _ in insns[lp[0]:lp[1] + 1]))
    out: dict[str, collections.Counter] = {}
    for role, (a, b) in zip(("hot", "exact"), found):
        out[role] = collections.Counter(("@" if pred else "") + op for _, pred, op, _ in insns[a:b + 1])
    return out


def rescue_blocks(body: list[tuple[int, bool, str, str]]) -> set[int]:
    """Indices (into ``body``) of the large-|x| rescue blocks of a transform loop.

    ``rational_math.forward_many`` guards its exact per-element path with one branch per vector;
    in SASS that is a predicated forward ``BRA`` jumping over a block that holds ``MUFU.RCP`` (the
    1/x evaluation), while the hot path keeps its own ``MUFU.RCP`` outside such blocks.  Those
    blocks run only for vectors with huge |x|, so the per-element budget excludes them (the caller
    reports them separately).  Only blocks jumped over by a predicated branch count; nothing is
    excluded if no ``MUFU.RCP`` would be left outside them.
    """
    addr_index = {addr: i for i, (addr, _, _, _) in enumerate(body)}
    cold: set[int] = set()
    for i, (_, pred, op, args) in enumerate(body):
        if op != "BRA" or not pred:
            continue
        m = _BRA_TARGET_RE.search(args)
        j = addr_index.get(int(m.group(1), 16)) if m else None
        if j is None or j <= i + 1:
            continue
        if any(body[k][2].startswith("MUFU.RCP") for k in range(i + 1, j)):
            cold.update(range(i + 1, j))
    hot_rcp = any(op.startswith("MUFU.RCP") for k, (_, _, op, _) in enumerate(body) if k not in cold)
    return cold if hot_rcp else set()


def _epilogue_range(insns: list, found: list[tuple[int, int]]
                    ) -> Optional[tuple[tuple[int, int], tuple[int, int]]]:
    """``(tile loop, consumer k-loop)`` index ranges: the tile loop is the smallest loop that
    strictly contains the consumer's main loop (the smallest one with an HGMMA) and stores to
    global memory (``STG``); its instructions outside the k-loop are the per-tile epilogue (plus
    the tile bookkeeping).  None when there is no such loop."""
    mma = [(b - a, a, b) for a, b in found if _has(insns, a, b, "HGMMA")]
    if not mma:
        return None
    _, ca, cb = min(mma)
    outer = [(b - a, a, b) for a, b in found if a <= ca and cb <= b and (a, b) != (ca, cb)
             and any(op.startswith("STG") for i, (_, _, op, _) in enumerate(insns[a:b + 1], a) if not ca <= i <= cb)]
    if not outer:
        return None
    _, a, b = min(outer)
    return (a, b), (ca, cb)


def base_counts(counts: collections.Counter) -> collections.Counter:
    """Fold modifiers: ``{"LDS.128": 2, "LDS": 1} -> {"LDS": 3}``."""
    out: collections.Counter = collections.Counter()
    for op, c in counts.items():
        out[op.split(".")[0]] += c
    return out


#: Opcodes that make an integer division (or its float-reciprocal emulation) in a loop body.
DIVISION_OPCODES: tuple[str, ...] = ("I2F", "F2I", "IMAD.HI", "I2FP")

"""Inspect a cubin: registers, local memory (where spills go) and SASS opcode counts.

Uses ``cuobjdump`` (PyPI ``nvidia-cuda-cuobjdump``, or one on PATH) — works offline, no GPU.
``spills`` is the per-thread LOCAL memory of the kernel as the cubin records it: register spills
land there (and so would local arrays, which our kernels do not use), so a non-zero value is
treated as a spill.  The SASS counts also show ``STL``/``LDL`` (local stores/loads) explicitly.
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

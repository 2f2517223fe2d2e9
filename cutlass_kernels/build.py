"""Compile-only build check: compile every registered kernel variant for the given arches, with
fake tensors and no GPU, inspect each cubin and fail on compile errors, spills or missing
instructions.  This is the kernels' CI on GPU-less machines.

    python -m cutlass_kernels.build --arch sm_80,sm_90a --check [--json PATH] [--jobs 2]
        [--filter SUBSTR] [--cache-dir DIR | --no-cache] [--list]

Rows (printed as a table, written as JSON with ``--json``)::

    {"kernel", "arch", "registers", "spills", "sass": {"LDG": n, "HMMA": n, ...}, "seconds",
     "cached", "ok", "errors": [...], "expect": {...}, "sass_full": {...}[, "roles": {...}]}

``roles`` (variants with a ``role_check``, e.g. the warp-specialized sm90ws forward): the full-opcode
counts of each role's main loop, ``{"producer"|"transform"|"consumer": {opcode: n}}``
(:func:`cutlass_kernels.sass.role_counts`), checked by the variant's own function.

``seconds`` is the compile time when the entry was built (also for cache hits, read from the
entry); ``cached`` says whether this run reused it.  Exit status 1 when ``--check`` and any row
is not ok, 2 on bad arguments.
"""
from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import multiprocessing
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Optional

from fusedkat.files import OutputError, atomic_write_text, check_writable  # stdlib only: no fusedkat.app

from .arch import DEFAULT_BUILD_ARCHES, normalize_arch
from .cache import CompileCache, dsl_version, make_key, source_fingerprint
from .registry import Variant, all_variants, role_check_failures, sass_expectation_failures


def _build_entry(variant: Variant, arch: str, out_dir: Path) -> dict:
    """Compile ``variant`` for ``arch`` into ``out_dir``; return the inspection metadata."""
    from . import dsl, sass  # DSL import happens here, in the worker

    fn = variant.compile_function()
    t0 = time.perf_counter()
    compiled = fn(arch=arch, options=dsl.compile_options(arch, out_dir / "dump"), **variant.kwargs_dict)
    seconds = time.perf_counter() - t0
    cubin_path = out_dir / "kernel.cubin"
    cubin_path.write_bytes(dsl.compiled_cubin(compiled))
    ptx = dsl.compiled_ptx(compiled)
    if ptx:
        (out_dir / "kernel.ptx").write_text(ptx)
    info = sass.inspect_cubin(cubin_path)
    if variant.role_check:
        info["roles"] = _roles(cubin_path, variant)
    info.update(seconds=round(seconds, 3), kernel=variant.name, arch=arch, dsl_version=dsl_version())
    return info


def _roles(cubin: Path, variant: Variant) -> dict[str, dict[str, int]]:
    import importlib

    from . import sass

    mod, fn = variant.role_counter.split(":")
    counts = getattr(importlib.import_module(mod), fn)(sass.sass_text(cubin))
    return {role: dict(sorted(c.items())) for role, c in counts.items()}


def cache_key(variant: Variant, arch: str) -> str:
    """The compile-cache key of ``(variant, arch)``: name, target, kwargs, arch, sources, DSL version."""
    return make_key("build", variant.name, variant.target, variant.kwargs, arch,
                    source_fingerprint(variant.fingerprint_modules()), dsl_version())


def build_one(variant: Variant, arch: str, cache_dir: Optional[str]) -> dict:
    """Build (or reuse) one (variant, arch) and return its row; never raises."""
    row: dict = {"kernel": variant.name, "arch": arch, "registers": None, "spills": None, "sass": {},
                 "seconds": None, "cached": False, "ok": False, "errors": [], "expect": dict(variant.expect_sass)}
    t0 = time.perf_counter()
    try:
        key = cache_key(variant, arch)
        if cache_dir is None:
            with tempfile.TemporaryDirectory(prefix="fusedkat-build-") as tmp:
                meta = _build_entry(variant, arch, Path(tmp))
            hit = False
        else:
            entry, meta, hit = CompileCache(cache_dir).get_or_build(key, lambda d: _build_entry(variant, arch, d))
            if variant.role_check and "roles" not in meta:  # an entry built before the role check
                meta = {**meta, "roles": _roles(entry / "kernel.cubin", variant)}
        row.update(registers=meta["registers"], spills=meta["spills"], sass=meta["sass"],
                   sass_full=meta["sass_full"], seconds=meta["seconds"], cached=hit)
        if meta["spills"]:
            row["errors"].append(f"{meta['spills']} bytes of local memory per thread (register spills)")
        if meta.get("stack"):  # ptxas parks values on the stack (STL/LDL) without calling it a spill
            row["errors"].append(f"{meta['stack']} bytes of stack per thread (values spilled to the stack)")
        row["errors"].extend(sass_expectation_failures(variant.expect_sass, meta["sass_full"]))
        if variant.role_check:
            row["roles"] = meta["roles"]
            row["errors"].extend(role_check_failures(variant, meta["roles"]))
    except Exception as e:  # a compile failure is a row, not a crash of the whole check
        row["errors"].append(f"{type(e).__name__}: {e}".strip()[:2000])
        row["traceback"] = traceback.format_exc()[-4000:]
        row["seconds"] = round(time.perf_counter() - t0, 3)
    row["ok"] = not row["errors"]
    return row


def run_build(variants: list[Variant], arches: list[str], jobs: int, cache_dir: Optional[str]) -> list[dict]:
    """Build every (variant, arch) the variant supports, in ``jobs`` spawned processes."""
    work = [(v, a) for v in variants for a in arches if a in v.arches]
    if jobs <= 1 or len(work) <= 1:
        return [build_one(v, a, cache_dir) for v, a in work]
    # spawn: workers start clean (no inherited DSL/MLIR state); each imports the DSL once.
    ctx = multiprocessing.get_context("spawn")
    with cf.ProcessPoolExecutor(max_workers=jobs, mp_context=ctx) as pool:
        return list(pool.map(build_one, [v for v, _ in work], [a for _, a in work], [cache_dir] * len(work)))


def format_table(rows: list[dict]) -> str:
    """Fixed-width table of the rows (one line each)."""
    w = max([len(r["kernel"]) for r in rows] + [6])
    lines = [f"{'kernel':<{w}}  {'arch':<7} {'regs':>4} {'spill':>5} {'sec':>6}  {'ok':<4} key instructions / errors"]
    for r in rows:
        keys = ("HGMMA", "HMMA", "LDG", "STG", "MUFU", "LDL", "STL")
        ins = " ".join(f"{k}={r['sass'][k]}" for k in keys if r["sass"].get(k))
        if r.get("roles"):  # per-role loop sizes (instructions per k-tile)
            ins += " loops:" + ",".join(f"{role}={sum(c.values())}" for role, c in sorted(r["roles"].items()))
        note = "; ".join(r["errors"]) if r["errors"] else ins
        sec = f"{r['seconds']:.2f}" if r["seconds"] is not None else "-"
        regs = r["registers"] if r["registers"] is not None else "-"
        spills = r["spills"] if r["spills"] is not None else "-"
        lines.append(f"{r['kernel']:<{w}}  {r['arch']:<7} {regs:>4} {spills:>5} {sec:>6}  "
                     f"{'ok' if r['ok'] else 'FAIL':<4} {note}{' (cached)' if r['cached'] else ''}")
    return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m cutlass_kernels.build", description=__doc__.split("\n\n")[0])
    p.add_argument("--arch", default=",".join(DEFAULT_BUILD_ARCHES), help="comma-separated, e.g. sm_80,sm_90a")
    p.add_argument("--check", action="store_true", help="exit 1 on any compile failure, spill or missing instruction")
    p.add_argument("--json", metavar="PATH", help="write the rows as JSON")
    p.add_argument("--jobs", type=int, default=2, help="worker processes (default 2)")
    p.add_argument("--filter", default="", help="only variants whose name contains this")
    p.add_argument("--cache-dir", default=None, help="compile cache dir (default: $FUSEDKAT_CACHE_DIR or ~/.cache)")
    p.add_argument("--no-cache", action="store_true", help="compile everything afresh, keep nothing")
    p.add_argument("--list", action="store_true", help="list the variants and exit")
    args = p.parse_args(argv)
    if args.json:
        try:  # before the builds, not after them
            Path(args.json).parent.mkdir(parents=True, exist_ok=True)
            check_writable(args.json, what="--json file")
        except (OSError, OutputError) as e:
            p.error(str(e))
    try:
        arches = [normalize_arch(a) for a in args.arch.split(",") if a.strip()]
    except ValueError as e:
        p.error(str(e))
    variants, skipped = all_variants()
    variants = [v for v in variants if args.filter in v.name]
    for s in skipped:
        print(f"note: variant module {s} not present, skipped", file=sys.stderr)
    if args.list:
        for v in variants:
            print(f"{v.name}  arches={','.join(v.arches)}  target={v.target}")
        return 0
    if not variants:
        print("no kernel variants matched", file=sys.stderr)
        return 1 if args.check else 0
    cache_dir = None if args.no_cache else str(args.cache_dir or CompileCache().root)
    t0 = time.perf_counter()
    rows = run_build(variants, arches, args.jobs, cache_dir)
    print(format_table(rows))
    bad = [r for r in rows if not r["ok"]]
    unbuilt = [f"{v.name}@{a}" for v in variants for a in arches if a not in v.arches]
    print(f"\n{len(rows)} builds, {len(bad)} failed, {sum(r['cached'] for r in rows)} from cache, "
          f"{time.perf_counter() - t0:.1f} s wall; not applicable: {len(unbuilt)}")
    for r in bad:
        if "traceback" in r:
            print(f"\n--- {r['kernel']} @ {r['arch']}\n{r['traceback']}", file=sys.stderr)
    if args.json:
        atomic_write_text(args.json, json.dumps([{k: v for k, v in r.items() if k != "traceback"} for r in rows], indent=1))
    return 1 if (args.check and bad) else 0


if __name__ == "__main__":
    sys.exit(main())

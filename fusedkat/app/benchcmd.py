"""``fusedkat bench``: run the pytest-benchmark suite (``bench/``) and print its report.

The suite lives in the source checkout (``bench/``, next to the ``fusedkat`` package of an editable
install); it is run in a subprocess exactly as a user would run it by hand::

    FUSEDKAT_BENCH_SIZE=small python -m pytest bench --benchmark-json OUT.json -q
    python -m bench.report OUT.json [--out-dir DIR] [--no-plots]
"""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Optional

from ..files import atomic_write_bytes, check_writable, check_writable_dir
from .errors import CLIError

SIZES = ("small", "paper")


def find_bench_dir(explicit: Optional[str] = None) -> Path:
    """``bench/`` of the source checkout: ``explicit``, else next to the fusedkat package, else ./bench."""
    candidates = [Path(explicit)] if explicit else [
        Path(__file__).resolve().parents[2] / "bench",  # <checkout>/fusedkat/app/benchcmd.py -> <checkout>/bench
        Path.cwd() / "bench",
    ]
    for c in candidates:
        if (c / "__init__.py").is_file() and any(c.glob("bench_*.py")):
            return c.resolve()
    where = explicit or " or ".join(str(c) for c in candidates)
    raise CLIError(f"benchmark suite not found ({where}); it ships with the source checkout: "
                   "clone the repository, `pip install -e .`, and run from there (or pass --bench-dir)")


def run_bench(
    *,
    size: str = "small",
    json_path: Optional[str] = None,
    select: Optional[str] = None,
    bench_dir: Optional[str] = None,
    out_dir: Optional[str] = None,
    plots: bool = True,
) -> int:
    if size not in SIZES:
        raise CLIError(f"--size must be one of {', '.join(SIZES)}, got {size!r}")
    bdir = find_bench_dir(bench_dir)
    root = bdir.parent
    if json_path:  # checked before minutes of benchmarks, not after
        check_writable(json_path, what="--json file")
    if out_dir:
        check_writable_dir(out_dir, what="--out-dir folder")
    out = Path(json_path).resolve() if json_path else Path(tempfile.mkdtemp(prefix="fusedkat-bench-")) / "bench.json"
    env = dict(os.environ, FUSEDKAT_BENCH_SIZE=size)
    # pytest-benchmark writes its JSON directly: let it write a temporary name next to the
    # destination and rename it into place only when the suite passed (nothing half-written).
    partial = out.with_name(f".{out.name}.partial")
    cmd = [sys.executable, "-m", "pytest", str(bdir), f"--benchmark-json={partial}", "-q", "-p", "no:cacheprovider"]
    if select:
        cmd += ["-k", select]
    print("running: FUSEDKAT_BENCH_SIZE=" + size + " " + " ".join(cmd[1:]), flush=True)
    try:
        rc = subprocess.call(cmd, cwd=root, env=env)
        if rc == 0:
            atomic_write_bytes(out, partial.read_bytes())
    finally:
        partial.unlink(missing_ok=True)
    if rc != 0:
        raise CLIError(f"the benchmark suite failed (pytest exit status {rc}); see its output above", exit_code=rc)
    report = [sys.executable, "-m", "bench.report", str(out)]
    if out_dir:
        report += ["--out-dir", out_dir]
    if not plots:
        report.append("--no-plots")
    print("running: " + " ".join(report[1:]), flush=True)
    rc = subprocess.call(report, cwd=root, env=env)
    if rc != 0:
        raise CLIError(f"bench.report failed (exit status {rc})", exit_code=rc)
    print(f"raw results: {out}")
    return 0

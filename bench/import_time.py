"""Start-up cost of the ``fusedkat`` command against ``import torch`` (issue 20: the first minutes).

    python -m bench.import_time [--runs 7] [--json PATH]

Each case is a fresh interpreter (``sys.executable``), run ``--runs`` times, the cases interleaved
(case 1, case 2, ..., case 1, case 2, ...) so that machine load drifts hit all of them alike; the
wall time of each process is measured with ``perf_counter`` around ``subprocess.run``.  Prints
the median per case and its ratio to ``import torch`` (goal for ``fusedkat --help`` and usage
errors: <= 1.5x), and the 1-minute load average before and after.

Cases: ``python -c "import torch"`` (the reference), ``fusedkat --help``, a usage error
(``fusedkat convert`` without arguments), ``python -c "import fusedkat, torch"`` (the ops
registered), and ``import fusedkat, timm`` (KAT models registered in timm's registry).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from typing import Optional

CASES: dict[str, list[str]] = {
    "import torch": ["-c", "import torch"],
    "fusedkat --help": ["-m", "fusedkat.cli", "--help"],
    "fusedkat convert (usage error)": ["-m", "fusedkat.cli", "convert"],
    "import fusedkat, torch": ["-c", "import fusedkat, torch; torch.ops.fusedkat.group_rational"],
    "import fusedkat, timm": ["-c", "import fusedkat, timm; timm.create_model"],
}


def measure(runs: int = 7) -> dict[str, list[float]]:
    """Wall seconds of each case, ``runs`` interleaved rounds (plus one unmeasured warm-up round
    that fills the OS file cache)."""
    times: dict[str, list[float]] = {k: [] for k in CASES}
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="")
    for rnd in range(runs + 1):
        for name, args in CASES.items():
            t0 = time.perf_counter()
            subprocess.run([sys.executable, *args], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                           check=False, timeout=600)
            dt = time.perf_counter() - t0
            if rnd:
                times[name].append(dt)
    return times


def summary(times: dict[str, list[float]]) -> dict[str, dict[str, float]]:
    ref = statistics.median(times["import torch"])
    return {k: {"median_s": statistics.median(v), "ratio_to_import_torch": statistics.median(v) / ref,
                "runs": len(v)} for k, v in times.items()}


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.import_time", description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=7)
    p.add_argument("--json", metavar="PATH", help="also write the medians and raw times as JSON")
    args = p.parse_args(argv)
    if args.json:
        from fusedkat.files import OutputError, check_writable

        try:
            check_writable(args.json, what="--json file")
        except OutputError as e:
            p.error(str(e))
    load0 = os.getloadavg()[0]
    times = measure(args.runs)
    load1 = os.getloadavg()[0]
    s = summary(times)
    print(f"{'case':<34} {'median s':>9} {'x import torch':>15}   (medians of {args.runs} interleaved runs; "
          f"load average {load0:.1f} -> {load1:.1f} on {os.cpu_count()} CPUs)")
    for k, v in s.items():
        print(f"{k:<34} {v['median_s']:9.3f} {v['ratio_to_import_torch']:15.2f}")
    if args.json:
        from fusedkat.files import atomic_write_text

        atomic_write_text(args.json, json.dumps({"summary": s, "times": times, "load_average": [load0, load1],
                                                 "cpus": os.cpu_count()}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

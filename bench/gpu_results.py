"""Fold what ``scripts/gpu_suite.sh run`` leaves in its results folder into one small JSON.

    python -m bench.gpu_results RESULTS_DIR [--out PATH] [--note TEXT]

Reads, each only if present and readable (a phase killed at its timeout leaves an empty file; it is
reported under ``missing`` instead of failing the summary):

* ``junit_*.xml`` (GPU tests, one per file): counts and the names of failed tests;
* ``bench_gemm_fwd.json``, ``bench_gemm_bwd.json``, ``model_step.json`` (pytest-benchmark): per
  benchmark the median / mean / stddev in ms, rounds, and its ``extra_info`` (raw samples dropped);
* ``kernel_bench.json`` (``python -m cutlass_kernels.benchmark``): as is;
* ``host_overhead.txt`` (``python -m bench.host_overhead``): its summary lines;
* ``device.txt``, ``build.json``;
* ``goal_table.json`` (the ``goal`` phase, issue 21: ``python -m bench.goal_table``): as is;
* ``bench_gemm_fwd_ws.json`` and ``clocks_fwdws.txt`` (the ``fwdws`` phase, issue 15): the benchmarks
  as above, the ``nvidia-smi`` SM clock lines before and after them.

The output keeps the device, torch version and date, so a results file says where it was measured.
"""
from __future__ import annotations

import argparse
import datetime
import glob
import json
import os
import re
import xml.etree.ElementTree as ET
from typing import Any, Optional

from fusedkat.files import OutputError, atomic_write_text, check_writable

BENCH_FILES = {"gemm_fwd": "bench_gemm_fwd.json", "gemm_bwd": "bench_gemm_bwd.json", "model_step": "model_step.json",
               "gemm_fwd_ws": "bench_gemm_fwd_ws.json"}


def _read_json(path: str) -> Optional[Any]:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def compact_benchmarks(data: dict) -> dict[str, dict]:
    """pytest-benchmark JSON -> {name: {median_ms, mean_ms, stddev_ms, min_ms, rounds, extra_info}}."""
    out = {}
    for b in data.get("benchmarks", []):
        s = b["stats"]
        out[b["name"]] = {"median_ms": s["median"] * 1e3, "mean_ms": s["mean"] * 1e3, "stddev_ms": s["stddev"] * 1e3,
                          "min_ms": s["min"] * 1e3, "rounds": s["rounds"], "extra_info": b.get("extra_info", {})}
    return out


def junit_summary(res: str) -> Optional[dict]:
    tests = None
    for xml in sorted(glob.glob(os.path.join(res, "junit_*.xml"))):
        try:
            root = ET.parse(xml).getroot()
        except ET.ParseError:
            continue
        suite = root if root.tag == "testsuite" else root.find("testsuite")
        tests = tests or {"tests": 0, "failures": 0, "errors": 0, "skipped": 0, "files": [], "failed_names": []}
        for k in ("tests", "failures", "errors", "skipped"):
            tests[k] += int(suite.get(k, 0))
        tests["files"].append(os.path.basename(xml)[len("junit_"):-len(".xml")])
        tests["failed_names"] += [f"{c.get('classname')}::{c.get('name')}" for c in suite.iter("testcase")
                                  if c.find("failure") is not None or c.find("error") is not None]
    return tests


def host_overhead_lines(path: str) -> Optional[list[str]]:
    try:
        with open(path) as f:
            text = f.read()
    except OSError:
        return None
    # "== ..." headers and "<case>: N us of GPU work" lines; case names may carry "[fused]" etc.
    keep = re.compile(r"^(== |\w[\w ()\[\]-]*: [\d.]+ us of GPU work)")
    return [line.strip() for line in text.splitlines() if keep.match(line)]


def summarize(res: str, note: str = "") -> dict:
    """The summary dict of one results folder (see the module docstring)."""
    out: dict[str, Any] = {"date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d"), "note": note,
                           "missing": []}
    try:
        with open(os.path.join(res, "device.txt")) as f:
            out["device"] = f.read().strip()  # "<torch version> <GPU name> (<major>, <minor>)"
    except OSError:
        out["missing"].append("device.txt")
    out["gpu_tests"] = junit_summary(res)
    for key, name in BENCH_FILES.items():
        data = _read_json(os.path.join(res, name))
        if data is None:
            if os.path.exists(os.path.join(res, name)):
                out["missing"].append(f"{name} (empty or unreadable: the phase was cut off)")
            continue
        out[key] = compact_benchmarks(data)
        out.setdefault("bench_machine", {
            k: data.get("machine_info", {}).get(k) for k in ("cpu", "python_version", "fusedkat")})
    for key, name in (("kernel_bench", "kernel_bench.json"), ("build_check", "build.json"),
                      ("goal_table", "goal_table.json")):
        data = _read_json(os.path.join(res, name))
        if data is not None:
            out[key] = data
    try:
        with open(os.path.join(res, "clocks_fwdws.txt")) as f:
            out["sm_clocks"] = [line.strip() for line in f if line.strip()]
    except OSError:
        pass
    host = host_overhead_lines(os.path.join(res, "host_overhead.txt"))
    if host is not None:
        out["host_overhead"] = host
    return out


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.gpu_results", description=__doc__.split("\n\n")[0])
    p.add_argument("results_dir")
    p.add_argument("--out", help="write the JSON here (default: stdout)")
    p.add_argument("--note", default="", help="free text kept in the file (what ran, from which commit)")
    args = p.parse_args(argv)
    if not os.path.isdir(args.results_dir):
        p.error(f"no such folder: {args.results_dir}")
    if args.out:
        try:
            os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
            check_writable(args.out, what="--out file")
        except (OSError, OutputError) as e:
            p.error(str(e))
    summary = summarize(args.results_dir, args.note)
    text = json.dumps(summary, indent=1, sort_keys=True)
    if args.out:
        atomic_write_text(args.out, text + "\n")
        print(args.out)
    else:
        print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

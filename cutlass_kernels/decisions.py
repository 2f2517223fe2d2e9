"""Which path ``rational_linear`` takes on a GPU in ``auto``: the decision table.

Per (arch, op, shape class) the table names ``fused`` (one CuTe GEMM with F(x) in its prologue /
epilogue) or ``unfused`` (the elementwise CuTe kernels + cuBLAS), and where the choice came from:

* **measured**: :data:`TABLE_FILE` (``decisions.json``, generated from ``bench/results/*.json`` by
  :func:`build`, never typed by hand: ``python -m cutlass_kernels.decisions --write``).  Only GPU
  kernel time per call (the ``torch.profiler`` lines of ``host_overhead``) decides: the
  pytest-benchmark medians of ``gemm_fwd`` / ``gemm_bwd`` include host launch time (run 3: the
  elementwise launch alone took 191 us of host for 30 us of GPU), so they are stored as
  ``wall_us`` evidence, upper bounds of GPU time, and do not decide.  A measured verdict covers its
  whole shape class on that arch.
* **cost model**: elsewhere, :func:`cutlass_kernels.costmodel.predicted_faster` at the call's shape
  (the static cycle model; no GPU, no compiler), memoised per shape.

Shape classes (``M`` = rows of x, all leading dims flattened): ``large`` for ``M >= 4096`` (the
GEMM fills the GPU; every measurement so far is at M = 25216), ``small`` below.
``FUSEDKAT_FUSED_FWD`` / ``FUSEDKAT_FUSED_BWD`` = 1 / 0 still force (``gemm/fwd_launch.enabled``,
``gemm/bwd_launch.enabled``).  Pure Python and json: no DSL, no CUDA.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from functools import lru_cache
from pathlib import Path
from typing import Any, Optional

TABLE_FILE = Path(__file__).resolve().parent / "decisions.json"
RESULTS_DIR = Path(__file__).resolve().parent.parent / "bench" / "results"
OPS = ("forward", "backward")
LARGE_M = 4096
#: Shape used when a caller gives none (``fusedkat info``, ``enabled(device)``): KAT-B fc1 at batch 128.
DEFAULT_SHAPE = (25216, 768, 3072)
#: GPU-time model keys (:mod:`.costmodel_data`) that make up each path, per op.
_PARTS = {
    ("forward", "fused"): ("old_fused_fwd",),
    ("forward", "unfused"): ("cublas_fwd", "elementwise_fwd"),
    # the unfused backward of runs 4-7 (three kernels + F recomputed + the bias column sum); the
    # fused one (runs 3) is one dgrad+wgrad kernel plus the same column sum.
    ("backward", "fused"): ("old_fused_bwd", "colsum"),
    ("backward", "unfused"): ("cublas_dgrad", "cublas_wgrad", "elementwise_bwd", "elementwise_fwd", "colsum"),
}
_WALL = {("forward", "fused"): "old_fused_fwd", ("forward", "unfused"): "unfused_fwd",
         ("backward", "fused"): "old_fused_bwd_total", ("backward", "unfused"): "unfused_bwd_5launch"}


def shape_class(m: int) -> str:
    """``"large"`` for ``m >= LARGE_M`` rows, else ``"small"``."""
    return "large" if int(m) >= LARGE_M else "small"


def _arch_of(capability: Any) -> str:
    from .arch import arch_from_capability

    return arch_from_capability(tuple(int(v) for v in str(capability).split(".")) if isinstance(capability, str)
                                else tuple(capability))


def _median_us(meas: list, what: str, shape: tuple[int, int, int], op: str) -> Optional[float]:
    # the unfused backward's elementwise_fwd is its F recomputation inside rational_linear_backward
    vals = [x.us for x in meas if x.what == what and x.shape == shape and x.kind == "gpu"
            and (what != "elementwise_fwd" or ("rational_linear_backward" in x.source) == (op == "backward"))
            and (what != "colsum" or "rational_linear_backward" in x.source)]
    return statistics.median(vals) if vals else None


def build_one(path: Path) -> dict:
    """The table's record of one results file: its GPU, arch, date, and per (op, shape) the GPU
    time of each path (where both were profiled) and the wall-time evidence."""
    from .costmodel_data import load

    data = json.loads(Path(path).read_text())
    cap = data.get("bench_machine", {}).get("gpu", {}).get("capability")
    meas = load(Path(path))
    shapes = sorted({x.shape for x in meas})
    entries = []
    for op in OPS:
        for shape in shapes:
            us = {}
            for path_name in ("fused", "unfused"):
                parts = [_median_us(meas, w, shape, op) for w in _PARTS[(op, path_name)]]
                us[path_name] = round(sum(parts), 1) if all(p is not None for p in parts) else None
            wall = {}
            for path_name in ("fused", "unfused"):
                vals = [x.us for x in meas if x.what == _WALL[(op, path_name)] and x.shape == shape and x.kind == "wall"]
                wall[path_name] = round(min(vals), 1) if vals else None
            if us["fused"] is None and wall["fused"] is None:
                continue
            decided = us["fused"] is not None and us["unfused"] is not None
            entries.append({
                "op": op, "shape": list(shape), "class": shape_class(shape[0]),
                "gpu_us": us, "wall_us_min": wall,
                "faster": (("fused" if us["fused"] < us["unfused"] else "unfused") if decided else None),
            })
    return {"file": Path(path).name, "date": data.get("date"), "gpu": data.get("bench_machine", {}).get("gpu", {}).get("name"),
            "arch": _arch_of(cap) if cap else None, "entries": entries}


def _is_gpu_result(path: Path) -> bool:
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return True  # let build_one report the broken file
    return isinstance(data, dict) and bool(data.get("bench_machine", {}).get("gpu"))


def build(results_dir: Path = RESULTS_DIR) -> dict:
    """The whole table from every GPU ``*.json`` results file in ``results_dir`` (sorted by name;
    files without a ``bench_machine.gpu``, e.g. CPU benchmark results, are not GPU evidence)."""
    files = [p for p in sorted(Path(results_dir).glob("*.json")) if _is_gpu_result(p)]
    return {"generated_by": "python -m cutlass_kernels.decisions --write",
            "rule": "GPU kernel time decides (torch.profiler); wall_us_min is host-inclusive evidence only",
            "large_m": LARGE_M, "results": [build_one(p) for p in files]}


@lru_cache(maxsize=1)
def table() -> dict:
    """The committed table (:data:`TABLE_FILE`), read once."""
    return json.loads(TABLE_FILE.read_text())


def measured(arch: str, op: str, cls: str) -> Optional[tuple[str, str]]:
    """``(path, source)`` when ``arch`` has a GPU-time verdict for ``op`` in shape class ``cls``, else
    None.  Several measured shapes in one class must agree; if they do not, None (the model decides)."""
    for rec in table()["results"]:
        if rec["arch"] != arch:
            continue
        verdicts = {e["faster"] for e in rec["entries"] if e["op"] == op and e["class"] == cls and e["faster"]}
        if len(verdicts) == 1:
            gpu = (rec["gpu"] or arch).replace("NVIDIA ", "").split()[0]
            return verdicts.pop(), f"measured on {gpu} {rec['date']}"
    return None


#: (arch, op) whose fused kernel has never run on a GPU: ``auto`` does not pick it on the model's word
#: alone (sm_90's forward is the warp-specialized kernel of issue 15; drop the entry once measured).
GPU_UNVERIFIED = {("sm_90a", "forward")}
_MEMO: dict[tuple, tuple[str, str]] = {}


def choose(arch: str, op: str, shape: Optional[tuple[int, int, int]] = None) -> tuple[str, str]:
    """``(path, source)`` for ``op`` (``"forward"`` / ``"backward"``) at ``shape = (M, K, N)`` on
    ``arch`` (``sm_80`` ... ``sm_90a``): ``path`` is ``"fused"`` or ``"unfused"``, ``source`` is
    ``"measured on H100 <date>"`` or ``"cost model"``.  Memoised per (arch, op, shape): one dict
    lookup per call after the first."""
    key = (arch, op, shape)
    hit = _MEMO.get(key)
    if hit is not None:
        return hit
    if op not in OPS:
        raise ValueError(f"op must be 'forward' or 'backward', got {op!r}")
    m, k, n = (int(v) for v in (shape or DEFAULT_SHAPE))
    found = measured(arch, op, shape_class(m))
    if found is None:
        from .costmodel import predicted_faster

        found = (predicted_faster(arch, op, (m, k, n), design="old" if op == "backward" else "new"), "cost model")
        if found[0] == "fused" and (arch, op) in GPU_UNVERIFIED:
            found = ("unfused", "cost model predicts fused, but that kernel has not run on a GPU yet")
    _MEMO[key] = found
    return found


#: Arches the table and the cost model know (others run unfused in ``auto``).
ARCHES = ("sm_80", "sm_86", "sm_89", "sm_90a")


def fused_enabled(env: str, device: Any, op: str, shape: Optional[tuple[int, int, int]] = None) -> bool:
    """Whether ``op`` runs fused now: ``env`` = 1 / 0 forces (:func:`.abi.forced`); ``auto``: True
    for CPU tensors or a device of None (the launchers then refuse with a reason), else the table's
    :func:`choose` for the device's arch at ``shape`` (unfused on arches outside :data:`ARCHES`)."""
    from . import abi

    choice = abi.forced(env)
    if choice is not None:
        return choice
    if device is None or device.type != "cuda":
        return True
    cap = abi.device_info(device)[0]
    arch = _arch_of(cap)
    if arch not in ARCHES:
        return False
    return choose(arch, op, shape)[0] == "fused"


def rows(arch: str) -> list[dict]:
    """The table's choice per op and shape class on ``arch`` (for ``fusedkat info``); the cost-model
    rows are evaluated at :data:`DEFAULT_SHAPE` (``large``) and its M / 16 (``small``)."""
    out = []
    for op in OPS:
        for cls, m in (("large", DEFAULT_SHAPE[0]), ("small", DEFAULT_SHAPE[0] // 16 // 8 * 8)):
            path, source = choose(arch, op, (m,) + DEFAULT_SHAPE[1:])
            out.append({"op": op, "class": cls, "path": path, "source": source})
    return out


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m cutlass_kernels.decisions", description=__doc__.split("\n\n")[0])
    p.add_argument("--write", action="store_true", help=f"regenerate {TABLE_FILE.name} from bench/results")
    p.add_argument("--arch", default=None, help="print the choices for this arch (sm_80 ... sm_90a)")
    args = p.parse_args(argv)
    from fusedkat.files import atomic_write_text, check_writable

    if args.write:
        check_writable(TABLE_FILE)
        atomic_write_text(TABLE_FILE, json.dumps(build(), indent=1, sort_keys=True) + "\n")
        table.cache_clear()
        _MEMO.clear()
        print(f"wrote {TABLE_FILE}")
    for arch in [args.arch] if args.arch else ["sm_80", "sm_86", "sm_89", "sm_90a"]:
        for r in rows(arch):
            print(f"{arch:7s} {r['op']:8s} {r['class']:5s} {r['path']:8s} ({r['source']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())

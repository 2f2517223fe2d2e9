"""Render a pytest-benchmark JSON of the fusedkat suites as markdown tables and plots.

    python -m bench.report out.json [--out-dir DIR] [--no-plots]

Prints markdown to stdout and writes ``report.md`` plus PNG plots (matplotlib) into ``DIR``
(default: ``<json name>_report`` next to the JSON):

* ``rational``: per pass, median time per implementation for the groups sweep (D = 512) and the
  dim sweep (g = 8), the speedup of each fusedkat implementation over "torch looped" and "torch
  vectorized" (ratios of medians within this run), peak memory; plots of throughput (batch/s) and
  peak memory vs groups and vs D, as the paper's Figs. 6-7 (``rational_fwd.png``,
  ``rational_fwd_bwd.png``).
* ``activation`` (Table 7), ``grkan_layer`` (Table 2), ``model_step``: one table each, with
  ratios against GELU / the MLP layer / ViT.
* any other group (e.g. the GEMM suites): a generic table.

Times are medians; throughput = batch / median.  The header says where and how the run was made.
"""
from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any, Iterable, Optional

from fusedkat.files import OutputError, atomic_save, atomic_write_text, check_writable, check_writable_dir

BASELINES = ("looped", "vectorized")
PASSES = ("fwd", "fwd+bwd")


class ReportError(ValueError):
    """The input is not a pytest-benchmark JSON of these suites."""


# ---------------------------------------------------------------------------------------------
# loading
# ---------------------------------------------------------------------------------------------
def load(path: str | Path) -> dict[str, Any]:
    """Read and sanity-check a ``--benchmark-json`` file."""
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise ReportError(f"{path}: no such file") from None
    except json.JSONDecodeError as e:
        raise ReportError(f"{path}: not JSON ({e})") from None
    if not isinstance(data, dict) or not isinstance(data.get("benchmarks"), list):
        raise ReportError(f"{path}: no 'benchmarks' list; is this a pytest-benchmark --benchmark-json file?")
    for b in data["benchmarks"]:
        if "stats" not in b or "median" not in b.get("stats", {}):
            raise ReportError(f"{path}: benchmark {b.get('name')!r} has no stats (was it run with --benchmark-disable?)")
    return data


def _rows(data: dict[str, Any], group: str) -> list[dict[str, Any]]:
    out = []
    for b in data["benchmarks"]:
        if b.get("group") != group:
            continue
        info = dict(b.get("extra_info") or {})
        info.setdefault("impl", b.get("name"))
        info["name"] = b.get("name")
        info["median"] = float(b["stats"]["median"])
        out.append(info)
    return out


# ---------------------------------------------------------------------------------------------
# formatting
# ---------------------------------------------------------------------------------------------
def _ms(seconds: Optional[float]) -> str:
    return "-" if seconds is None else f"{seconds * 1e3:.3g}"


def _mb(nbytes: Optional[float]) -> str:
    return "-" if nbytes is None else f"{nbytes / 2**20:.1f}"


def _ratio(num: Optional[float], den: Optional[float]) -> str:
    return "-" if not num or not den else f"{num / den:.2f}x"


def _table(header: list[str], rows: Iterable[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def _ordered_impls(rows: list[dict[str, Any]], first: Iterable[str] = ()) -> list[str]:
    seen = [i for i in first if any(r["impl"] == i for r in rows)]
    for r in rows:
        if r["impl"] not in seen:
            seen.append(r["impl"])
    return seen


def header(data: dict[str, Any]) -> str:
    """Where and how the run was made, from ``machine_info`` (see bench/_environment.py)."""
    mi = data.get("machine_info") or {}
    env = mi.get("fusedkat") or {}
    versions = env.get("versions") or {}
    gpu = env.get("gpu")
    where = f"GPU {gpu['name']} (sm {gpu['capability']})" if gpu else f"CPU {env.get('cpu_model') or mi.get('cpu', {}).get('brand_raw', '?')}"
    parts = [
        f"- device: {env.get('device', '?')} - {where}",
        f"- size: {env.get('size', '?')}; torch threads: {env.get('torch_num_threads', '?')} "
        f"(cpu_count {env.get('cpu_count', '?')}, affinity {env.get('cpu_affinity', '?')})",
        f"- load average (1/5/15 min) when the run ended: {env.get('loadavg_1_5_15', '?')}",
        f"- malloc: {env.get('malloc', '?')}" + (f"; LD_PRELOAD={env['malloc_preload']}" if env.get("malloc_preload") else ""),
        f"- torch {versions.get('torch', '?')}, timm {versions.get('timm', '?')}, fusedkat {versions.get('fusedkat', '?')}, "
        f"python {env.get('python', mi.get('python_version', '?'))}; commit {env.get('git_commit') or '?'}",
        f"- run at {data.get('datetime', '?')}; times are medians of pytest-benchmark rounds; ratios are within this run",
    ]
    return "\n".join(parts)


# ---------------------------------------------------------------------------------------------
# groups
# ---------------------------------------------------------------------------------------------
def _by(rows, **match):
    return [r for r in rows if all(r.get(k) == v for k, v in match.items())]


def _one(rows, **match) -> Optional[dict[str, Any]]:
    found = _by(rows, **match)
    return found[0] if found else None


def rational_sweeps(rows: list[dict[str, Any]]) -> dict[tuple[str, str], tuple[str, list[int], list[dict]]]:
    """{(pass, sweep): (x-axis key, x values, rows)}: the groups sweep is at the most common D,
    the dim sweep at the most common g (512 and 8 in the suites)."""
    out = {}
    if not rows:
        return out
    dims = defaultdict(int)
    groups = defaultdict(int)
    for r in rows:
        dims[r.get("dim")] += 1
        groups[r.get("groups")] += 1
    base_dim = max(dims, key=dims.get)
    base_groups = max(groups, key=groups.get)
    for p in PASSES:
        g_rows = _by(rows, **{"pass": p, "dim": base_dim})
        d_rows = _by(rows, **{"pass": p, "groups": base_groups})
        if g_rows:
            out[(p, f"groups (D={base_dim})")] = ("groups", sorted({r["groups"] for r in g_rows}), g_rows)
        if d_rows:
            out[(p, f"dim (g={base_groups})")] = ("dim", sorted({r["dim"] for r in d_rows}), d_rows)
    return out


def rational_section(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return ""
    impls = _ordered_impls(rows, first=BASELINES)
    ours = [i for i in impls if i not in BASELINES]
    parts = ["## rational: group-rational F(x), fusedkat vs the paper's baselines (Figs. 6-7)"]
    shape = rows[0].get("shape")
    if shape:
        parts.append(f"Input [B, N, D] with B, N = {shape[0]}, {shape[1]}; fp32. Median time in ms.")
    for (p, sweep), (key, xs, sub) in rational_sweeps(rows).items():
        head = [key] + [f"{i} ms" for i in impls]
        head += [f"{o} vs {b}" for o in ours for b in BASELINES]
        head += [f"{i} peak MB" for i in impls]
        body = []
        for x in xs:
            cells = {i: _one(sub, impl=i, **{key: x}) for i in impls}
            med = {i: (c["median"] if c else None) for i, c in cells.items()}
            row = [x] + [_ms(med[i]) for i in impls]
            row += [_ratio(med[b], med[o]) for o in ours for b in BASELINES]
            row += [_mb(c.get("peak_mem_bytes")) if c else "-" for c in cells.values()]
            body.append(row)
        parts.append(f"### {p}, sweep over {sweep}\n\n" + _table(head, body))
    parts.append("Speedup = baseline median / fusedkat median (> 1: fusedkat faster).")
    return "\n\n".join(parts)


def activation_section(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return ""
    names = _ordered_impls(rows, first=("relu", "gelu", "silu", "prelu", "pau", "grkan"))
    head = ["activation"]
    for p in PASSES:
        head += [f"{p} batch/s", f"{p} vs gelu", f"{p} peak MB"]
    body = []
    for n in names:
        row = [n]
        for p in PASSES:
            r, g = _one(rows, impl=n, **{"pass": p}), _one(rows, impl="gelu", **{"pass": p})
            tput = r["batch"] / r["median"] if r else None
            gtput = g["batch"] / g["median"] if g else None
            row += ["-" if tput is None else f"{tput:.1f}", _ratio(tput, gtput),
                    _mb(r.get("peak_mem_bytes")) if r else "-"]
        body.append(row)
    shape = rows[0].get("shape")
    return ("## activation: throughput and peak memory (paper Table 7)\n\n"
            f"Input {shape}; throughput in batches/s; 'vs gelu' = throughput ratio.\n\n" + _table(head, body))


def grkan_layer_section(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return ""
    impls = _ordered_impls(rows, first=("mlp", "grkan", "grkan_compiled", "kan_bspline"))
    head = ["layer", "params", "FLOPs/token (Table 2)"]
    for p in PASSES:
        head += [f"{p} ms", f"{p} vs mlp", f"{p} peak MB"]
    body = []
    for i in impls:
        any_row = _one(rows, impl=i)
        flops = any_row.get("flops_formula")
        row = [i, f"{any_row.get('params', '-'):,}" if isinstance(any_row.get("params"), int) else "-",
               f"{flops / 1e6:.2f} M" if flops else "-"]
        for p in PASSES:
            r, m = _one(rows, impl=i, **{"pass": p}), _one(rows, impl="mlp", **{"pass": p})
            row += [_ms(r["median"]) if r else "-", _ratio(r["median"], m["median"]) if r and m else "-",
                    _mb(r.get("peak_mem_bytes")) if r else "-"]
        body.append(row)
    shape = rows[0].get("shape")
    return ("## grkan_layer: GR-KAN vs Linear+GELU vs B-spline KAN (paper Table 2)\n\n"
            f"[batch, tokens, d_in, d_out] = {shape}; 'vs mlp' = time ratio (> 1: slower than the MLP layer).\n\n"
            + _table(head, body))


def model_step_section(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return ""
    head = ["model", "mode", "ViT ms/step", "KAT ms/step", "KAT/ViT time", "ViT img/s", "KAT img/s",
            "ViT peak MB", "KAT peak MB", "KAT params"]
    body = []
    for size in _ordered_impls([{"impl": r.get("model")} for r in rows], first=("T", "S", "B")):
        for mode in ("eager", "compiled"):
            v, k = _one(rows, model=size, impl=f"vit_{mode}"), _one(rows, model=size, impl=f"kat_{mode}")
            if not v and not k:
                continue
            body.append([size, mode, _ms(v and v["median"]), _ms(k and k["median"]),
                         _ratio(k and k["median"], v and v["median"]),
                         f"{v['batch'] / v['median']:.1f}" if v else "-",
                         f"{k['batch'] / k['median']:.1f}" if k else "-",
                         _mb(v.get("peak_mem_bytes")) if v else "-", _mb(k.get("peak_mem_bytes")) if k else "-",
                         f"{k['params']:,}" if k and isinstance(k.get("params"), int) else "-"])
    any_row = rows[0]
    return ("## model_step: training step (fwd + CE loss + bwd + AdamW), KAT vs ViT\n\n"
            f"batch {any_row.get('batch')}, {any_row.get('img_size')}px, depth {any_row.get('depth')}; "
            "'KAT/ViT time' > 1: KAT slower.\n\n" + _table(head, body))


def generic_section(group: str, rows: list[dict[str, Any]]) -> str:
    fastest = min(r["median"] for r in rows)
    body = [[r["name"], r["impl"], _ms(r["median"]), _ratio(r["median"], fastest), _mb(r.get("peak_mem_bytes"))]
            for r in sorted(rows, key=lambda r: r["name"])]
    return f"## {group}\n\n" + _table(["benchmark", "impl", "median ms", "vs fastest", "peak MB"], body)


SECTIONS = {"rational": rational_section, "activation": activation_section,
            "grkan_layer": grkan_layer_section, "model_step": model_step_section}


def render(data: dict[str, Any]) -> str:
    """The whole markdown report."""
    groups = []
    for b in data["benchmarks"]:
        if b.get("group") not in groups:
            groups.append(b.get("group"))
    parts = ["# fusedkat benchmarks", header(data)]
    for g in sorted(groups, key=lambda g: (list(SECTIONS).index(g) if g in SECTIONS else len(SECTIONS), str(g))):
        rows = _rows(data, g)
        parts.append(SECTIONS[g](rows) if g in SECTIONS else generic_section(str(g), rows))
    return "\n\n".join(p for p in parts if p) + "\n"


# ---------------------------------------------------------------------------------------------
# plots
# ---------------------------------------------------------------------------------------------
def plot_rational(rows: list[dict[str, Any]], out_dir: Path) -> list[Path]:
    """Per pass, a 2x2 figure: throughput and peak memory vs groups and vs D (paper Figs. 6-7)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    sweeps = rational_sweeps(rows)
    impls = _ordered_impls(rows, first=BASELINES)
    for p in PASSES:
        panels = [(s, v) for (pp, s), v in sweeps.items() if pp == p]
        if not panels:
            continue
        fig, axes = plt.subplots(2, len(panels), figsize=(5.5 * len(panels), 8), squeeze=False)
        for col, (sweep, (key, xs, sub)) in enumerate(panels):
            for impl in impls:
                pts = [(x, _one(sub, impl=impl, **{key: x})) for x in xs]
                pts = [(x, r) for x, r in pts if r]
                if not pts:
                    continue
                axes[0][col].plot([x for x, _ in pts], [r["batch"] / r["median"] for _, r in pts], marker="o", label=impl)
                mem = [(x, r.get("peak_mem_bytes")) for x, r in pts if r.get("peak_mem_bytes") is not None]
                if mem:
                    axes[1][col].plot([x for x, _ in mem], [m / 2**20 for _, m in mem], marker="o", label=impl)
            for row, ylabel in ((0, "throughput (batch/s), larger is better"), (1, "peak memory (MB), smaller is better")):
                ax = axes[row][col]
                ax.set_xscale("log", base=2)
                ax.set_xticks(xs)
                ax.set_xticklabels([str(x) for x in xs])
                if row == 0:
                    ax.set_yscale("log")  # implementations differ by orders of magnitude
                ax.set_xlabel(key)
                ax.set_ylabel(ylabel)
                ax.set_title(f"{p}: {sweep}")
                ax.grid(alpha=0.3)
                ax.legend(fontsize=8)
        fig.tight_layout()
        path = out_dir / f"rational_{p.replace('+', '_')}.png"
        atomic_save(path, lambda fh: fig.savefig(fh, format="png", dpi=110))
        plt.close(fig)
        written.append(path)
    return written


def plot_activation(rows: list[dict[str, Any]], out_dir: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = _ordered_impls(rows, first=("relu", "gelu", "silu", "prelu", "pau", "grkan"))
    fig, ax = plt.subplots(figsize=(7, 4))
    width = 0.4
    for k, p in enumerate(PASSES):
        vals = []
        for n in names:
            r = _one(rows, impl=n, **{"pass": p})
            vals.append(r["batch"] / r["median"] if r else 0.0)
        ax.bar([i + k * width for i in range(len(names))], vals, width, label=p)
    ax.set_xticks([i + width / 2 for i in range(len(names))])
    ax.set_xticklabels(names)
    ax.set_ylabel("throughput (batch/s)")
    ax.legend()
    fig.tight_layout()
    path = out_dir / "activation.png"
    atomic_save(path, lambda fh: fig.savefig(fh, format="png", dpi=110))
    plt.close(fig)
    return [path]


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.report", description=__doc__.split("\n\n")[0])
    ap.add_argument("json", help="a pytest-benchmark --benchmark-json file")
    ap.add_argument("--out-dir", help="where report.md and the plots go (default: <json>_report)")
    ap.add_argument("--no-plots", action="store_true", help="tables only")
    args = ap.parse_args(argv)
    try:
        data = load(args.json)
    except ReportError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    out_dir = Path(args.out_dir) if args.out_dir else Path(args.json).with_name(Path(args.json).stem + "_report")
    try:
        check_writable_dir(out_dir, what="--out-dir folder")
        check_writable(out_dir / "report.md", what="report")
    except OutputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    md = render(data)
    atomic_write_text(out_dir / "report.md", md)
    written = []
    if not args.no_plots:
        written += plot_rational(_rows(data, "rational"), out_dir)
        act = _rows(data, "activation")
        if act:
            written += plot_activation(act, out_dir)
    print(md)
    print(f"wrote {out_dir / 'report.md'}" + "".join(f", {p}" for p in written), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

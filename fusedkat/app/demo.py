"""``fusedkat demo``: train a KAT and its ViT twin on bundled digits and compare them.

Both twins get the same data order, schedule, optimizer and compile setting; the only difference is
the MLP (GELU MLP vs. GR-KAN). Prints a table, saves two figures, optionally writes JSON.
"""
from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Optional, TextIO

import torch

from .data import load_digits_split
from ..files import atomic_write_text, check_writable, check_writable_dir
from .errors import CLIError
from .info import cpu_name
from .train import RunResult, TrainConfig, train_model
from .twins import TwinConfig, build_kat, build_vit, rational_layers

#: ``--quick``: about 2 minutes on 2 CPU cores including torch.compile; full: a few minutes.
QUICK_EPOCHS = 12
FULL_EPOCHS = 40


PLOT_FILES = ("training_curves.png", "kat_rationals.png")  # in --out

def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise CLIError("--device cuda was requested but torch sees no CUDA device (try --device cpu)")
    if name not in ("cpu", "cuda"):
        raise CLIError(f"unknown device {name!r}; use auto, cpu or cuda")
    return torch.device(name)


def _fmt_row(label: str, values: list[str]) -> str:
    return f"{label:<26}" + "".join(f"{v:>14}" for v in values)


def format_table(results: list[RunResult]) -> str:
    def mib(b: int) -> str:
        return f"{b / 2**20:.2f} MiB"

    def num(v: float, f: str) -> str:
        return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, f)

    rows = [
        _fmt_row("", [r.name for r in results]),
        _fmt_row("test accuracy", [f"{100 * r.accuracy:.2f}%" for r in results]),
        _fmt_row("test loss", [f"{r.test_loss:.4f}" for r in results]),
        _fmt_row("train loss (last epoch)", [f"{r.train_loss:.4f}" for r in results]),
        _fmt_row("train images/s", [num(r.images_per_s, ".0f") for r in results]),
        _fmt_row("first step s (compile)", [f"{r.first_step_s:.1f}" for r in results]),
        _fmt_row("peak step memory", [mib(r.peak_step_memory_bytes) for r in results]),
        _fmt_row("parameters", [f"{r.params:,}" for r in results]),
        _fmt_row("optimizer steps", [str(r.steps) for r in results]),
    ]
    return "\n".join(rows)


def _jsonable(v):
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, dict):
        return {k: _jsonable(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_jsonable(x) for x in v]
    return v


def run_demo(
    *,
    quick: bool = False,
    epochs: Optional[int] = None,
    max_steps: Optional[int] = None,
    batch_size: int = 64,
    compile: bool = True,
    device: str = "auto",
    seed: int = 0,
    out_dir: str = "fusedkat-demo",
    json_path: Optional[str] = None,
    plots: bool = True,
    progress: bool = True,
    stream: Optional[TextIO] = None,
) -> dict:
    """Run the demo; returns the dict that ``--json`` writes. Prints progress and the table."""
    import sys

    stream = stream or sys.stdout
    dev = resolve_device(device)
    if epochs is not None and epochs < 1:
        raise CLIError(f"--epochs must be >= 1, got {epochs}")
    if max_steps is not None and max_steps < 1:
        raise CLIError(f"--steps must be >= 1, got {max_steps}")
    if batch_size < 1:
        raise CLIError(f"--batch-size must be >= 1, got {batch_size}")
    # Outputs are checked before minutes of training, not after (nothing written yet).
    out = Path(out_dir)
    if json_path is not None:
        check_writable(json_path, what="--json file")
    if plots:  # last: creates the folder (only once every other check passed)
        check_writable_dir(out, what="--out folder")
        for name in PLOT_FILES:
            check_writable(out / name, what="plot")

    train, test = load_digits_split(seed=seed)
    if batch_size > len(train):
        raise CLIError(f"--batch-size {batch_size} is larger than the training set ({len(train)} images)")
    n_epochs = epochs if epochs is not None else (QUICK_EPOCHS if quick else FULL_EPOCHS)
    cfg = TrainConfig(epochs=n_epochs, batch_size=batch_size, seed=seed, compile=compile, max_steps=max_steps)
    arch = TwinConfig()
    print(
        f"fusedkat demo: KAT vs ViT twin on sklearn digits (8x8, {len(train)} train / {len(test)} test), "
        f"{n_epochs} epochs x {len(train) // batch_size} steps, batch {batch_size}, device {dev}, "
        f"torch.compile {'on' if compile else 'off'}",
        file=stream, flush=True,
    )
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = lambda **kw: tqdm(**kw, leave=True, dynamic_ncols=True)  # noqa: E731

    t_all = time.perf_counter()
    results, models = [], {}
    for name, build in (("KAT", build_kat), ("ViT", build_vit)):
        model = build(arch, seed)
        models[name] = model
        results.append(train_model(name, model, train, test, cfg, dev, progress=bar))
    wall = time.perf_counter() - t_all

    print("\n" + format_table(results), file=stream)
    print(f"\nwall time {wall:.1f} s (both models, including compilation and evaluation)", file=stream)

    files = {}
    if plots:
        from .plots import plot_curves, plot_rationals

        files["curves"] = str(plot_curves({r.name: r.history for r in results}, out / PLOT_FILES[0]))
        layers = rational_layers(models["KAT"])
        ref = {n: a.fit for n, a in layers}  # the init rational (numpy), drawn dashed
        files["rationals"] = str(plot_rationals(layers, out / PLOT_FILES[1], reference=ref))
        print(f"plots: {files['curves']}  {files['rationals']}", file=stream)

    report = {
        "kat": dict(results[0].summary(), history=results[0].history),
        "vit": dict(results[1].summary(), history=results[1].history),
        "setup": {
            "dataset": "sklearn.datasets.load_digits (8x8, 10 classes)",
            "train_images": len(train),
            "test_images": len(test),
            "model": asdict(arch),
            "train": asdict(replace(cfg)),
            "device": str(dev),
            "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else cpu_name(),
            "torch_threads": torch.get_num_threads(),
            "cpu_count": os.cpu_count(),
            # Other processes competing for the CPU make every number above slower: record it.
            "load_average_at_end": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
            "torch": torch.__version__,
            "wall_seconds": wall,
            "peak_memory_means": "extra bytes one training step allocates above its start (activations, grads, temporaries)",
        },
        "files": files,
    }
    report = _jsonable(report)
    if json_path is not None:
        atomic_write_text(json_path, json.dumps(report, indent=2) + "\n")
        print(f"json: {json_path}", file=stream)
    return report

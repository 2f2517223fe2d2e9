"""Figures for the demo and ``fusedkat fit`` (matplotlib, non-interactive Agg backend, PNG files)."""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn

from ..files import atomic_save


def _save(fig, path: Path, dpi: int) -> None:
    """Write ``fig`` as PNG atomically (temporary file + rename: Ctrl-C never leaves half a PNG)."""
    atomic_save(path, lambda fh: fig.savefig(fh, format="png", dpi=dpi))


def _plt():
    import matplotlib

    matplotlib.use("Agg")  # files only: no display needed, works on servers and in CI
    import matplotlib.pyplot as plt

    return plt


def plot_curves(histories: dict[str, list[dict]], path: Path) -> Path:
    """Training loss, test loss and test accuracy per epoch for each named run."""
    plt = _plt()
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    for name, hist in histories.items():
        ep = [h["epoch"] for h in hist]
        axes[0].plot(ep, [h["train_loss"] for h in hist], label=name)
        axes[1].plot(ep, [h["test_loss"] for h in hist], label=name)
        axes[2].plot(ep, [100 * h["accuracy"] for h in hist], label=name)
    for ax, title in zip(axes, ("train loss", "test loss", "test accuracy (%)")):
        ax.set_xlabel("epoch")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    _save(fig, path, dpi=110)
    plt.close(fig)
    return path


@torch.no_grad()
def rational_curves(act: nn.Module, x: np.ndarray) -> np.ndarray:
    """Values ``[num_groups, len(x)]`` of a GroupRational's function for each group, on points ``x``.

    Feeds a ``[len(x), g]`` input (one channel per group) through the layer itself, so what is
    plotted is exactly what the model computes.
    """
    g = act.weight_denominator.shape[0]
    p = act.weight_numerator
    inp = torch.as_tensor(x, dtype=p.dtype, device=p.device).unsqueeze(1).expand(-1, g).contiguous()
    return act(inp).double().cpu().numpy().T


def plot_rationals(
    layers: Sequence[tuple[str, nn.Module]],
    path: Path,
    reference: dict[str, Callable[[np.ndarray], np.ndarray]] | None = None,
    lim: float = 3.0,
) -> Path:
    """The learned rational of every GR-KAN layer, one panel per layer, one line per group
    (the paper's Fig. 8). ``reference`` maps a layer name to its init function (dashed)."""
    plt = _plt()
    x = np.linspace(-lim, lim, 401)
    # Rows: blocks; columns: act1 / act2 (names end in ".act1" / ".act2" for KANMlp).
    names = [n for n, _ in layers]
    cols = 2 if all(n.endswith((".act1", ".act2")) for n in names) else 1
    rows = (len(layers) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 2.6 * rows), squeeze=False)
    for i, (name, act) in enumerate(layers):
        ax = axes[i // cols][i % cols]
        ys = rational_curves(act, x)
        for gi, y in enumerate(ys):
            ax.plot(x, y, lw=1.0, alpha=0.85, label=f"group {gi}" if i == 0 else None)
        if reference and name in reference:
            ax.plot(x, reference[name](x), "k--", lw=1.0, label="init" if i == 0 else None)
        ax.set_title(name, fontsize=9)
        ax.grid(alpha=0.3)
    for j in range(len(layers), rows * cols):
        axes[j // cols][j % cols].axis("off")
    fig.legend(loc="upper right", fontsize=7, ncol=1)
    fig.suptitle("learned group-rational functions per layer (dashed: initialisation)")
    fig.tight_layout(rect=(0, 0, 0.92, 0.97))
    _save(fig, path, dpi=100)
    plt.close(fig)
    return path


def plot_fit(x: np.ndarray, target: np.ndarray, fitted: np.ndarray, title: str, path: Path) -> Path:
    """A rational fit against its target activation, and the error (the paper's Fig. 3)."""
    plt = _plt()
    fig, (a0, a1) = plt.subplots(1, 2, figsize=(9, 3.6))
    a0.plot(x, target, "k-", lw=2, alpha=0.5, label="target")
    a0.plot(x, fitted, "r--", lw=1.2, label="rational")
    a0.legend()
    a0.grid(alpha=0.3)
    a0.set_title(title)
    a1.plot(x, fitted - target)
    a1.set_title("rational - target")
    a1.grid(alpha=0.3)
    fig.tight_layout()
    _save(fig, path, dpi=110)
    plt.close(fig)
    return path


def plot_train_metrics(history: list[dict], path: Path) -> Path:
    """``fusedkat train``'s curves per epoch: train/val loss and val top-1/top-5 (written atomically)."""
    from ..files import atomic_save

    plt = _plt()
    fig, (a0, a1) = plt.subplots(1, 2, figsize=(10, 3.8))
    ep = [h["epoch"] for h in history]
    a0.plot(ep, [h["train_loss"] for h in history], "o-", label="train")
    if all("val_loss" in h for h in history):
        a0.plot(ep, [h["val_loss"] for h in history], "o-", label="val")
    for key, label in (("top1", "top-1"), ("top5", "top-5"), ("ema_top1", "EMA top-1")):
        if all(key in h for h in history):
            a1.plot(ep, [h[key] for h in history], "o-", label=label)
    for ax, title in ((a0, "loss"), (a1, "validation accuracy (%)")):
        ax.set_xlabel("epoch")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend()
    fig.tight_layout()
    atomic_save(path, lambda f: fig.savefig(f, format="png", dpi=110))
    plt.close(fig)
    return path

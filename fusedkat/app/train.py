"""Training loop shared by the demo's twins: AdamW, warmup + cosine schedule, per-epoch evaluation.

Throughput is measured honestly: the first step (where torch.compile compiles forward and
backward) is timed separately as ``first_step_s`` and excluded from ``images_per_s``; CUDA is
synchronised before reading the clock. Evaluation runs the *uncompiled* module in eval mode (it
shares its parameters with the compiled one), so evaluating never triggers a second compilation.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .data import Split, batches
from .memory import step_peak_bytes


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 30
    batch_size: int = 64
    lr: float = 2e-3
    weight_decay: float = 0.05
    warmup_epochs: float = 1.0
    seed: int = 0
    compile: bool = True
    max_steps: Optional[int] = None  # cap on optimizer steps (tests / smoke runs); None = all epochs


@dataclass
class RunResult:
    """What one model's run produced. Accuracies are fractions in [0, 1] on the test split."""

    name: str
    accuracy: float
    test_loss: float
    train_loss: float
    images_per_s: float
    first_step_s: float
    peak_step_memory_bytes: int
    params: int
    steps: int
    train_seconds: float
    history: list = field(default_factory=list)  # one dict per epoch: epoch, train_loss, test_loss, accuracy

    def summary(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k not in ("history", "name")}


@torch.no_grad()
def evaluate(model: nn.Module, split: Split, device: torch.device, batch_size: int = 512) -> tuple[float, float]:
    """``(mean cross-entropy, accuracy)`` of ``model`` (eval mode) on ``split``."""
    was_training = model.training
    model.eval()
    loss_sum, correct = 0.0, 0
    for start in range(0, len(split), batch_size):
        x = split.images[start : start + batch_size].to(device)
        y = split.labels[start : start + batch_size].to(device)
        logits = model(x).float()
        loss_sum += F.cross_entropy(logits, y, reduction="sum").item()
        correct += int((logits.argmax(-1) == y).sum())
    model.train(was_training)
    return loss_sum / len(split), correct / len(split)


def _lr_lambda(warmup_steps: int, total_steps: int) -> Callable[[int], float]:
    def f(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        t = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, t)))

    return f


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def train_model(
    name: str,
    model: nn.Module,
    train: Split,
    test: Split,
    cfg: TrainConfig,
    device: torch.device,
    progress: Optional[Callable[..., object]] = None,
) -> RunResult:
    """Train ``model`` on ``train`` and evaluate it on ``test`` after every epoch.

    ``progress``, if given, is a tqdm-like factory ``progress(total=..., desc=...)``.
    """
    model.to(device).train()
    params = sum(p.numel() for p in model.parameters())
    step_fn_model = torch.compile(model) if cfg.compile else model
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = len(train) // cfg.batch_size
    if steps_per_epoch < 1:
        raise ValueError(f"batch size {cfg.batch_size} is larger than the training set ({len(train)} images)")
    total = steps_per_epoch * cfg.epochs
    if cfg.max_steps is not None:
        total = min(total, cfg.max_steps)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, _lr_lambda(max(1, int(cfg.warmup_epochs * steps_per_epoch)), total)
    )
    gen = torch.Generator().manual_seed(cfg.seed)

    def step(x: Tensor, y: Tensor) -> Tensor:
        loss = F.cross_entropy(step_fn_model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        return loss

    bar = progress(total=total, desc=name, unit="step") if progress else None
    history: list[dict] = []
    done, timed_images, timed_s, first_step_s, peak = 0, 0, 0.0, 0.0, 0
    train_loss = float("nan")
    epoch = 0
    while done < total:
        epoch += 1
        loss_sum, n_batches = torch.zeros((), device=device), 0
        for x, y in batches(train, cfg.batch_size, gen):
            if done >= total:
                break
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            if done == 1:
                # Second step: compilation is over; measure one step's peak memory (not timed).
                peak = step_peak_bytes(lambda: loss_sum.add_(step(x, y).detach()), device)
            else:
                _sync(device)
                t0 = time.perf_counter()
                loss = step(x, y)
                _sync(device)
                dt = time.perf_counter() - t0
                loss_sum += loss.detach()
                if done == 0:
                    first_step_s = dt
                else:
                    timed_images, timed_s = timed_images + x.shape[0], timed_s + dt
            n_batches += 1
            done += 1
            if bar is not None:
                bar.update(1)
        train_loss = float(loss_sum) / max(1, n_batches)
        test_loss, acc = evaluate(model, test, device)
        history.append({"epoch": epoch, "train_loss": train_loss, "test_loss": test_loss, "accuracy": acc})
        if bar is not None:
            bar.set_postfix(loss=f"{train_loss:.3f}", acc=f"{acc:.3f}")
    if bar is not None:
        bar.close()
    last = history[-1]
    return RunResult(
        name=name,
        accuracy=last["accuracy"],
        test_loss=last["test_loss"],
        train_loss=train_loss,
        images_per_s=(timed_images / timed_s) if timed_s > 0 else float("nan"),
        first_step_s=first_step_s,
        peak_step_memory_bytes=peak,
        params=params,
        steps=done,
        train_seconds=first_step_s + timed_s,
        history=history,
    )

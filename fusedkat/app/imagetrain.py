"""``fusedkat train``: train a KAT (or any timm model) on an image folder, one process or DDP via torchrun.

Built from timm's parts: timm transforms (RandAugment, random erasing), ``Mixup`` (mixup/CutMix,
label smoothing), ``SoftTargetCrossEntropy`` / ``LabelSmoothingCrossEntropy``,
``create_optimizer_v2`` (AdamW, no weight decay on 1-D parameters and embeddings),
``create_scheduler_v2`` (warmup + cosine, stepped per optimizer update), ``ModelEmaV3`` and
``timm.utils.accuracy``.  Defaults are the DeiT recipe the KAT paper used (lr 1e-3 per 1024 images of
global batch, weight decay 0.05, 5 warmup epochs, mixup 0.8, CutMix 1.0, smoothing 0.1,
RandAugment m9, random erasing 0.25, drop-path 0.1).

Distributed: ``torchrun --nproc-per-node N -m fusedkat train ...`` -- torch.distributed from the
torchrun environment (NCCL on GPU, gloo on CPU), DDP, one shard of each global batch per rank
(:class:`~fusedkat.app.imagedata.ShardSampler`), logging / metrics / checkpoints on rank 0.
Global batch = ``batch_size * world_size * grad_accum``.

Reproducibility: augmentation is seeded per sample, and the RNGs are re-seeded per optimizer step
from ``(seed, epoch, step, rank)`` (dropout / drop-path masks, mixup), so a resumed run continues
exactly as an uninterrupted one.  Ctrl-C (SIGINT) or SIGTERM finishes the current optimizer step,
saves a resumable ``last.pth`` (mid-epoch: the step within the epoch; on resume that many batches of
the same epoch order are skipped) and exits with status 130.
"""
from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, TextIO

import torch

from ..files import OutputError, atomic_write_text, check_writable_dir
from . import checkpointing as ck
from .distrun import DistEnv, StopFlag
from .errors import CLIError
from .imagedata import (SeededImages, ShardSampler, eval_data_config, eval_transform, make_loader, sample_seed,
                        scan_folder, train_transform)
from .imagemodel import build_model, evaluate, format_eval, init_from_vit, parse_model_kwargs, vit_name_for

__all__ = ["run_train", "parse_model_kwargs", "build_model", "RESUME_FREE"]

#: Config keys that may differ between a run and its resume (they do not change the numbers).
RESUME_FREE = ("data_dir", "val_dir", "output", "resume", "init_from_vit", "vit_model", "workers", "progress", "force",
               "compile", "check_images", "bad_images", "device")
METRICS = "metrics.jsonl"
LAST = "last.pth"
BEST = "best.pth"


def _split_dirs(data_dir: str, val_dir: Optional[str]) -> tuple[str, Optional[str]]:
    p = Path(data_dir)
    if not p.exists():
        raise CLIError(f"data folder {data_dir!r} does not exist")
    if not p.is_dir():
        raise CLIError(f"data folder {data_dir!r} is not a folder")
    train = p / "train" if (p / "train").is_dir() else None
    if train is None:
        raise CLIError(f"data folder {data_dir!r} has no train/ sub-folder (expected DIR/train/<class>/<image> "
                       f"and DIR/val/<class>/<image>)")
    val = val_dir or (str(p / "val") if (p / "val").is_dir() else None)
    return str(train), val


def _check_output(out: str, *, resume: Optional[str], force: bool) -> Path:
    try:
        o = check_writable_dir(out)
    except OutputError as e:
        raise CLIError(str(e))
    previous = [f for f in (LAST, METRICS) if (o / f).exists()]
    if previous and not resume and not force:
        raise CLIError(f"output folder {out!r} holds a previous run ({', '.join(previous)}); continue it with "
                       f"--resume {str(o / LAST)!r}, or pass --force to overwrite it")
    return o


def _scan(folder: str, what: str, cfg: Dict[str, Any], dist: DistEnv):
    """:func:`scan_folder` on every rank, but only rank 0 opens the images; its verdict (an error,
    or the corrupt files to leave out) is broadcast, so every rank has the same sample list."""
    check, bad = cfg.get("check_images", "verify"), cfg.get("bad_images", "error")
    if not dist.active:
        return scan_folder(folder, what=what, check=check, bad_images=bad)
    import torch.distributed as tdist

    verdict: List[Any] = [None]
    if dist.main:
        try:
            verdict = [("ok", scan_folder(folder, what=what, check=check, bad_images=bad).skipped)]
        except CLIError as e:
            verdict = [("error", str(e))]
    tdist.broadcast_object_list(verdict, src=0)
    kind, payload = verdict[0]
    if kind == "error":
        raise CLIError(payload)
    scan = scan_folder(folder, what=what, check="none")
    drop = set(payload)
    return type(scan)(scan.root, scan.classes, [x for x in scan.samples if x[0] not in drop], list(payload))


def run_train(cfg: Dict[str, Any], stream: Optional[TextIO] = None) -> Dict[str, Any]:
    """Train as configured by ``cfg`` (the ``fusedkat train`` options as a dict); returns the last metrics."""
    stream = stream or sys.stdout
    dist = DistEnv(cfg.get("device", "auto"))
    try:
        return _run(cfg, dist, stream)
    finally:
        dist.close()


def _run(cfg: Dict[str, Any], dist: DistEnv, stream: TextIO) -> Dict[str, Any]:
    say = (lambda *a: print(*a, file=stream, flush=True)) if dist.main else (lambda *a: None)
    if cfg.get("resume") and cfg.get("init_from_vit"):
        raise CLIError("--resume and --init-from-vit exclude each other (a resumed run has its weights)")
    # ---- every check before any training -----------------------------------------------------------
    out = _check_output(cfg["output"], resume=cfg.get("resume"), force=cfg.get("force", False))
    train_dir, val_dir = _split_dirs(cfg["data_dir"], cfg.get("val_dir"))
    tr = _scan(train_dir, "training folder", cfg, dist)
    va = _scan(val_dir, "validation folder", cfg, dist) if val_dir else None
    if va is not None and va.classes != tr.classes:
        extra = sorted(set(va.classes) ^ set(tr.classes))[:5]
        raise CLIError(f"the validation folder's classes differ from the training folder's (e.g. {extra})")
    for name, s in (("training", tr), ("validation", va)):
        if s is not None and s.skipped:
            say(f"skipped {len(s.skipped)} corrupt {name} images (e.g. {s.skipped[0]})")
    if cfg.get("init_from_vit") and not os.path.isfile(cfg["init_from_vit"]):
        raise CLIError(f"--init-from-vit file not found: {cfg['init_from_vit']}")
    bs, accum, world = int(cfg["batch_size"]), int(cfg.get("grad_accum", 1)), dist.world
    global_batch = bs * accum * world
    cfg = dict(cfg, world_size=world, global_batch=global_batch, num_classes=len(tr.classes))
    if cfg.get("lr") is None:
        cfg["lr"] = cfg.get("base_lr", 1e-3) * global_batch / 1024
    steps_per_epoch = (len(tr.samples) // world) // (bs * accum)
    if steps_per_epoch < 1:
        raise CLIError(f"global batch {global_batch} (batch {bs} x {world} processes x {accum} accumulation) is "
                       f"larger than the training set ({len(tr.samples)} images)")
    mixup_on = cfg.get("mixup", 0.0) > 0 or cfg.get("cutmix", 0.0) > 0
    if mixup_on and bs % 2:
        raise CLIError(f"mixup/CutMix needs an even per-process batch, got --batch-size {bs} (or pass --mixup 0 --cutmix 0)")
    ckpt = None
    if cfg.get("resume"):
        ckpt = ck.load_checkpoint(cfg["resume"])
        ck.check_resume(ckpt, cfg, path=cfg["resume"], free=RESUME_FREE, classes=tr.classes)
    # ---- model, optimizer, schedule ------------------------------------------------------------------
    from timm.data import Mixup
    from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
    from timm.optim import create_optimizer_v2
    from timm.scheduler import create_scheduler_v2
    from timm.utils import ModelEmaV3

    torch.manual_seed(cfg["seed"])
    model = build_model(cfg["model"], len(tr.classes), img_size=cfg.get("img_size"),
                        model_kwargs=cfg.get("model_kwargs"), drop_path=cfg.get("drop_path", 0.0))
    if cfg.get("init_from_vit") and ckpt is None:
        import io

        init_from_vit(model, cfg["init_from_vit"], cfg.get("vit_model") or vit_name_for(cfg["model"]),
                      stream if dist.main else io.StringIO())
    model.to(dist.device)
    data_cfg = eval_data_config(model, cfg.get("img_size"))
    optimizer = create_optimizer_v2(model, opt=cfg.get("opt", "adamw"), lr=cfg["lr"],
                                    weight_decay=cfg.get("weight_decay", 0.05))
    scheduler, _ = create_scheduler_v2(
        optimizer, sched=cfg.get("sched", "cosine"), num_epochs=cfg["epochs"], warmup_epochs=cfg.get("warmup_epochs", 5),
        warmup_lr=cfg.get("warmup_lr", 1e-6), min_lr=cfg.get("min_lr", 1e-5), step_on_epochs=False,
        updates_per_epoch=steps_per_epoch)
    ema = ModelEmaV3(model, decay=cfg.get("ema_decay", 0.9998)) if cfg.get("ema") else None
    amp = cfg.get("amp", "bf16") if dist.device.type == "cuda" else "off"
    scaler = torch.amp.GradScaler("cuda") if amp == "fp16" else None
    start_epoch, start_step, global_step, history = 0, 0, 0, []
    loss_carry = (0.0, 0)  # (sum of step losses, steps) of the epoch in progress, for a mid-epoch resume
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        if ema is not None and ckpt.get("ema") is not None:
            ema.module.load_state_dict(ckpt["ema"])
        if scaler is not None and ckpt.get("scaler") is not None:
            scaler.load_state_dict(ckpt["scaler"])
        start_epoch, start_step, global_step = ckpt["epoch"], ckpt["step_in_epoch"], ckpt["global_step"]
        history, loss_carry = list(ckpt.get("history") or []), tuple(ckpt.get("epoch_loss") or (0.0, 0))
        ck.set_rng_states(ckpt["rng"])
        say(f"resumed {cfg['resume']}: epoch {start_epoch + 1}, step {start_step}/{steps_per_epoch} of it, "
            f"{global_step} steps done")
    runner: torch.nn.Module = model
    if dist.active:
        runner = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[dist.device.index] if dist.device.type == "cuda" else None)
    eval_model: torch.nn.Module = model
    if cfg.get("compile", True):
        runner, eval_model = torch.compile(runner), torch.compile(model)
    # ---- data ---------------------------------------------------------------------------------------
    tf = train_transform(data_cfg, aug=cfg.get("aug", True), auto_augment=cfg.get("auto_augment"),
                         re_prob=cfg.get("reprob", 0.25), color_jitter=cfg.get("color_jitter", 0.4))
    train_ds = SeededImages(tr.samples, tf, seed=cfg["seed"])
    sampler = ShardSampler(len(train_ds), world=world, rank=dist.rank, shuffle=True, seed=cfg["seed"])
    workers = int(cfg.get("workers", 4))
    pin = dist.device.type == "cuda"
    train_loader = make_loader(train_ds, sampler, bs, workers=workers, drop_last=True, pin_memory=pin)
    val_loader = None
    if va is not None:
        val_ds = SeededImages(va.samples, eval_transform(data_cfg), seed=cfg["seed"])
        val_loader = make_loader(val_ds, ShardSampler(len(val_ds), world=world, rank=dist.rank, shuffle=False),
                                 cfg.get("val_batch_size") or bs, workers=workers, drop_last=False, pin_memory=pin)
    mixup = None
    if mixup_on:
        mixup = Mixup(mixup_alpha=cfg.get("mixup", 0.0), cutmix_alpha=cfg.get("cutmix", 0.0),
                      label_smoothing=cfg.get("smoothing", 0.0), num_classes=len(tr.classes))
        criterion: torch.nn.Module = SoftTargetCrossEntropy()
    elif cfg.get("smoothing", 0.0) > 0:
        criterion = LabelSmoothingCrossEntropy(smoothing=cfg["smoothing"])
    else:
        criterion = torch.nn.CrossEntropyLoss()
    autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16 if amp == "bf16" else torch.float16)) \
        if amp != "off" else contextlib.nullcontext
    n_params = sum(p.numel() for p in model.parameters())
    say(f"training {cfg['model']} ({n_params:,} parameters, {len(tr.classes)} classes) on {len(tr.samples)} images"
        f"{f', validating on {len(va.samples)}' if va else ' (no val/ folder: no validation)'}; {world} process(es) on "
        f"{dist.device.type}, global batch {global_batch}, lr {cfg['lr']:.3g}, {steps_per_epoch} steps/epoch, "
        f"{cfg['epochs']} epochs, amp {amp}, compile {'on' if cfg.get('compile', True) else 'off'}")
    atomic_write_text(out / "config.json", json.dumps(cfg, indent=2, default=str)) if dist.main else None

    def state(epoch: int, step: int, epoch_loss, metrics) -> Dict[str, Any]:
        return {"config": cfg, "classes": tr.classes, "model": model.state_dict(),
                "ema": ema.module.state_dict() if ema is not None else None, "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict() if scaler is not None else None,
                "epoch": epoch, "step_in_epoch": step, "global_step": global_step, "rng": ck.rng_states(),
                "history": history, "epoch_loss": epoch_loss, "metrics": metrics, "data_config": data_cfg}

    def save(name: str, st: Dict[str, Any]) -> None:
        dist.barrier()
        if dist.main:
            ck.save_checkpoint(str(out / name), st)
        dist.barrier()

    last_metrics: Dict[str, Any] = history[-1] if history else {}
    best = max((h.get("top1", -1.0) for h in history), default=-1.0)
    show = dist.main and cfg.get("progress", True)
    with StopFlag() as stop:
        for epoch in range(start_epoch, cfg["epochs"]):
            step = start_step if epoch == start_epoch else 0
            loss_sum, loss_n = loss_carry if epoch == start_epoch else (0.0, 0)
            loss_acc = torch.tensor(loss_sum, dtype=torch.float64, device=dist.device)
            sampler.set_epoch(epoch, skip=step * bs * accum)
            train_ds.set_epoch(epoch)
            model.train()
            bar = None
            if show:
                from tqdm import tqdm

                bar = tqdm(total=steps_per_epoch, initial=step, desc=f"epoch {epoch + 1}/{cfg['epochs']}",
                           unit="step", file=sys.stderr, dynamic_ncols=True)
            t0, images, micro = time.perf_counter(), 0, 0
            t_timed, timed_from = t0, 0  # img/s leaves out each epoch's first step (compilation, loader start)
            for x, y in train_loader:
                if step >= steps_per_epoch:
                    break
                if micro == 0:  # an optimizer step begins: its own random streams
                    _seed_step(sample_seed(cfg["seed"], epoch, step, dist.rank, 7))
                x = x.to(dist.device, non_blocking=True)
                y = y.to(dist.device, non_blocking=True)
                if mixup is not None:
                    x, y = mixup(x, y)
                last_micro = micro == accum - 1
                sync = runner.no_sync() if (dist.active and not last_micro) else contextlib.nullcontext()
                with sync:
                    with autocast():
                        loss = criterion(runner(x), y) / accum
                    (scaler.scale(loss) if scaler is not None else loss).backward()
                loss_acc += loss.detach().double()
                micro += 1
                if not last_micro:
                    continue
                micro = 0
                if cfg.get("clip_grad"):
                    if scaler is not None:
                        scaler.unscale_(optimizer)
                    torch.nn.utils.clip_grad_norm_(model.parameters(), cfg["clip_grad"])
                if scaler is not None:
                    scaler.step(optimizer)
                    scaler.update()
                else:
                    optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                step, global_step, loss_n = step + 1, global_step + 1, loss_n + 1
                scheduler.step_update(num_updates=global_step)
                if ema is not None:
                    ema.update(model, step=global_step)
                images += bs * accum * world
                if images == bs * accum * world:
                    t_timed, timed_from = time.perf_counter(), images
                if bar is not None:
                    bar.update(1)
                    if step % 10 == 0 or step == steps_per_epoch:  # reading the loss syncs the GPU
                        bar.set_postfix(loss=f"{float(loss_acc) / loss_n:.4f}",
                                        img_s=f"{(images - timed_from) / max(1e-9, time.perf_counter() - t_timed):.0f}")
                if dist.sum([1.0 if stop.set else 0.0])[0] > 0:
                    if bar is not None:
                        bar.close()
                    save(LAST, state(epoch, step, (float(loss_acc), loss_n), last_metrics or None))
                    if dist.main:
                        print(f"fusedkat train: interrupted at epoch {epoch + 1} step {step}/{steps_per_epoch}; "
                              f"saved {out / LAST}; continue with --resume {out / LAST}", file=sys.stderr, flush=True)
                    raise SystemExit(130)
            if bar is not None:
                bar.close()
            t_end = time.perf_counter()
            epoch_s, timed_s = t_end - t0, t_end - t_timed
            tl_sum, tl_n = dist.sum([float(loss_acc), float(loss_n)])
            rec: Dict[str, Any] = {"epoch": epoch + 1, "step": global_step,
                                   "train_loss": tl_sum / max(1.0, tl_n),
                                   "lr": optimizer.param_groups[0]["lr"], "epoch_s": epoch_s,
                                   "images_per_s": (images - timed_from) / timed_s if images > timed_from else float("nan")}
            if val_loader is not None:
                rec.update(evaluate(eval_model, val_loader, dist, autocast))
                if ema is not None:
                    rec.update({f"ema_{k}": v for k, v in evaluate(ema.module, val_loader, dist, autocast).items()})
            history.append(rec)
            last_metrics = rec
            say(format_epoch(rec, cfg["epochs"]))
            if dist.main:
                _write_metrics(out, history)
            save(LAST, state(epoch + 1, 0, (0.0, 0), rec))
            if rec.get("top1", -1.0) > best and val_loader is not None:
                best = rec["top1"]
                save(BEST, state(epoch + 1, 0, (0.0, 0), rec))
            start_step = 0
    if last_metrics.get("top1") is not None:
        say(f"final: {format_eval(last_metrics)} after {cfg['epochs']} epochs; checkpoint {out / LAST}")
    return last_metrics


def _seed_step(s: int) -> None:
    """Seed torch (dropout, drop-path), numpy and python (timm's Mixup) for one optimizer step."""
    import random

    import numpy as np

    torch.manual_seed(s)
    np.random.seed(s % 2**32)
    random.seed(s)


def format_epoch(rec: Dict[str, Any], epochs: int) -> str:
    s = (f"epoch {rec['epoch']}/{epochs}: train loss {rec['train_loss']:.4f}, lr {rec['lr']:.3g}, "
         f"{rec['images_per_s']:.0f} img/s, {rec['epoch_s']:.1f} s")
    if "top1" in rec:
        s += f" | val {format_eval(rec)}"
    if "ema_top1" in rec:
        s += f" | EMA top-1 {rec['ema_top1']:.2f}%"
    return s


def _write_metrics(out: Path, history: List[Dict[str, Any]]) -> None:
    """metrics.jsonl (one JSON object per epoch) and curves.png, both rewritten atomically."""
    atomic_write_text(out / METRICS, "".join(json.dumps(h) + "\n" for h in history))
    from .plots import plot_train_metrics

    plot_train_metrics(history, out / "curves.png")

"""Image folders for ``fusedkat train`` / ``fusedkat eval``: checking, transforms and loaders.

A data folder is ImageNet-style: one sub-folder per class, images inside (any depth), classes in
sorted folder-name order (torchvision ``ImageFolder``'s convention, so ImageNet's synset folders map
onto the official 1000-class heads).  :func:`scan_folder` checks a folder *before* any training
starts and raises :class:`~fusedkat.app.errors.CLIError` with one line for a missing or empty folder,
a class folder without images, or a corrupt image (or skips corrupt images, counting them).

Randomness is tied to samples, not to processes: :class:`SeededImages` seeds the augmentation of
sample ``i`` in epoch ``e`` from ``(seed, e, i)``, so the same image gets the same crop whichever
rank or DataLoader worker loads it and whether or not the run was resumed mid-epoch.
"""
from __future__ import annotations

import os
import random
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from .errors import CLIError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
CHECK_MODES = ("verify", "full", "none")


@dataclass(frozen=True)
class FolderScan:
    """What :func:`scan_folder` found: ``samples`` are ``(path, class index)`` of the usable images."""

    root: str
    classes: List[str]
    samples: List[Tuple[str, int]]
    skipped: List[str]  # corrupt images left out (``bad_images="skip"``)


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


def _check_image(path: str, mode: str) -> Optional[str]:
    """``None`` if PIL can read ``path`` (``verify``: header and structure; ``full``: decode), else why not."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            if mode == "full":
                im.convert("RGB")
            else:
                im.verify()
    except Exception as e:  # PIL raises many types for bad files
        return f"{type(e).__name__}: {' '.join(str(e).split())[:120]}"
    return None


def scan_folder(root: str, *, what: str = "data folder", check: str = "verify", bad_images: str = "error",
                workers: int = 8) -> FolderScan:
    """Find the classes and images under ``root`` and check every image (``check``: verify/full/none).

    ``bad_images="error"`` raises on the first corrupt image found; ``"skip"`` leaves them out.
    """
    if check not in CHECK_MODES:
        raise CLIError(f"--check-images must be one of {', '.join(CHECK_MODES)}, got {check!r}")
    if bad_images not in ("error", "skip"):
        raise CLIError(f"--bad-images must be error or skip, got {bad_images!r}")
    p = Path(root)
    if not p.exists():
        raise CLIError(f"{what} {root!r} does not exist")
    if not p.is_dir():
        raise CLIError(f"{what} {root!r} is not a folder")
    classes = sorted(d.name for d in os.scandir(p) if d.is_dir() and not d.name.startswith("."))
    if not classes:
        loose = any(_is_image(f.name) for f in os.scandir(p) if f.is_file())
        hint = " (images must be in one sub-folder per class)" if loose else ""
        raise CLIError(f"{what} {root!r} has no class folders{hint}")
    samples: List[Tuple[str, int]] = []
    for ci, c in enumerate(classes):
        found = []
        for dirpath, dirnames, filenames in os.walk(p / c, followlinks=True):
            dirnames.sort()
            found.extend(os.path.join(dirpath, f) for f in sorted(filenames) if _is_image(f))
        if not found:
            raise CLIError(f"class folder {str(p / c)!r} has no images ({', '.join(IMAGE_EXTENSIONS[:3])}, ...)")
        samples.extend((f, ci) for f in found)
    skipped: List[str] = []
    if check != "none":
        with ThreadPoolExecutor(max(1, workers)) as pool:
            problems = list(pool.map(lambda s: _check_image(s[0], check), samples))
        bad = [(s[0], why) for s, why in zip(samples, problems) if why is not None]
        if bad and bad_images == "error":
            more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
            raise CLIError(f"corrupt image {bad[0][0]!r}: {bad[0][1]}{more}; pass --bad-images skip to leave "
                           f"corrupt images out")
        skipped = [b[0] for b in bad]
        bad_set = set(skipped)
        samples = [s for s in samples if s[0] not in bad_set]
        counts = np.bincount([s[1] for s in samples], minlength=len(classes))
        if (counts == 0).any():
            c = classes[int(np.argmin(counts))]
            raise CLIError(f"class folder {str(p / c)!r} has no readable images")
    return FolderScan(str(p), classes, samples, skipped)


class SeededImages(Dataset):
    """``(image [3, H, W] float32, label int)`` from a scan's samples through ``transform``.

    Before transforming sample ``i`` the python/numpy/torch RNGs are seeded from
    ``(seed, epoch, i)`` (and restored afterwards), so augmentation is a function of the sample,
    not of which process or worker loads it.  Call :meth:`set_epoch` before iterating an epoch.
    """

    def __init__(self, samples: Sequence[Tuple[str, int]], transform: Callable, seed: int = 0) -> None:
        from torchvision.datasets.folder import pil_loader

        self.samples = list(samples)
        self.transform = transform
        self.seed = int(seed)
        self.epoch = 0
        self._load = pil_loader

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int):
        path, label = self.samples[i]
        try:
            img = self._load(path)
        except Exception as e:
            raise RuntimeError(f"cannot read image {path!r}: {type(e).__name__}: {e}") from e
        s = sample_seed(self.seed, self.epoch, i)
        py, npy, th = random.getstate(), np.random.get_state(), torch.random.get_rng_state()
        try:
            random.seed(s)
            np.random.seed(s % 2**32)
            torch.manual_seed(s)
            x = self.transform(img)
        finally:
            random.setstate(py)
            np.random.set_state(npy)
            torch.random.set_rng_state(th)
        return x, label


def sample_seed(*parts: int) -> int:
    """A 63-bit seed mixed from integers (numpy SeedSequence: well spread, stable across versions)."""
    return int(np.random.SeedSequence([int(p) % 2**32 for p in parts]).generate_state(1, np.uint64)[0] >> 1)


class ShardSampler(Sampler[int]):
    """Indices of one rank's shard of an epoch, optionally skipping the first ``skip`` of them.

    ``shuffle``: the permutation of ``torch.randperm(n)`` seeded with ``seed + epoch`` (the same on
    every rank); the epoch is cut to a multiple of ``world`` and rank ``r`` takes positions
    ``r, r + world, ...`` -- so a global batch of ``world * b`` images is the same set of images as
    one process's batch of ``world * b`` (what makes DDP equal one process).  Without ``shuffle``
    (evaluation) every index is kept, none repeated, the shards being ``r::world``.
    """

    def __init__(self, n: int, *, world: int = 1, rank: int = 0, shuffle: bool = True, seed: int = 0) -> None:
        self.n, self.world, self.rank, self.shuffle, self.seed = n, world, rank, shuffle, seed
        self.epoch, self.skip = 0, 0

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        self.epoch, self.skip = int(epoch), int(skip)

    def _indices(self) -> List[int]:
        if not self.shuffle:
            return list(range(self.rank, self.n, self.world))
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        order = torch.randperm(self.n, generator=g)[: (self.n // self.world) * self.world]
        return order[self.rank :: self.world].tolist()

    def __iter__(self) -> Iterator[int]:
        return iter(self._indices()[self.skip :])

    def __len__(self) -> int:
        full = (self.n - self.rank + self.world - 1) // self.world if not self.shuffle else self.n // self.world
        return max(0, full - self.skip)


def eval_data_config(model: torch.nn.Module, img_size: Optional[int]) -> dict:
    """The model's own preprocessing (pretrained_cfg: crop_pct, interpolation, mean/std), at ``img_size``."""
    from timm.data import resolve_model_data_config

    cfg = resolve_model_data_config(model)
    if img_size:
        cfg["input_size"] = (3, int(img_size), int(img_size))
    return cfg


def eval_transform(data_cfg: dict) -> Callable:
    from timm.data import create_transform

    return create_transform(**data_cfg, is_training=False)


def train_transform(data_cfg: dict, *, aug: bool, auto_augment: Optional[str], re_prob: float,
                    color_jitter: float) -> Callable:
    """timm's training transform (random resized crop, flip, RandAugment, random erasing); with
    ``aug=False`` the evaluation transform (deterministic)."""
    from timm.data import create_transform

    if not aug:
        return eval_transform(data_cfg)
    return create_transform(
        input_size=data_cfg["input_size"], is_training=True, auto_augment=auto_augment,
        interpolation=data_cfg.get("interpolation", "bicubic"), mean=data_cfg["mean"], std=data_cfg["std"],
        re_prob=re_prob, re_mode="pixel", re_count=1, color_jitter=color_jitter)


def make_loader(dataset: Dataset, sampler: ShardSampler, batch_size: int, *, workers: int, drop_last: bool,
                pin_memory: bool) -> torch.utils.data.DataLoader:
    """A DataLoader over ``sampler`` that draws nothing from the global torch RNG (own generator)."""
    return torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, sampler=sampler, num_workers=workers, drop_last=drop_last,
        pin_memory=pin_memory, generator=torch.Generator().manual_seed(0),
        persistent_workers=False, prefetch_factor=4 if workers > 0 else None)

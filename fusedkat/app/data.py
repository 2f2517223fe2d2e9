"""Data sets that ship inside installed packages, so the demo never downloads anything.

The demo uses scikit-learn's bundled handwritten digits (UCI "optdigits" test set): 1797 grey images
of 8x8 pixels, 10 classes, values 0..16. It is small enough for a 2-core CPU and hard enough that an
untrained model sits at 10% accuracy.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor


@dataclass(frozen=True)
class Split:
    """Images ``[N, 1, 8, 8]`` float32 (standardised) and labels ``[N]`` int64."""

    images: Tensor
    labels: Tensor

    def __len__(self) -> int:
        return int(self.labels.shape[0])


def load_digits_split(test_fraction: float = 0.2, seed: int = 0) -> tuple[Split, Split]:
    """Stratified train/test split of sklearn's digits, standardised with the train set's statistics.

    Returns ``(train, test)``; with the defaults 1437 train and 360 test images.
    """
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    from sklearn.datasets import load_digits  # bundled with scikit-learn: no download
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    images = bunch.images.astype(np.float32)  # (1797, 8, 8), 0..16
    labels = bunch.target.astype(np.int64)
    tr_x, te_x, tr_y, te_y = train_test_split(
        images, labels, test_size=test_fraction, random_state=seed, stratify=labels
    )
    # One mean/std for all pixels (not per pixel: border pixels are almost always 0).
    mean, std = float(tr_x.mean()), float(tr_x.std())
    norm = lambda a: torch.from_numpy((a - mean) / std).unsqueeze(1).contiguous()  # noqa: E731
    return (
        Split(norm(tr_x), torch.from_numpy(tr_y)),
        Split(norm(te_x), torch.from_numpy(te_y)),
    )


def batches(split: Split, batch_size: int, generator: torch.Generator, *, shuffle: bool = True):
    """Yield ``(images, labels)`` minibatches of exactly ``batch_size`` (the ragged tail is dropped,
    so a compiled model sees one static shape and never recompiles)."""
    n = len(split)
    if batch_size > n:
        raise ValueError(f"batch size {batch_size} is larger than the data set ({n} images)")
    order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
    for start in range(0, n - batch_size + 1, batch_size):
        idx = order[start : start + batch_size]
        yield split.images[idx], split.labels[idx]

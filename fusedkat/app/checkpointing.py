"""Training checkpoints that never lose work: save, load, and check a resume against the run's config.

A checkpoint is one ``torch.save``'d dict written through :func:`fusedkat.files.atomic_save`
(temporary file in the same folder, then rename), so a crash or Ctrl-C while saving leaves the
previous checkpoint intact.  It holds::

    format       "fusedkat-train/1"
    config       the run's full configuration (dict)
    classes      class folder names, in label order
    model        model state_dict (unwrapped: no DDP / torch.compile prefixes)
    ema          EMA model state_dict or None
    optimizer, scheduler, scaler   their state_dicts (scaler None without fp16)
    epoch        the epoch in progress (0-based)
    step_in_epoch  optimizer steps already done in that epoch (0 at an epoch boundary)
    global_step  optimizer steps done in total
    rng          python / numpy / torch / CUDA RNG states (of rank 0)
    history      per-epoch metrics so far
    metrics      last validation metrics (or None)
"""
from __future__ import annotations

import random
from typing import Any, Dict, Iterable, Optional

import numpy as np
import torch

from ..files import atomic_save
from .errors import CLIError

FORMAT = "fusedkat-train/1"


def rng_states() -> Dict[str, Any]:
    """The python, numpy, torch (CPU) and CUDA RNG states of this process."""
    return {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.random.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else None,
    }


def set_rng_states(states: Dict[str, Any]) -> None:
    random.setstate(states["python"])
    np.random.set_state(states["numpy"])
    torch.random.set_rng_state(states["torch"])
    if states.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def save_checkpoint(path: str, state: Dict[str, Any]) -> None:
    """Write ``state`` (see the module docstring) atomically to ``path``."""
    state = dict(state, format=FORMAT)
    atomic_save(path, lambda f: torch.save(state, f))


def is_train_checkpoint(obj: Any) -> bool:
    return isinstance(obj, dict) and obj.get("format") == FORMAT


def read_file(path: str) -> Any:
    """``torch.load`` a checkpoint on the CPU, with one-line errors for a missing or unreadable file."""
    import os

    if not os.path.isfile(path):
        raise CLIError(f"checkpoint file not found: {path}")
    try:
        # Our checkpoints hold numpy/python RNG states; weights_only's allow-list does not cover them.
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:
        raise CLIError(f"could not read checkpoint {path}: {type(e).__name__}: {' '.join(str(e).split())[:300]}")


def load_checkpoint(path: str) -> Dict[str, Any]:
    """A checkpoint written by ``fusedkat train`` (raises :class:`CLIError` for anything else)."""
    obj = read_file(path)
    if not is_train_checkpoint(obj):
        raise CLIError(f"{path} is not a fusedkat train checkpoint (to start from other weights use "
                       f"--init-from-vit, or evaluate it with fusedkat eval)")
    return obj


def config_differences(saved: Dict[str, Any], now: Dict[str, Any], free: Iterable[str]) -> list[str]:
    """``"key: saved -> now"`` for every config key (other than ``free`` ones) that differs."""
    free = set(free)
    keys = sorted((set(saved) | set(now)) - free)
    return [f"{k}: {saved.get(k)!r} -> {now.get(k)!r}" for k in keys if saved.get(k) != now.get(k)]


def check_resume(ckpt: Dict[str, Any], config: Dict[str, Any], *, path: str, free: Iterable[str],
                 classes: Optional[list] = None) -> None:
    """Refuse to resume a checkpoint of another model, another config or another class list."""
    saved = ckpt.get("config") or {}
    if saved.get("model") != config.get("model") or saved.get("model_kwargs") != config.get("model_kwargs"):
        raise CLIError(f"{path} is a checkpoint of {saved.get('model')!r} {saved.get('model_kwargs') or ''}, "
                       f"not of {config.get('model')!r} {config.get('model_kwargs') or ''}".replace(" ,", ","))
    diff = config_differences(saved, config, free)
    if diff:
        raise CLIError(f"cannot resume {path} with a different config ({'; '.join(diff)}); give the same "
                       f"options as the interrupted run")
    if classes is not None and list(ckpt.get("classes") or []) != list(classes):
        raise CLIError(f"cannot resume {path}: the data folder's classes differ from the checkpoint's")

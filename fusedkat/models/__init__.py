"""KAT vision transformers for timm and ViT -> KAT conversion.

The timm-dependent parts (:mod:`.kat`, :mod:`.convert`) load on first attribute access, or as
soon as timm is imported (``fusedkat/__init__`` registers the KAT models in timm's registry then),
so that checkpoint checks (:mod:`.checkpoint`) never pay for importing timm.
"""
from __future__ import annotations

import importlib
from typing import Any

from .checkpoint import KATCheckpointError, checkpoint_format, validate_state_dict
# eager (torch, fusedkat.nn and fusedkat.init only; no timm): the *function* ``kanify`` must own
# this package's ``kanify`` attribute, which importing the submodule ``.kanify`` would otherwise
# take over, whatever imports it first
from .kanify import KanifyReport, kanify

_LAZY = {
    "KAT": "kat", "MODEL_CONFIGS": "kat", "checkpoint_filter_fn": "kat",
    "vit_to_kat": "convert", "activation_target": "convert",
    "mimetic_init_": "mimetic", "ortho_like": "mimetic",
}

__all__ = ["KAT", "MODEL_CONFIGS", "KATCheckpointError", "checkpoint_format", "validate_state_dict",
           "checkpoint_filter_fn", "vit_to_kat", "activation_target", "mimetic_init_", "ortho_like",
           "kanify", "KanifyReport"]


def __getattr__(name: str) -> Any:
    """Import ``.kat`` / ``.convert`` / ``.mimetic`` on first use of one of their names (PEP 562)."""
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    if name in ("kat", "convert", "mimetic"):
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))

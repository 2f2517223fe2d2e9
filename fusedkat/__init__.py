"""fusedkat: the Kolmogorov-Arnold Transformer (KAT) for torch.compile, with fused GPU kernels.

``import fusedkat`` is cheap: it imports only the standard library.  The ``fusedkat::*`` custom ops
(:mod:`fusedkat.ops`) are registered as soon as torch is imported (before or after fusedkat), and
the subpackages load on first attribute access (``fusedkat.nn``, ``fusedkat.init``,
``fusedkat.models``, ``fusedkat.export``, ``fusedkat.group_rational``, ...).  Nothing ever compiles a kernel or imports
the CUDA DSL, inductor or timm at import.  The KAT models (``kat_tiny_patch16_224``, ...) are
registered in timm's registry as soon as timm is imported, before or after fusedkat.  Both use the
one after-import mechanism of :mod:`fusedkat._import_hooks`.
"""
from __future__ import annotations

import importlib
from typing import Any

from ._import_hooks import after_import as _after_import

__version__ = "0.1.0"

_LAZY_SUBMODULES = ("ops", "init", "nn", "models", "export")
_LAZY_OPS = ("group_rational", "rational_linear", "use_backend")
_LAZY_MODELS = ("kanify",)  # from fusedkat.models (imports timm when first used)

__all__ = ["ops", "init", "nn", "models", "export", "group_rational", "rational_linear", "use_backend", "kanify",
           "__version__"]


def __getattr__(name: str) -> Any:
    """Import the subpackages and the op functions on first access (PEP 562)."""
    if name in _LAZY_SUBMODULES:
        return importlib.import_module(f".{name}", __name__)
    if name in _LAZY_OPS:
        return getattr(importlib.import_module(".ops", __name__), name)
    if name in _LAZY_MODELS:
        return getattr(importlib.import_module(".models", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY_SUBMODULES) | set(_LAZY_OPS) | set(_LAZY_MODELS))


def _register_ops() -> None:
    importlib.import_module(".ops", __name__)  # torch.library registrations of fusedkat::*


def _register_timm_models() -> None:
    importlib.import_module(".models.kat", __name__)  # its @register_model calls fill timm's registry


_after_import("torch", _register_ops)
_after_import("timm", _register_timm_models)

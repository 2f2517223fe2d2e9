"""fusedkat: the Kolmogorov-Arnold Transformer (KAT) for torch.compile, with fused GPU kernels.

``import fusedkat`` registers the ``fusedkat::*`` custom ops (:mod:`fusedkat.ops`) and nothing
heavier: it never compiles a kernel, never imports the CUDA DSL, inductor or timm.  The other
subpackages (``fusedkat.nn``, ``fusedkat.init``, ``fusedkat.models``) load on first attribute
access.  The KAT models (``kat_tiny_patch16_224``, ...) are registered in timm's registry as soon
as timm is imported, before or after fusedkat (see :mod:`fusedkat._import_hooks`).
"""
from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

from . import ops
from ._import_hooks import after_import as _after_import
from .ops import group_rational, rational_linear, use_backend

_LAZY_SUBMODULES = ("init", "nn", "models")

__all__ = ["ops", "init", "nn", "models", "group_rational", "rational_linear", "use_backend", "__version__"]


def __getattr__(name: str) -> Any:
    """Import ``fusedkat.init`` / ``.nn`` / ``.models`` on first access (PEP 562)."""
    if name in _LAZY_SUBMODULES:
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY_SUBMODULES))


def _register_timm_models() -> None:
    importlib.import_module(".models", __name__)  # its @register_model decorators fill timm's registry


_after_import("timm", _register_timm_models)

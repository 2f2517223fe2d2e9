"""fusedkat: the Kolmogorov-Arnold Transformer (KAT) for torch.compile, with fused GPU kernels.

``import fusedkat`` registers the ``fusedkat::*`` custom ops. It never compiles a kernel and never
imports the CUDA DSL; GPU kernels are compiled lazily on first use.  It also registers the KAT
models (``kat_tiny_patch16_224``, ...) in timm's registry.
"""
from __future__ import annotations

__version__ = "0.1.0"

from . import ops
from .ops import group_rational, rational_linear, use_backend
from . import init, nn  # noqa: E402  (no scipy at import: fits come from a shipped table)
from . import models  # noqa: E402  registers kat_* models in timm's registry

__all__ = ["ops", "init", "nn", "models", "group_rational", "rational_linear", "use_backend", "__version__"]

"""fusedkat: the Kolmogorov-Arnold Transformer (KAT) for torch.compile, with fused GPU kernels.

``import fusedkat`` registers the ``fusedkat::*`` custom ops. It never compiles a kernel and never
imports the CUDA DSL; GPU kernels are compiled lazily on first use.
"""
from __future__ import annotations

__version__ = "0.1.0"

from . import ops
from .ops import group_rational, rational_linear, use_backend

__all__ = ["ops", "group_rational", "rational_linear", "use_backend", "__version__"]

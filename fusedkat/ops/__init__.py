"""The op layer: the group-rational math, its ``torch.library`` custom ops, and dispatch.

Public API::

    group_rational(x, numerator, denominator, *, form="A") -> Tensor
    rational_linear(x, numerator, denominator, weight, bias=None, *, form="A") -> Tensor
    use_backend("torch" | "cute" | "auto")      # context manager forcing an implementation

Both ops are ``torch.library`` custom ops (``torch.ops.fusedkat.group_rational`` /
``torch.ops.fusedkat.rational_linear``) with fake and autograd implementations, so they work
under ``torch.compile(fullgraph=True)`` as single opaque calls.
"""
from __future__ import annotations

from typing import Optional

from torch import Tensor

from . import rational_math
from .custom_ops import (
    group_rational_backward_op,
    group_rational_op,
    rational_linear_backward_op,
    rational_linear_op,
)
from .dispatch import BACKENDS, choose as choose_backend, use_backend
from .lowering import install_import_hook as _install_lowering_hook
from .rational_math import DEFAULT_FORM, DEFAULT_GROUPS, DEFAULT_ORDER, FORMS, RationalSpec

# Inductor decomposes the ops into fusable torch ops where no fused kernel runs (CPU); registered
# lazily, when inductor is first imported, so that importing fusedkat stays fast.
_install_lowering_hook()

__all__ = [
    "group_rational",
    "rational_linear",
    "use_backend",
    "choose_backend",
    "BACKENDS",
    "FORMS",
    "DEFAULT_FORM",
    "DEFAULT_GROUPS",
    "DEFAULT_ORDER",
    "RationalSpec",
    "rational_math",
]


def group_rational(x: Tensor, numerator: Tensor, denominator: Tensor, *, form: str = DEFAULT_FORM) -> Tensor:
    """Apply the group-rational function F channel-wise.

    Args:
        x: ``[..., K]`` float16/bfloat16/float32/float64. Channel k belongs to group ``k // (K // g)``.
        numerator: ``(1, m+1)`` (shared by all groups, the official layout) or ``(g, m+1)``.
        denominator: ``(g, n)``; g must divide K.
        form: ``"A"`` (official kernels: ``1 + sum |b_i||x|^i``) or ``"B"`` (paper Eq. 9:
            ``1 + |sum b_i x^i|``).

    Returns:
        F(x) with x's shape and dtype. bf16/fp16 are evaluated in fp32 internally, fp64 in fp64.
    """
    return group_rational_op(x, numerator, denominator, form)


def rational_linear(
    x: Tensor,
    numerator: Tensor,
    denominator: Tensor,
    weight: Tensor,
    bias: Optional[Tensor] = None,
    *,
    form: str = DEFAULT_FORM,
) -> Tensor:
    """``F.linear(group_rational(x, numerator, denominator), weight, bias)`` as one op.

    Args:
        x: ``[..., K]``; numerator ``(1|g, m+1)``; denominator ``(g, n)``;
        weight: ``(N, K)`` in x's dtype; bias: ``(N,)`` or None.

    Returns:
        ``[..., N]`` in x's dtype. The backward saves x, not F(x), and recomputes F.
        Under ``torch.autocast`` x/weight/bias are cast to the autocast dtype like ``nn.Linear``.
    """
    return rational_linear_op(x, numerator, denominator, weight, bias, form)

"""Argument checks shared by the eager kernels and the fake (meta) implementations.

Every public op validates through here so that bad input fails the same way in eager mode,
under ``torch.compile`` (on fake tensors) and on every device, with a message naming the shapes.
"""
from __future__ import annotations

from typing import NamedTuple, Optional

import torch

from .rational_math import check_form

_FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


class RationalShape(NamedTuple):
    """What the coefficient shapes say: groups g, degrees m/n, numerator rows (1 or g).  A
    NamedTuple: built on every op call, ~5x cheaper than a frozen dataclass."""

    groups: int
    m: int
    n: int
    numerator_rows: int


def _check_float(name: str, t: torch.Tensor) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in _FLOATS:
        raise TypeError(f"{name} must be a floating tensor (float16/bfloat16/float32/float64), got {t.dtype}")


def check_rational_args(
    x: torch.Tensor, numerator: torch.Tensor, denominator: torch.Tensor, form: str
) -> RationalShape:
    """Validate ``group_rational`` arguments; return the derived :class:`RationalShape`.

    x: ``[..., K]`` floating; numerator: ``(1 or g, m+1)``; denominator: ``(g, n)``; K % g == 0.
    """
    check_form(form)
    _check_float("x", x)
    _check_float("numerator", numerator)
    _check_float("denominator", denominator)
    if x.dim() < 1:
        raise ValueError(f"x must have at least one dimension [..., K], got a 0-d tensor")
    if numerator.dim() != 2:
        raise ValueError(
            f"numerator must be 2-D (rows, m+1) with rows 1 or num_groups, got shape {tuple(numerator.shape)}"
        )
    if denominator.dim() != 2:
        raise ValueError(
            f"denominator must be 2-D (num_groups, n), got shape {tuple(denominator.shape)}"
        )
    g, n = denominator.shape
    rows, m1 = numerator.shape
    if g < 1 or n < 1 or m1 < 1:
        raise ValueError(
            f"empty coefficient tensors: numerator {tuple(numerator.shape)}, denominator {tuple(denominator.shape)}"
        )
    if rows not in (1, g):
        raise ValueError(
            f"numerator has {rows} rows but must have 1 (shared) or num_groups={g} "
            f"(denominator shape {tuple(denominator.shape)})"
        )
    k = x.shape[-1]
    if k % g != 0:
        raise ValueError(
            f"the last dim of x (K={k}, x shape {tuple(x.shape)}) is not divisible by the number of "
            f"groups g={g} (denominator shape {tuple(denominator.shape)})"
        )
    if not (x.device == numerator.device == denominator.device):
        raise ValueError(
            f"x ({x.device}), numerator ({numerator.device}) and denominator ({denominator.device}) "
            f"must be on the same device"
        )
    return RationalShape(g, m1 - 1, n, rows)  # torch.Size entries are ints already


def check_linear_args(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> None:
    """Validate the linear part of ``rational_linear``: weight ``(N, K)``, bias ``(N,)``."""
    _check_float("weight", weight)
    if weight.dim() != 2:
        raise ValueError(f"weight must be 2-D (out_features, in_features), got shape {tuple(weight.shape)}")
    if weight.shape[1] != x.shape[-1]:
        raise ValueError(
            f"weight shape {tuple(weight.shape)} does not match x shape {tuple(x.shape)}: "
            f"weight.shape[1] must equal K={x.shape[-1]}"
        )
    if weight.device != x.device:
        raise ValueError(f"weight is on {weight.device} but x is on {x.device}")
    if weight.dtype != x.dtype:
        raise TypeError(
            f"weight dtype {weight.dtype} does not match x dtype {x.dtype} "
            f"(cast them, or run under torch.autocast)"
        )
    if bias is not None:
        _check_float("bias", bias)
        if bias.dim() != 1 or bias.shape[0] != weight.shape[0]:
            raise ValueError(
                f"bias shape {tuple(bias.shape)} does not match weight shape {tuple(weight.shape)}: "
                f"expected ({weight.shape[0]},)"
            )
        if bias.device != x.device:
            raise ValueError(f"bias is on {bias.device} but x is on {x.device}")
        if bias.dtype != x.dtype:
            raise TypeError(f"bias dtype {bias.dtype} does not match x dtype {x.dtype}")


def compute_dtype(x: torch.Tensor) -> torch.dtype:
    """The precision F is evaluated in: float64 for float64 inputs, float32 otherwise."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32

"""The torch implementation of the group-rational ops (CPU, and any device without a kernel).

Plain, vectorised torch ops over a ``[M, g, K/g]`` view — no Python loop over groups, no stacked
powers — so that ``torch.compile`` can fuse them into neighbouring elementwise kernels.  The only
Python loops are over the polynomial degrees (m + n steps of Horner or of the coefficient
reductions).  The formulas come from :mod:`fusedkat.ops.rational_math`.

Precision: float64 inputs are evaluated in float64, everything else in float32; outputs keep the
input dtype; coefficient gradients are accumulated in the compute dtype (never in bf16/fp16) and
returned in the coefficients' dtype.
"""
from __future__ import annotations

from typing import Optional

import torch

from . import rational_math as rm
from .validation import compute_dtype


class TorchMath:
    """:class:`rational_math.MathOps` for torch tensors."""

    @staticmethod
    def abs(t: torch.Tensor) -> torch.Tensor:
        return torch.abs(t)

    @staticmethod
    def sgn(t: torch.Tensor) -> torch.Tensor:
        # +1 for t >= 0 (and NaN), -1 for t < 0: see rational_math's docstring for why not sign().
        return 1.0 - 2.0 * (t < 0).to(t.dtype)

    @staticmethod
    def rcp(t: torch.Tensor) -> torch.Tensor:
        return torch.reciprocal(t)


def _grouped(x: torch.Tensor, groups: int, dtype: torch.dtype) -> torch.Tensor:
    """``[..., K] -> [M, g, K/g]`` in ``dtype`` (a view when possible)."""
    k = x.shape[-1]
    rows = 1
    for d in x.shape[:-1]:  # explicit row count, not -1: see below
        rows = rows * d
    # A -1 here lets inductor's no-op-view check compare a dynamic sequence length with K/g and
    # guard on it (an extra recompile when they happen to be equal) [issue 4].
    return x.reshape(rows, groups, k // groups).to(dtype)


def _coefficient_columns(coeffs: torch.Tensor, dtype: torch.dtype) -> list[torch.Tensor]:
    """``(rows, d)`` -> d tensors of shape ``(rows, 1)`` that broadcast against ``[M, g, K/g]``."""
    c = coeffs.to(dtype)
    return [c[:, i : i + 1] for i in range(c.shape[1])]


def _group_sum(term: torch.Tensor) -> torch.Tensor:
    """``[M, g, K/g] -> (g,)``: the sum over every element of each group.  On CPU the rows are
    summed first (contiguous, vectorised over K) and then each group's K/g columns: inductor's
    generated code for that order ran the compiled GR-KAN backward at KAT-T's shape (1576 x 768,
    g = 8) in 9.1 ms against 15.3 ms for one strided reduction over dims (0, 2) (2 threads; issue
    21).  Other devices keep the single reduction (not measured there)."""
    if term.device.type == "cpu":
        return term.sum(dim=0).sum(dim=-1)
    return term.sum(dim=(0, 2))


def group_rational_forward(
    x: torch.Tensor, numerator: torch.Tensor, denominator: torch.Tensor, form: str
) -> torch.Tensor:
    """F(x) per group. x ``[..., K]``; numerator ``(1|g, m+1)``; denominator ``(g, n)``.

    Returns a contiguous tensor of x's shape and dtype.
    """
    cd = compute_dtype(x)
    g = denominator.shape[0]
    xg = _grouped(x, g, cd)
    a = _coefficient_columns(numerator, cd)
    b = _coefficient_columns(denominator, cd)
    f = rm.forward(a, b, xg, form, TorchMath)
    return f.to(x.dtype).reshape(x.shape).contiguous()


def group_rational_backward(
    grad: torch.Tensor, x: torch.Tensor, numerator: torch.Tensor, denominator: torch.Tensor, form: str
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Closed-form gradients of ``sum(grad * F(x))``.

    Returns ``(dx [x.shape, x.dtype], d_numerator [numerator.shape], d_denominator [denominator.shape])``.
    The coefficient gradients are sums over every element of a group (and over all groups for a
    shared numerator), accumulated in float32 (float64 for float64 inputs).
    """
    cd = compute_dtype(x)
    g = denominator.shape[0]
    xg = _grouped(x, g, cd)
    gg = _grouped(grad, g, cd)
    a = _coefficient_columns(numerator, cd)
    b = _coefficient_columns(denominator, cd)
    t = rm.grad_terms(a, b, xg, form, TorchMath)

    dx = (gg * t.dfdx).to(x.dtype).reshape(x.shape).contiguous()

    # d/da_i: sum over the group of grad * x^i / Q, one power at a time (no stacked powers).
    term = gg * t.inv_q
    d_num = []
    for i in range(len(a)):
        d_num.append(_group_sum(term))
        if i + 1 < len(a):
            term = term * xg
    d_num_t = torch.stack(d_num, dim=1)  # (g, m+1)
    if numerator.shape[0] == 1:
        d_num_t = d_num_t.sum(dim=0, keepdim=True)

    # d/db_j: sum over the group of grad * (-F/Q) * s_j * base^j.
    term = gg * t.neg_f_over_q
    per_element_sign = not isinstance(t.den_sign, list)
    if per_element_sign:
        term = term * t.den_sign
    d_den = []
    for j in range(len(b)):
        term = term * t.base
        s = _group_sum(term)
        if not per_element_sign:
            s = s * t.den_sign[j].reshape(-1)
        d_den.append(s)
    d_den_t = torch.stack(d_den, dim=1)  # (g, n)
    return dx, d_num_t.to(numerator.dtype), d_den_t.to(denominator.dtype)


def rational_linear_forward(
    x: torch.Tensor,
    numerator: torch.Tensor,
    denominator: torch.Tensor,
    weight: torch.Tensor,
    bias: Optional[torch.Tensor],
    form: str,
) -> torch.Tensor:
    """``F.linear(F(x), weight, bias)``: x ``[..., K]``, weight ``(N, K)``, bias ``(N,)`` -> ``[..., N]``."""
    return torch.nn.functional.linear(group_rational_forward(x, numerator, denominator, form), weight, bias)


def rational_linear_backward(
    grad_out: torch.Tensor,
    x: torch.Tensor,
    numerator: torch.Tensor,
    denominator: torch.Tensor,
    weight: torch.Tensor,
    has_bias: bool,
    form: str,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients of ``rational_linear`` from x alone (F(x) is recomputed, never saved).

    Returns ``(dx, d_numerator, d_denominator, d_weight, d_bias)``; ``d_bias`` (the column sums of
    grad_out, ``(N,)``) is returned whatever ``has_bias`` says, as custom ops cannot return None.
    """
    k, n_out = x.shape[-1], weight.shape[0]
    go = grad_out.reshape(-1, n_out)
    f = group_rational_forward(x, numerator, denominator, form).reshape(-1, k)
    d_weight = (go.t() @ f).to(weight.dtype)
    d_bias = go.sum(dim=0, dtype=compute_dtype(go)).to(weight.dtype)
    g_in = (go @ weight.to(go.dtype)).reshape(x.shape)
    dx, d_num, d_den = group_rational_backward(g_in, x, numerator, denominator, form)
    return dx, d_num, d_den, d_weight, d_bias

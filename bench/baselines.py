"""The paper's baselines, written here as the paper describes them (appendix "Benefit of CUDA
Implementation", Figs. 6-7), independently of fusedkat's code.

The rational is evaluated the way the official PyTorch reference does it: the powers of x are
stacked into a new trailing dimension and contracted with the coefficients (no Horner), because
that is the "torch" implementation the paper's CUDA kernel was compared with.

* :func:`torch_looped` - loop over the channel groups, apply the group's rational, concatenate.
* :func:`torch_vectorized` - reshape ``[..., K]`` to ``[..., g, K/g]``, apply all groups' rationals
  at once by broadcasting, reshape back.

Both are plain differentiable torch code (autograd gives the backward) and support both
denominator forms: ``"A"``: ``Q = 1 + sum_j |b_j| |x|^j``; ``"B"``: ``Q = 1 + |sum_j b_j x^j|``.
Shapes: x ``[..., K]``, numerator ``(1, m+1)`` (shared) or ``(g, m+1)``, denominator ``(g, n)``.
"""
from __future__ import annotations

import torch
from torch import Tensor


def _powers(x: Tensor, degree: int) -> Tensor:
    """``[..., degree+1]``: x^0, x^1, ..., x^degree stacked along a new last dimension."""
    xps = [torch.ones_like(x), x]
    for _ in range(degree - 1):
        xps.append(xps[-1] * x)
    return torch.stack(xps[: degree + 1], dim=-1)


def rational_stacked(x: Tensor, a: Tensor, b: Tensor, form: str = "A") -> Tensor:
    """P(x)/Q(x) with coefficients broadcast against ``x[..., None]``.

    ``a``: ``(..., m+1)`` and ``b``: ``(..., n)``, broadcastable to ``x.shape + (m+1,)`` / ``(n,)``.
    """
    m, n = a.shape[-1] - 1, b.shape[-1]
    xps = _powers(x, max(m, n))
    p = (xps[..., : m + 1] * a).sum(-1)
    if form == "A":
        q = 1.0 + (xps[..., 1 : n + 1].abs() * b.abs()).sum(-1)
    elif form == "B":
        q = 1.0 + (xps[..., 1 : n + 1] * b).sum(-1).abs()
    else:
        raise ValueError(f"unknown form {form!r}")
    return p / q


def torch_looped(x: Tensor, numerator: Tensor, denominator: Tensor, form: str = "A") -> Tensor:
    """Loop over groups: ``cat([F_i(x[..., group i]) for i in range(g)], -1)``."""
    g = denominator.shape[0]
    chunks = x.split(x.shape[-1] // g, dim=-1)
    outs = []
    for i, chunk in enumerate(chunks):
        a = numerator[0] if numerator.shape[0] == 1 else numerator[i]
        outs.append(rational_stacked(chunk, a, denominator[i], form))
    return torch.cat(outs, dim=-1)


def torch_vectorized(x: Tensor, numerator: Tensor, denominator: Tensor, form: str = "A") -> Tensor:
    """Reshape to ``[..., g, K/g]``, apply every group's rational by broadcasting, reshape back."""
    g = denominator.shape[0]
    k = x.shape[-1]
    xg = x.reshape(*x.shape[:-1], g, k // g)
    a = numerator[:, None, :]  # (1|g, 1, m+1) against xps [..., g, K/g, m+1]
    b = denominator[:, None, :]  # (g, 1, n)
    return rational_stacked(xg, a, b, form).reshape(x.shape)

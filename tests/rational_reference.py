"""An independent float64 reference of the group-rational function, for tests only.

Deliberately written differently from :mod:`fusedkat.ops.rational_math`: explicit powers (no
Horner), an explicit loop over groups, and coefficient/input gradients from torch autograd through
that direct formula (no closed forms).  Tests compare the library against this.
"""
from __future__ import annotations

import torch


def reference_rational(x: torch.Tensor, numerator: torch.Tensor, denominator: torch.Tensor, form: str) -> torch.Tensor:
    """F(x) in float64. x ``[..., K]``, numerator ``(1|g, m+1)``, denominator ``(g, n)``."""
    x = x.double()
    a_all = numerator.double()
    b_all = denominator.double()
    g = b_all.shape[0]
    k = x.shape[-1]
    width = k // g
    outs = []
    for gi in range(g):
        xs = x[..., gi * width : (gi + 1) * width]
        a = a_all[gi if a_all.shape[0] > 1 else 0]
        b = b_all[gi]
        p = sum(a[i] * xs**i for i in range(a.shape[0]))
        if form == "A":
            q = 1 + sum(b[j - 1].abs() * xs.abs() ** j for j in range(1, b.shape[0] + 1))
        elif form == "B":
            q = 1 + sum(b[j - 1] * xs**j for j in range(1, b.shape[0] + 1)).abs()
        else:
            raise ValueError(form)
        outs.append(p / q)
    return torch.cat(outs, dim=-1)


def reference_rational_linear(x, numerator, denominator, weight, bias, form):
    """``F(x) @ W^T + b`` in float64."""
    y = reference_rational(x, numerator, denominator, form) @ weight.double().t()
    if bias is not None:
        y = y + bias.double()
    return y


def reference_grads(fn, grad_out: torch.Tensor, *inputs: torch.Tensor) -> list[torch.Tensor]:
    """Gradients of ``sum(grad_out * fn(*inputs))`` w.r.t. every input, by float64 autograd."""
    leaves = [t.detach().double().requires_grad_(True) for t in inputs]
    out = fn(*leaves)
    grads = torch.autograd.grad(out, leaves, grad_out.double())
    return list(grads)

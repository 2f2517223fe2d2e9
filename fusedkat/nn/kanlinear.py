"""``KanLinear``: a linear layer with an optional group-rational in front, built around existing weights.

What :func:`fusedkat.kanify` puts in place of an MLP's linear layers.  It keeps the replaced layer's
``weight`` and ``bias`` Parameters *by identity* (same names, same layout, ties kept), so the
model's state_dict keeps every key it had, plus ``<layer>.rational.*`` where a rational was added.
``transposed=True`` is the layout of Hugging Face's ``Conv1D`` (GPT-2): weight ``(in, out)``.
"""
from __future__ import annotations

from typing import Optional

import torch.nn.functional as F
from torch import Tensor, nn

from .. import ops
from .rational import GroupRational


class KanLinear(nn.Module):
    """``y = F(x) @ W.T + b`` (``W`` as stored, or ``W.T`` when ``transposed``), F optional.

    Args:
        weight: the existing Parameter, ``(out, in)`` (``(in, out)`` when ``transposed``).
        bias: the existing Parameter ``(out,)`` or None.
        rational: a :class:`GroupRational` applied to the input first, or None (plain linear).
        transposed: the weight is stored ``(in, out)`` (HF ``Conv1D``).

    Input ``[..., in_features]`` -> ``[..., out_features]``, the weight's dtype.  With a rational the
    forward is one :func:`fusedkat.ops.rational_linear` op (the fused GEMM on GPU); without one it is
    ``F.linear``, which the compile pass can fuse with a rational in front of it.
    """

    def __init__(self, weight: nn.Parameter, bias: Optional[nn.Parameter], *,
                 rational: Optional[GroupRational] = None, transposed: bool = False) -> None:
        super().__init__()
        if weight.dim() != 2:
            raise ValueError(f"KanLinear needs a 2-D weight, got shape {tuple(weight.shape)}")
        out_features, in_features = weight.shape[::-1] if transposed else weight.shape
        if bias is not None and tuple(bias.shape) != (out_features,):
            raise ValueError(f"bias shape {tuple(bias.shape)} does not match out_features={out_features}")
        self.in_features, self.out_features = int(in_features), int(out_features)
        self.transposed = bool(transposed)
        self.weight = weight
        self.bias = bias
        self.rational = rational

    def linear_weight(self) -> Tensor:
        """The weight as ``(out_features, in_features)`` (a view when ``transposed``)."""
        return self.weight.t() if self.transposed else self.weight

    def forward(self, x: Tensor) -> Tensor:
        w = self.linear_weight()
        if self.rational is None:
            return F.linear(x, w, self.bias)
        r = self.rational
        return ops.rational_linear(x, r.weight_numerator, r.weight_denominator, w, self.bias, form=r.form)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"
                + (", transposed=True" if self.transposed else ""))

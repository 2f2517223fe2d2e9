"""GR-KAN layers: ``GRKAN`` (one rational + linear) and ``KANMlp`` (KAT's two-layer block, a timm mlp_layer).

Both compute ``Linear(F(x))`` through :func:`fusedkat.ops.rational_linear` — one op that the GPU
backend runs as a GEMM with F fused into its prologue — whenever no dropout sits between F and
the linear (p == 0 or eval mode).  With active dropout the rational and the linear run separately.
"""
from __future__ import annotations

from typing import Optional, Tuple, Type, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import ops
from ..init import variance_preserving_
from ..ops import rational_math as rm
from ._script import NotScriptable
from .rational import GroupRational, InitLike


def _pair(v) -> tuple:
    return tuple(v) if isinstance(v, (tuple, list)) else (v, v)


def rational_then_linear(x: Tensor, act: GroupRational, drop: nn.Module, fc: nn.Linear) -> Tensor:
    """``fc(drop(act(x)))``, fused into one rational_linear op when ``drop`` is inactive."""
    p = drop.p if isinstance(drop, nn.Dropout) else 0.0
    if p == 0.0 or not drop.training:
        return ops.rational_linear(x, act.weight_numerator, act.weight_denominator, fc.weight, fc.bias,
                                   form=act.form)
    return F.linear(drop(act(x)), fc.weight, fc.bias)


class GRKAN(NotScriptable, nn.Module):
    """GR-KAN(x) = Linear(F(x)): a group-rational activation followed by a linear layer.

    Submodules ``act`` (:class:`GroupRational`) and ``fc`` (``nn.Linear``).  The weight is drawn
    with the variance-preserving init Var[w] = input_variance / (in_features * E[F(x)^2]), the bias
    is zero.  Input ``[..., in_features]`` -> ``[..., out_features]``, same dtype.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        num_groups: int = rm.DEFAULT_GROUPS,
        init: InitLike = "swish",
        form: str = rm.DEFAULT_FORM,
        order: Tuple[int, int] = rm.DEFAULT_ORDER,
        bias: bool = True,
        input_variance: float = 1.0,
        device: Optional[torch.device] = None,
        dtype: Optional[torch.dtype] = None,
    ) -> None:
        super().__init__()
        rm.check_int(num_groups, "num_groups")
        rm.check_int(in_features, "in_features", 0)
        rm.check_int(out_features, "out_features", 0)
        if in_features % num_groups != 0:
            raise ValueError(f"in_features={in_features} is not divisible by num_groups={num_groups}")
        self.in_features, self.out_features = in_features, out_features
        self.input_variance = float(input_variance)
        self.act = GroupRational(num_groups, init=init, form=form, order=order, device=device, dtype=dtype)
        self.fc = nn.Linear(in_features, out_features, bias=bias, device=device, dtype=dtype)
        self.init_weights()

    @torch.no_grad()
    def init_weights(self) -> None:
        self.act.init_weights()
        variance_preserving_(self.fc.weight, self.act.init_second_moment(), input_variance=self.input_variance)
        if self.fc.bias is not None:
            self.fc.bias.zero_()

    reset_parameters = init_weights

    def forward(self, x: Tensor) -> Tensor:
        return ops.rational_linear(x, self.act.weight_numerator, self.act.weight_denominator,
                                   self.fc.weight, self.fc.bias, form=self.act.form)


class KANMlp(NotScriptable, nn.Module):
    """KAT's channel mixer, a drop-in ``mlp_layer`` for timm's VisionTransformer/Block.

    ``fc2(drop2(act2(norm(fc1(drop1(act1(x)))))))`` — the official KAN order
    (act1 -> drop1 -> fc1 -> act2 -> drop2 -> fc2; the official code builds ``norm`` but never
    applies it, here it sits on the hidden features, Identity unless timm passes a norm_layer).
    act1 is initialised to the identity, act2 to ``act_init`` (swish by default); fc1/fc2 get the
    variance-preserving init for their rational.  Submodule names and state_dict keys match the
    official checkpoints: ``fc1, act1, drop1, norm, act2, drop2, fc2``.

    ``act_layer`` is accepted for timm compatibility and ignored: the rationals replace it.
    Input ``[..., in_features]`` -> ``[..., out_features]``.
    """

    def __init__(
        self,
        in_features: int,
        hidden_features: Optional[int] = None,
        out_features: Optional[int] = None,
        act_layer: Optional[Type[nn.Module]] = None,
        norm_layer: Optional[Type[nn.Module]] = None,
        bias: Union[bool, Tuple[bool, bool]] = True,
        drop: Union[float, Tuple[float, float]] = 0.0,
        device: Optional[torch.device] = None,
        dtype: Optional[torch.dtype] = None,
        *,
        act_init: InitLike = "swish",
        num_groups: int = rm.DEFAULT_GROUPS,
        form: str = rm.DEFAULT_FORM,
        order: Tuple[int, int] = rm.DEFAULT_ORDER,
        **unused,
    ) -> None:
        super().__init__()
        if unused.pop("use_conv", False):
            raise ValueError("KANMlp does not support use_conv=True")
        if unused:
            raise TypeError(f"KANMlp got unexpected keyword arguments: {sorted(unused)}")
        rm.check_int(num_groups, "num_groups")
        out_features = out_features or in_features
        hidden_features = hidden_features or in_features
        for name, k in (("in_features", in_features), ("hidden_features", hidden_features)):
            if k % num_groups != 0:
                raise ValueError(f"{name}={k} is not divisible by num_groups={num_groups}")
        bias1, bias2 = _pair(bias)
        p1, p2 = _pair(drop)
        dd = {"device": device, "dtype": dtype}
        self.fc1 = nn.Linear(in_features, hidden_features, bias=bias1, **dd)
        self.act1 = GroupRational(num_groups, init="identity", form=form, order=order, **dd)
        self.drop1 = nn.Dropout(p1)
        self.norm = norm_layer(hidden_features, **dd) if norm_layer is not None else nn.Identity()
        self.act2 = GroupRational(num_groups, init=act_init, form=form, order=order, **dd)
        self.drop2 = nn.Dropout(p2)
        self.fc2 = nn.Linear(hidden_features, out_features, bias=bias2, **dd)
        self.init_weights()

    @torch.no_grad()
    def init_weights(self) -> None:
        """Rationals to their fits, fc1/fc2 variance-preserving (unit input variance), biases zero.

        timm's ViT init visits fc1/fc2 first (trunc_normal) and then calls this, so this wins.
        """
        self.act1.init_weights()
        self.act2.init_weights()
        for act, fc in ((self.act1, self.fc1), (self.act2, self.fc2)):
            variance_preserving_(fc.weight, act.init_second_moment())
            if fc.bias is not None:
                fc.bias.zero_()

    def forward(self, x: Tensor) -> Tensor:
        h = rational_then_linear(x, self.act1, self.drop1, self.fc1)
        h = self.norm(h)
        return rational_then_linear(h, self.act2, self.drop2, self.fc2)

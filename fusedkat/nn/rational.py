"""GroupRational: the learnable group-rational activation F of GR-KAN (official KAT_Group layout)."""
from __future__ import annotations

from typing import Callable, Optional, Tuple, Union

import numpy as np
import torch
from torch import Tensor, nn

from .. import ops
from ..init import RationalFit, fit_rational, second_moment
from ..ops import rational_math as rm
from ._script import NotScriptable

InitLike = Union[str, RationalFit, Callable[[np.ndarray], np.ndarray]]


def resolve_fit(init: InitLike, order: Tuple[int, int], form: str) -> RationalFit:
    """A :class:`RationalFit` for ``init`` (a target name, a callable, or a ready fit of matching degrees)."""
    if isinstance(init, RationalFit):
        if (init.m, init.n) != tuple(order):
            raise ValueError(f"init fit has degrees ({init.m}, {init.n}) but order={tuple(order)}")
        if init.form != form:
            raise ValueError(f"init fit was made for form {init.form!r} but the layer uses form {form!r}")
        return init
    return fit_rational(init, m=order[0], n=order[1], form=form)


def _order(order: Tuple[int, int]) -> Tuple[int, int]:
    """``(m, n)`` checked: a pair of ints (not bools, not floats), m >= 0 and n >= 1."""
    if not isinstance(order, (tuple, list)) or len(order) != 2:
        raise ValueError(f"order must be a pair (m, n) of ints, got {order!r}")
    return rm.check_int(order[0], "numerator degree m", 0), rm.check_int(order[1], "denominator degree n", 1)


class GroupRational(NotScriptable, nn.Module):
    """F(x) = P(x)/Q(x) applied channel-wise, numerator shared, one denominator per channel group.

    Args:
        num_groups: g; the last dim K of the input must be divisible by g (channel k is in group
            ``k // (K // g)``).
        init: target activation the coefficients are fitted to at init ("identity", "swish",
            "gelu", ... or a callable / :class:`RationalFit`); see :func:`fusedkat.init.fit_rational`.
        form: "A" (official kernels and checkpoints) or "B" (paper Eq. 9).
        order: (m, n) degrees.

    Parameters (official names/shapes): ``weight_numerator`` (1, m+1), ``weight_denominator`` (g, n).
    Input ``[..., K]`` float16/bfloat16/float32/float64 -> output of the same shape and dtype.
    """

    def __init__(
        self,
        num_groups: int = rm.DEFAULT_GROUPS,
        *,
        init: InitLike = "swish",
        form: str = rm.DEFAULT_FORM,
        order: Tuple[int, int] = rm.DEFAULT_ORDER,
        device: Optional[torch.device] = None,
        dtype: Optional[torch.dtype] = None,
    ) -> None:
        super().__init__()
        rm.check_int(num_groups, "num_groups")
        spec = rm.RationalSpec(*_order(order), form)
        self.num_groups = num_groups
        self.form = spec.form
        self.order = (spec.m, spec.n)
        self.fit = resolve_fit(init, self.order, self.form)
        dd = {"device": device, "dtype": dtype or torch.float32}
        self.weight_numerator = nn.Parameter(torch.empty(1, spec.m + 1, **dd))
        self.weight_denominator = nn.Parameter(torch.empty(num_groups, spec.n, **dd))
        self.init_weights()

    @torch.no_grad()
    def init_weights(self) -> None:
        """Reset the coefficients to the init fit (every group gets the same denominator)."""
        if self.weight_numerator.is_meta:
            return
        num = torch.tensor(self.fit.numerator.tolist(), dtype=torch.float64)
        den = torch.tensor(self.fit.denominator.tolist(), dtype=torch.float64)
        self.weight_numerator.copy_(num.view(1, -1))
        self.weight_denominator.copy_(den.view(1, -1).expand(self.num_groups, -1))

    reset_parameters = init_weights

    def init_second_moment(self) -> float:
        """E[F(x)^2], x ~ N(0, 1), of the init fit (what the variance-preserving init uses)."""
        return second_moment(self.fit.numerator, self.fit.denominator, form=self.form)

    def forward(self, x: Tensor) -> Tensor:
        return ops.group_rational(x, self.weight_numerator, self.weight_denominator, form=self.form)

    def extra_repr(self) -> str:
        return f"num_groups={self.num_groups}, init={self.fit.target!r}, form={self.form!r}, order={self.order}"

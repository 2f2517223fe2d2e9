"""Rational fitting and variance-preserving initialisation (paper sec. 4.4, Appendix F).

Public API::

    fit_rational(target, *, m=5, n=4, form="A", num_points=1000, interval=(-3, 3)) -> RationalFit
    second_moment(numerator, denominator, *, form="A") -> float          # E[F(x)^2], x ~ N(0, 1)
    gain(numerator, denominator, *, form="A") -> float                   # sqrt(1 / E[F^2])
    variance_preserving_std(fan_in, second_moment_value, input_variance=1.0) -> float
    variance_preserving_(weight, second_moment_value, *, input_variance=1.0)   # in-place N(0, std^2)

scipy is imported only when a fit is actually computed (not for table hits or at import).
"""
from __future__ import annotations

from .fit import (
    DEFAULT_INTERVAL,
    DEFAULT_NUM_POINTS,
    NumpyMath,
    RationalFit,
    evaluate,
    fit_grid,
    fit_rational,
)
from .targets import ALIASES, TARGETS, canonical_name
from .variance import (
    gain,
    gaussian_expectation,
    second_moment,
    variance_preserving_,
    variance_preserving_std,
)

__all__ = [
    "fit_rational", "RationalFit", "evaluate", "fit_grid", "NumpyMath", "DEFAULT_INTERVAL",
    "DEFAULT_NUM_POINTS", "TARGETS", "ALIASES", "canonical_name", "second_moment", "gain",
    "gaussian_expectation", "variance_preserving_", "variance_preserving_std",
]

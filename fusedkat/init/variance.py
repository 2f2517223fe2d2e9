"""Variance-preserving initialisation for GR-KAN layers (paper sec. 4.4, Appendix F).

For y = W F(x) with x ~ N(0, Var[x]) per channel and d_in inputs, Var[y] = d_in Var[w] E[F(x)^2],
so Var[y] = Var[x] needs

    Var[w] = Var[x] / (d_in * E[F(x)^2]).

The paper prints this as N(0, alpha/d_in) with alpha = E[F^2]/Var[x]; that is inverted. The
official code effectively uses gain^2 = 1/E[F^2] (as derived here).
"""
from __future__ import annotations

import functools
import math
from typing import Sequence, Tuple

import numpy as np
import torch

from ..ops import rational_math as rm
from .fit import evaluate

# Composite Gauss-Legendre quadrature on [-L, L], panels split at 0 (where form A and relu-like
# targets have their kink) so every panel integrand is smooth for form A.  F grows like |x|^(m-n),
# the Gaussian kills it long before |x| = 12 (phi(12) ~ 1e-32).
_HALF_WIDTH = 12.0
_PANELS_PER_SIDE = 48
_NODES_PER_PANEL = 24


def _quadrature(breakpoints: Tuple[float, ...] = ()) -> Tuple[np.ndarray, np.ndarray]:
    """Nodes and weights w.r.t. the N(0, 1) density (weights include phi).

    ``breakpoints`` (kinks of the integrand inside [-L, L]) become extra panel edges, so that every
    panel integrand is smooth and Gauss-Legendre converges fast.
    """
    t, w = np.polynomial.legendre.leggauss(_NODES_PER_PANEL)
    edges = np.linspace(-_HALF_WIDTH, _HALF_WIDTH, 2 * _PANELS_PER_SIDE + 1)
    inner = [p for p in breakpoints if -_HALF_WIDTH < p < _HALF_WIDTH]
    if inner:
        edges = np.unique(np.concatenate([edges, np.asarray(inner, dtype=np.float64)]))
    lo, hi = edges[:-1, None], edges[1:, None]
    nodes = (0.5 * (hi - lo) * t + 0.5 * (hi + lo)).reshape(-1)
    weights = (0.5 * (hi - lo) * w).reshape(-1)
    weights = weights * np.exp(-0.5 * nodes**2) / math.sqrt(2.0 * math.pi)
    return nodes, weights


def gaussian_expectation(fn, std: float = 1.0, breakpoints: Sequence[float] = ()) -> float:
    """E[fn(x)] for x ~ N(0, std^2) by composite Gauss-Legendre quadrature (deterministic).

    Accurate to ~1e-12 when fn is smooth between 0 and the given ``breakpoints`` (in x units).
    """
    nodes, weights = _quadrature(tuple(float(p) / std for p in breakpoints))
    return float(np.sum(np.asarray(fn(std * nodes), dtype=np.float64) * weights))


def _kinks(b: Tuple[float, ...], form: str) -> Tuple[float, ...]:
    """Where F is not smooth: 0 (a mesh edge already) and, for form B, the real roots of sum b_j x^j."""
    if form != "B" or not any(b):
        return ()
    roots = np.roots(list(reversed(b)))  # b_1 + b_2 x + ... + b_n x^(n-1); the factor x gives 0
    return tuple(float(r.real) for r in roots if abs(r.imag) < 1e-12)


@functools.lru_cache(maxsize=1024)
def _second_moment_cached(a: Tuple[float, ...], b: Tuple[float, ...], form: str, std: float) -> float:
    return gaussian_expectation(lambda x: evaluate(a, b, x, form) ** 2, std, _kinks(b, form))


def second_moment(
    numerator: Sequence[float], denominator: Sequence[float], *, form: str = rm.DEFAULT_FORM, std: float = 1.0
) -> float:
    """E[F(x)^2] for x ~ N(0, std^2) (default the standard normal), by numerical quadrature.

    Args:
        numerator: a_0..a_m, shape (m+1,) or (1, m+1) (array, tensor or sequence).
        denominator: b_1..b_n, shape (n,) or (1, n).  A (g, n) per-group table is not accepted:
            average the per-group results yourself if the groups differ.
    """
    rm.check_form(form)
    a = tuple(float(v) for v in _as_vector(numerator, "numerator"))
    b = tuple(float(v) for v in _as_vector(denominator, "denominator"))
    if not (std > 0 and math.isfinite(std)):
        raise ValueError(f"std must be positive and finite, got {std!r}")
    return _second_moment_cached(a, b, form, float(std))


def _as_vector(v, name: str) -> np.ndarray:
    if isinstance(v, torch.Tensor):
        v = v.detach().to("cpu", torch.float64).numpy()
    arr = np.asarray(v, dtype=np.float64)
    if arr.ndim == 2 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim != 1 or arr.size == 0:
        raise ValueError(f"{name} must be a non-empty vector (or a 1-row matrix), got shape {arr.shape}")
    return arr


def variance_preserving_std(fan_in: int, second_moment_value: float, input_variance: float = 1.0) -> float:
    """std of w such that Var[w] = Var[x] / (fan_in * E[F(x)^2])."""
    if fan_in < 1:
        raise ValueError(f"fan_in must be >= 1, got {fan_in}")
    if not (second_moment_value > 0 and math.isfinite(second_moment_value)):
        raise ValueError(f"E[F(x)^2] must be positive and finite, got {second_moment_value!r}")
    if not (input_variance > 0 and math.isfinite(input_variance)):
        raise ValueError(f"input_variance must be positive and finite, got {input_variance!r}")
    return math.sqrt(input_variance / (fan_in * second_moment_value))


def gain(numerator: Sequence[float], denominator: Sequence[float], *, form: str = rm.DEFAULT_FORM) -> float:
    """The init gain of a rational, sqrt(1 / E[F(x)^2]) — what ``nn.init.calculate_gain`` would say."""
    return math.sqrt(1.0 / second_moment(numerator, denominator, form=form))


@torch.no_grad()
def variance_preserving_(
    weight: torch.Tensor, second_moment_value: float, *, input_variance: float = 1.0,
    generator: "torch.Generator | None" = None,
) -> torch.Tensor:
    """In place: ``weight`` (out, in) ~ N(0, Var[x] / (in * E[F(x)^2])), drawn from torch's RNG."""
    if weight.dim() != 2:
        raise ValueError(f"weight must be 2-D (out_features, in_features), got shape {tuple(weight.shape)}")
    std = variance_preserving_std(weight.shape[1], second_moment_value, input_variance)
    if weight.is_meta:
        return weight  # nothing to draw on the meta device
    return weight.normal_(0.0, std, generator=generator)

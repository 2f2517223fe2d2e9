"""Least-squares fits of a group-rational F = P/Q to a target activation.

The fit follows the paper (sec. 4.4, Appendix F): ``num_points`` points spaced uniformly on
``interval`` (default 1000 on [-3, 3]), Levenberg-Marquardt (``scipy.optimize.curve_fit``,
``method="lm"``), **for the denominator form that will evaluate F** — the official ``init.json``
was fitted for form B and is used under form A, which is why its gelu entry is poor there.

F is evaluated through :func:`fusedkat.ops.rational_math.forward` with a numpy
:class:`NumpyMath`, so the fitted function is exactly the one the kernels compute.

Fits are deterministic, so they are cached twice: a shipped table (``fit_table.json``, regenerated
by ``scripts/make_fit_table.py`` and checked against fresh fits by the tests) answers the common
named targets at the default settings without importing scipy; anything else is fitted once per
process (``functools.lru_cache``).
"""
from __future__ import annotations

import functools
import json
import math
import os
import warnings
from dataclasses import dataclass
from typing import Callable, Optional, Sequence, Tuple, Union

import numpy as np

from ..ops import rational_math as rm
from . import targets as _targets

DEFAULT_NUM_POINTS = 1000
DEFAULT_INTERVAL: Tuple[float, float] = (-3.0, 3.0)
TABLE_PATH = os.path.join(os.path.dirname(__file__), "fit_table.json")

TargetLike = Union[str, Callable[[np.ndarray], np.ndarray]]


class NumpyMath:
    """:class:`fusedkat.ops.rational_math.MathOps` for numpy arrays (float64)."""

    @staticmethod
    def abs(t):
        return np.abs(t)

    @staticmethod
    def sgn(t):
        # +1 for t >= 0, as rational_math requires.
        return np.where(np.asarray(t) < 0, -1.0, 1.0)

    @staticmethod
    def rcp(t):
        with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
            return 1.0 / t

    @staticmethod
    def isfinite(t):
        return np.isfinite(t)

    @staticmethod
    def select(cond, a, b):
        return np.where(cond, a, b)


def evaluate(numerator: Sequence[float], denominator: Sequence[float], x: np.ndarray, form: str = "A") -> np.ndarray:
    """F(x) in float64 for coefficients a (m+1,), b (n,) — via rational_math (the single definition)."""
    rm.check_form(form)
    a = [float(v) for v in np.asarray(numerator, dtype=np.float64).reshape(-1)]
    b = [float(v) for v in np.asarray(denominator, dtype=np.float64).reshape(-1)]
    with np.errstate(over="ignore", invalid="ignore"):  # the unselected branch of a large-|x| select
        return rm.forward(a, b, np.asarray(x, dtype=np.float64), form, NumpyMath)


@dataclass(frozen=True, eq=False)
class RationalFit:
    """A fitted rational: ``numerator`` (m+1,), ``denominator`` (n,) float64 arrays, and its ``mse``
    against the target on the fit grid.  ``target`` is the canonical name (or the callable's name)."""

    target: str
    form: str
    numerator: np.ndarray
    denominator: np.ndarray
    mse: float
    num_points: int
    interval: Tuple[float, float]

    @property
    def m(self) -> int:
        return int(self.numerator.shape[0]) - 1

    @property
    def n(self) -> int:
        return int(self.denominator.shape[0])

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return evaluate(self.numerator, self.denominator, x, self.form)


def _frozen(values: Sequence[float]) -> np.ndarray:
    arr = np.array(values, dtype=np.float64)
    arr.setflags(write=False)
    return arr


def fit_grid(num_points: int = DEFAULT_NUM_POINTS, interval: Tuple[float, float] = DEFAULT_INTERVAL) -> np.ndarray:
    """The fit points: ``num_points`` uniformly spaced on ``interval`` (end points included)."""
    lo, hi = float(interval[0]), float(interval[1])
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise ValueError(f"interval must be finite with lo < hi, got {interval!r}")
    if int(num_points) < 2:
        raise ValueError(f"num_points must be >= 2, got {num_points!r}")
    return np.linspace(lo, hi, int(num_points))


def _starting_points(x: np.ndarray, y: np.ndarray, m: int, n: int, form: str) -> list[np.ndarray]:
    """Deterministic starts for LM: linearised (Loewner-style) solutions, a polynomial, seeded randoms."""
    starts = []
    vp = np.stack([x**i for i in range(m + 1)], axis=1)
    base = np.abs(x) if form == "A" else x
    vq = np.stack([base**j for j in range(1, n + 1)], axis=1)
    # P(x) - y * (Q(x) - 1) = y is linear in (a, b) if the |.| in Q is dropped.
    lin, *_ = np.linalg.lstsq(np.concatenate([vp, -y[:, None] * vq], axis=1), y, rcond=None)
    starts.append(lin)
    if form == "A":
        starts.append(np.concatenate([lin[: m + 1], np.abs(lin[m + 1 :])]))
    poly, *_ = np.linalg.lstsq(vp, y, rcond=None)
    starts.append(np.concatenate([poly, np.full(n, 1e-3)]))
    rng = np.random.default_rng(20240917)  # fixed: fits must be reproducible
    for _ in range(6):
        starts.append(rng.normal(0.0, 0.5, size=m + 1 + n))
    return starts


def _fit_fresh(fn: Callable[[np.ndarray], np.ndarray], name: str, m: int, n: int, form: str,
               num_points: int, interval: Tuple[float, float]) -> RationalFit:
    from scipy.optimize import curve_fit  # lazy: scipy is slow to import and only needed here

    x = fit_grid(num_points, interval)
    y = np.asarray(fn(x), dtype=np.float64)
    if y.shape != x.shape or not np.all(np.isfinite(y)):
        raise ValueError(f"target {name!r} must map the fit grid to finite values of the same shape")

    def model(xx, *params):
        return evaluate(params[: m + 1], params[m + 1 :], xx, form)

    best: Optional[Tuple[float, np.ndarray]] = None
    for p0 in _starting_points(x, y, m, n, form):
        try:
            with warnings.catch_warnings():
                # LM often cannot estimate the covariance (flat directions); we never use it.
                warnings.simplefilter("ignore")
                popt, _ = curve_fit(model, x, y, p0=p0, method="lm", maxfev=6000)
        except (RuntimeError, ValueError, FloatingPointError):
            continue  # this start did not converge; others will
        if not np.all(np.isfinite(popt)):
            continue
        mse = float(np.mean((model(x, *popt) - y) ** 2))
        if best is None or mse < best[0]:
            best = (mse, popt)
    if best is None:
        raise RuntimeError(f"rational fit to {name!r} did not converge from any starting point")
    mse, popt = best
    return RationalFit(name, form, _frozen(popt[: m + 1]), _frozen(popt[m + 1 :]), mse, int(num_points),
                       (float(interval[0]), float(interval[1])))


@functools.lru_cache(maxsize=None)
def _load_table() -> dict:
    try:
        with open(TABLE_PATH) as f:
            return json.load(f)
    except FileNotFoundError:
        return {}


def _table_lookup(name: str, m: int, n: int, form: str, num_points: int,
                  interval: Tuple[float, float]) -> Optional[RationalFit]:
    table = _load_table()
    if not table or table.get("num_points") != num_points or tuple(table.get("interval", ())) != interval:
        return None
    entry = table.get("fits", {}).get(form, {}).get(f"{m}/{n}", {}).get(name)
    if entry is None:
        return None
    return RationalFit(name, form, _frozen(entry["numerator"]), _frozen(entry["denominator"]),
                       float(entry["mse"]), num_points, interval)


@functools.lru_cache(maxsize=256)
def _fit_cached(target: TargetLike, m: int, n: int, form: str, num_points: int,
                interval: Tuple[float, float], use_table: bool) -> RationalFit:
    if isinstance(target, str):
        name = _targets.canonical_name(target)
        if name == "identity":
            a, b = rm.identity_coefficients(m, n)
            return RationalFit(name, form, _frozen(a), _frozen(b), 0.0, num_points, interval)
        if use_table:
            hit = _table_lookup(name, m, n, form, num_points, interval)
            if hit is not None:
                return hit
        return _fit_fresh(_targets.TARGETS[name], name, m, n, form, num_points, interval)
    name = getattr(target, "__name__", type(target).__name__)
    return _fit_fresh(target, name, m, n, form, num_points, interval)


def fit_rational(
    target: TargetLike,
    *,
    m: int = rm.DEFAULT_ORDER[0],
    n: int = rm.DEFAULT_ORDER[1],
    form: str = rm.DEFAULT_FORM,
    num_points: int = DEFAULT_NUM_POINTS,
    interval: Tuple[float, float] = DEFAULT_INTERVAL,
    use_table: bool = True,
) -> RationalFit:
    """Fit F = P/Q of degree m/n in ``form`` to ``target`` by Levenberg-Marquardt least squares.

    Args:
        target: a name ("identity", "relu", "leaky_relu", "gelu", "gelu_tanh", "quick_gelu",
            "swish"/"silu", "tanh", "sigmoid", "mish") or a callable ``np.ndarray -> np.ndarray``
            (float64, elementwise).  Callables are cached by identity.
        m, n: numerator / denominator degrees.  form: "A" or "B" (see rational_math).
        num_points, interval: the fit grid (uniform, end points included).
        use_table: answer named targets from the shipped table when it has them (default).

    Returns:
        :class:`RationalFit` with ``.numerator`` (m+1,), ``.denominator`` (n,), ``.mse``.
        Identity is exact (a = (0, 1, 0, ...), b = 0, mse 0).
    """
    spec = rm.RationalSpec(m, n, form)  # validates degrees (ints, not bools or floats) and form
    if not (isinstance(target, str) or callable(target)):
        raise TypeError(f"target must be an activation name or a callable, got {type(target).__name__}")
    interval = (float(interval[0]), float(interval[1]))
    fit_grid(num_points, interval)  # validate early, with a clear message
    return _fit_cached(target, spec.m, spec.n, spec.form, int(num_points), interval, bool(use_table))

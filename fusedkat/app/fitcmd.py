"""``fusedkat fit``: fit a rational to a named activation (paper sec. 4.4 / Fig. 3)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional, TextIO

import numpy as np

from ..files import atomic_write_text, check_writable
from .errors import CLIError


def known_targets() -> list[str]:
    from ..init import ALIASES, TARGETS

    return sorted(set(TARGETS) | set(ALIASES))


def run_fit(
    activation: str,
    *,
    form: str = "A",
    m: int = 5,
    n: int = 4,
    fresh: bool = False,
    plot: Optional[str] = None,
    json_path: Optional[str] = None,
    stream: Optional[TextIO] = None,
) -> dict:
    import sys

    from ..init import TARGETS, canonical_name, fit_rational, gain, gaussian_expectation, second_moment

    stream = stream or sys.stdout
    try:
        name = canonical_name(activation)
    except ValueError:
        raise CLIError(f"unknown activation {activation!r}; choose one of: {', '.join(known_targets())}")
    if form not in ("A", "B"):
        raise CLIError(f"--form must be A or B, got {form!r}")
    if m < 1 or n < 1:
        raise CLIError(f"degrees must be >= 1, got m={m} n={n}")
    if plot is not None:  # before the fit (which can take seconds with --fresh)
        check_writable(plot, what="--plot file")
    if json_path is not None:
        check_writable(json_path, what="--json file")
    fit = fit_rational(name, m=m, n=n, form=form, use_table=not fresh)
    ef2 = second_moment(fit.numerator, fit.denominator, form=form)
    target_ef2 = gaussian_expectation(lambda x: TARGETS[name](x) ** 2)
    result = {
        "activation": name,
        "form": form,
        "m": m,
        "n": n,
        "numerator": [float(v) for v in fit.numerator],
        "denominator": [float(v) for v in fit.denominator],
        "mse": float(fit.mse),
        "fit_points": fit.num_points,
        "fit_interval": list(fit.interval),
        "second_moment": ef2,
        "target_second_moment": target_ef2,
        "gain_squared": 1.0 / ef2,
        "gain": gain(fit.numerator, fit.denominator, form=form),
    }
    den = ("1 + sum_i |b_i| |x|^i" if form == "A" else "1 + |sum_i b_i x^i|")
    lines = [
        f"rational fit of {name}: degree {m}/{n}, form {form} (Q(x) = {den})",
        f"  least squares (Levenberg-Marquardt) on {fit.num_points} points uniform in "
        f"[{fit.interval[0]:g}, {fit.interval[1]:g}]",
        "  numerator   a_0..a_m = [" + ", ".join(f"{v:.8g}" for v in fit.numerator) + "]",
        "  denominator b_1..b_n = [" + ", ".join(f"{v:.8g}" for v in fit.denominator) + "]",
        f"  MSE on the fit grid    {fit.mse:.3e}",
        f"  E[F(x)^2], x~N(0,1)    {ef2:.6f}   (target {name}: {target_ef2:.6f})",
        f"  gain^2 = 1/E[F^2]      {1.0 / ef2:.6f}   gain = {result['gain']:.6f}",
        "  variance-preserving init of the following linear: Var[w] = Var[x] / (d_in * E[F^2])",
    ]
    print("\n".join(lines), file=stream)
    if plot is not None:
        from .plots import plot_fit

        ppath = Path(plot)
        x = np.linspace(-4.0, 4.0, 801)  # a bit beyond the fit interval: shows how it extrapolates
        plot_fit(x, TARGETS[name](x), fit(x), f"{name} vs rational {m}/{n} (form {form})", ppath)
        result["plot"] = str(ppath)
        print(f"  plot: {ppath}", file=stream)
    if json_path is not None:
        atomic_write_text(json_path, json.dumps(result, indent=2) + "\n")
    return result

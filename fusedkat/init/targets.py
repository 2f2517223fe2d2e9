"""Named target activations for rational fitting, in numpy (float64).

Each target is a plain ``np.ndarray -> np.ndarray`` function.  The names are the ones accepted by
:func:`fusedkat.init.fit_rational` and by ``GroupRational(init=...)``.
"""
from __future__ import annotations

import math
from typing import Callable, Dict

import numpy as np

Target = Callable[[np.ndarray], np.ndarray]


def _erf(x: np.ndarray) -> np.ndarray:
    # math.erf is exact to double precision; vectorised so that scipy is not needed at import.
    return np.vectorize(math.erf, otypes=[np.float64])(x)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    # Split by sign so exp never overflows.
    out = np.empty_like(x, dtype=np.float64)
    pos = x >= 0
    out[pos] = 1.0 / (1.0 + np.exp(-x[pos]))
    e = np.exp(x[~pos])
    out[~pos] = e / (1.0 + e)
    return out


def identity(x: np.ndarray) -> np.ndarray:
    return np.asarray(x, dtype=np.float64)


def relu(x: np.ndarray) -> np.ndarray:
    return np.maximum(x, 0.0)


def leaky_relu(x: np.ndarray, negative_slope: float = 0.01) -> np.ndarray:
    return np.where(x >= 0, x, negative_slope * x)


def gelu(x: np.ndarray) -> np.ndarray:
    """Exact (erf) GELU, torch's ``nn.GELU()`` default."""
    return 0.5 * x * (1.0 + _erf(x / math.sqrt(2.0)))


def gelu_tanh(x: np.ndarray) -> np.ndarray:
    """tanh-approximated GELU, ``nn.GELU(approximate="tanh")``."""
    return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))


def quick_gelu(x: np.ndarray) -> np.ndarray:
    """x * sigmoid(1.702 x) (CLIP's QuickGELU)."""
    return x * _sigmoid(1.702 * x)


def silu(x: np.ndarray) -> np.ndarray:
    """SiLU / swish: x * sigmoid(x)."""
    return x * _sigmoid(x)


def tanh(x: np.ndarray) -> np.ndarray:
    return np.tanh(x)


def sigmoid(x: np.ndarray) -> np.ndarray:
    return _sigmoid(x)


def mish(x: np.ndarray) -> np.ndarray:
    return x * np.tanh(np.logaddexp(0.0, x))


TARGETS: Dict[str, Target] = {
    "identity": identity,
    "relu": relu,
    "leaky_relu": leaky_relu,
    "gelu": gelu,
    "gelu_tanh": gelu_tanh,
    "quick_gelu": quick_gelu,
    "silu": silu,
    "tanh": tanh,
    "sigmoid": sigmoid,
    "mish": mish,
}

# Alternative spellings -> canonical name (swish and silu are the same function).
ALIASES: Dict[str, str] = {"swish": "silu", "linear": "identity", "gelu_erf": "gelu"}


def canonical_name(name: str) -> str:
    """Canonical target name for ``name`` (e.g. "swish" -> "silu"); ValueError if unknown."""
    if not isinstance(name, str):
        raise TypeError(f"target name must be a str, got {type(name).__name__}")
    key = name.lower()
    key = ALIASES.get(key, key)
    if key not in TARGETS:
        known = sorted(set(TARGETS) | set(ALIASES))
        raise ValueError(f"unknown target activation {name!r}; known: {known} (or pass a callable)")
    return key

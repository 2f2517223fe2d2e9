"""nn layers of GR-KAN: ``GroupRational``, ``GRKAN``, ``KANMlp`` (timm ``mlp_layer``)."""
from __future__ import annotations

from .grkan import GRKAN, KANMlp, rational_then_linear
from ._script import ScriptingNotSupportedError
from .kanlinear import KanLinear
from .rational import GroupRational, resolve_fit

__all__ = ["GroupRational", "GRKAN", "KANMlp", "rational_then_linear", "resolve_fit", "ScriptingNotSupportedError",
           "KanLinear"]

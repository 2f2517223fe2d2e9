"""ViT -> KAT weight transfer (paper sec. 4.4, "Initialize KAT from ViT", Fig. 4).

Every weight of the timm ViT is kept (embeddings, attention, norms, head); each MLP
``fc2(act(fc1(x)))`` becomes a :class:`fusedkat.nn.KANMlp` ``fc2(F2(fc1(F1(x))))`` with fc1/fc2
copied 1:1, F1 = identity (exact) and F2 = a rational fit of the ViT's activation, so the KAT computes
nearly the same function as the ViT on the same images.
"""
from __future__ import annotations

import copy
from typing import Callable, Union

import numpy as np
import torch
from timm.layers import Mlp
from torch import nn

from ..init import fit_rational
from ..nn import KANMlp
from ..ops import rational_math as rm

# Activation module class name -> fit target (covers torch.nn and timm.layers spellings).
_ACT_TARGETS = {
    "SiLU": "silu", "Swish": "silu", "ReLU": "relu", "Tanh": "tanh", "Sigmoid": "sigmoid",
    "GELUTanh": "gelu_tanh", "QuickGELU": "quick_gelu", "Mish": "mish", "LeakyReLU": "leaky_relu",
}


def activation_target(act: nn.Module) -> Union[str, Callable[[np.ndarray], np.ndarray]]:
    """The fit target for an activation module: a table name when known, else the module itself
    wrapped as a float64 numpy function (fitted fresh with scipy)."""
    name = type(act).__name__
    if name == "GELU":
        return "gelu_tanh" if getattr(act, "approximate", "none") == "tanh" else "gelu"
    if name == "LeakyReLU" and getattr(act, "negative_slope", 0.01) != 0.01:
        return _module_as_function(act)
    if name in _ACT_TARGETS:
        return _ACT_TARGETS[name]
    return _module_as_function(act)


def _module_as_function(act: nn.Module) -> Callable[[np.ndarray], np.ndarray]:
    @torch.no_grad()
    def fn(x: np.ndarray) -> np.ndarray:
        return act(torch.from_numpy(np.asarray(x, dtype=np.float64))).numpy()
    fn.__name__ = type(act).__name__
    return fn


def _mlp_to_kan(mlp: nn.Module, form: str, num_groups: int) -> KANMlp:
    fc1, fc2, act = getattr(mlp, "fc1", None), getattr(mlp, "fc2", None), getattr(mlp, "act", None)
    if not (isinstance(mlp, Mlp) and isinstance(fc1, nn.Linear) and isinstance(fc2, nn.Linear)
            and isinstance(act, nn.Module) and fc2.in_features == fc1.out_features):
        # GLU variants (SwiGLU, GluMlp) gate half of fc1's output: no fc1 -> F -> fc2 counterpart.
        raise TypeError(f"vit_to_kat needs timm Mlp blocks (fc1 -> act -> fc2 Linear layers); got {type(mlp).__name__}")
    if not isinstance(getattr(mlp, "norm", nn.Identity()), nn.Identity):
        raise NotImplementedError("vit_to_kat: MLPs with a hidden norm (scale_mlp_norm) have no exact KAN counterpart")
    fit = fit_rational(activation_target(act), form=form)
    drop1 = getattr(mlp, "drop1", None)
    drop2 = getattr(mlp, "drop2", None)
    kan = KANMlp(fc1.in_features, fc1.out_features, fc2.out_features,
                 bias=(fc1.bias is not None, fc2.bias is not None),
                 drop=(getattr(drop1, "p", 0.0), getattr(drop2, "p", 0.0)),
                 act_init=fit, form=form, num_groups=num_groups, device=fc1.weight.device, dtype=fc1.weight.dtype)
    with torch.no_grad():
        kan.fc1.weight.copy_(fc1.weight)
        kan.fc2.weight.copy_(fc2.weight)
        if fc1.bias is not None:
            kan.fc1.bias.copy_(fc1.bias)
        if fc2.bias is not None:
            kan.fc2.bias.copy_(fc2.bias)
    return kan


def vit_to_kat(vit: nn.Module, *, form: str = rm.DEFAULT_FORM, num_groups: int = rm.DEFAULT_GROUPS) -> nn.Module:
    """A KAT with every weight of the timm ViT ``vit`` copied (the ViT itself is not modified).

    Works for any timm ``VisionTransformer`` whose blocks use timm's ``Mlp`` (any size, patch,
    pooling, class/register tokens, layer scale).  The result is a deep copy of ``vit`` with each
    ``blocks[i].mlp`` replaced by a :class:`KANMlp`; its state_dict has the official KAT layout.
    Note: the ViT's MLP dropout sits after fc2 and after the activation; KANMlp's after the
    rationals (the official order), so results match exactly only without dropout (eval mode).
    """
    rm.check_int(num_groups, "num_groups")
    rm.check_form(form)
    blocks = getattr(vit, "blocks", None)
    if blocks is None or len(blocks) == 0:
        raise TypeError(f"vit_to_kat expects a timm VisionTransformer with .blocks, got {type(vit).__name__}")
    kat = copy.deepcopy(vit)
    for i, block in enumerate(kat.blocks):
        if not hasattr(block, "mlp"):
            raise TypeError(f"block {i} ({type(block).__name__}) has no .mlp")
        block.mlp = _mlp_to_kan(block.mlp, form, num_groups)
    return kat

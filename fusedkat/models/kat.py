"""KAT vision transformers in timm's registry: ``kat_{tiny,small,base}[_gelu|_swish]_patch16_224``.

``KAT`` is timm's ``VisionTransformer`` with :class:`fusedkat.nn.KANMlp` as its ``mlp_layer`` and an
``init_weights`` that adds mimetic attention init; the state_dict layout is the official one
(timm ViT keys plus ``blocks.{i}.mlp.act{1,2}.weight_{numerator,denominator}``).

Usage (a timm user's view)::

    import fusedkat, timm
    model = timm.create_model("kat_tiny_patch16_224")                          # random init, form A
    model = timm.create_model("kat_tiny_patch16_224", pretrained=True,
                              pretrained_cfg_overlay=dict(file="kat_tiny.pth"))  # official weights

Initialisation (seeded by torch's RNG): timm's ViT init for embeddings/norms/head, mimetic attention
init, act1 = identity and act2 = fit of ``act_init`` for the rationals' form, and fc1/fc2 with the
variance-preserving init.  (The official ``init_weights_vit_kan_*`` draws a Kaiming init for fc1/fc2
and then overwrites it with trunc_normal(0.02) in its ``else`` branch; we implement what the paper
describes.)

Extra model kwargs: ``act_init`` (target of act2; "swish"/"gelu"/...), ``rational_form`` ("A", the
official checkpoints' function, or "B"), ``num_groups`` (8), ``mimetic_init`` (True).
"""
from __future__ import annotations

import os
from functools import partial
from typing import Any, Dict, Optional

import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models.vision_transformer import VisionTransformer, checkpoint_filter_fn as _vit_filter

from ..nn import KANMlp
from ..ops import rational_math as rm
from .checkpoint import KATCheckpointError, checkpoint_format, validate_state_dict
from .mimetic import mimetic_init_

__all__ = ["KAT", "KATCheckpointError", "MODEL_CONFIGS"]


class KAT(VisionTransformer):
    """timm VisionTransformer whose MLPs are GR-KAN blocks (:class:`KANMlp`)."""

    def __init__(self, *args: Any, act_init: str = "swish", rational_form: str = rm.DEFAULT_FORM,
                 num_groups: int = rm.DEFAULT_GROUPS, mimetic_init: bool = True,
                 mlp_layer: Optional[Any] = None, **kwargs: Any) -> None:
        # Set before VisionTransformer.__init__, which calls self.init_weights() at its end.
        object.__setattr__(self, "mimetic_init", bool(mimetic_init))
        object.__setattr__(self, "act_init", act_init)
        object.__setattr__(self, "rational_form", rm.check_form(rational_form))
        if mlp_layer is None:
            mlp_layer = partial(KANMlp, act_init=act_init, form=rational_form, num_groups=num_groups)
        super().__init__(*args, mlp_layer=mlp_layer, **kwargs)

    def init_weights(self, mode: str = "", needs_reset: bool = True) -> None:
        """timm's ViT init (KANMlp re-initialises its own layers), mimetic attention init, then
        timm's optional ``fix_init`` depth rescaling (last, so it also applies to mimetic attn.proj)."""
        fix_init, self.fix_init = self.fix_init, False
        try:
            super().init_weights(mode, needs_reset)
        finally:
            self.fix_init = fix_init
        if self.mimetic_init and (mode or self.weight_init_mode) != "reset":
            for block in self.blocks:
                mimetic_init_(block.attn)
        if fix_init:
            self.fix_init_weight()


def _cfg(url: str = "", **kwargs: Any) -> Dict[str, Any]:
    return {
        "url": url, "num_classes": 1000, "input_size": (3, 224, 224), "pool_size": None,
        "crop_pct": 0.875, "interpolation": "bicubic", "fixed_input_size": True,
        "mean": IMAGENET_DEFAULT_MEAN, "std": IMAGENET_DEFAULT_STD,
        "first_conv": "patch_embed.proj", "classifier": "head", "license": "mit", **kwargs,
    }


_HF = "https://huggingface.co/adamdad/kat_pretained/resolve/main/"
# The official checkpoints (Adamdad/kat katransformer.py and README).  ".vitft" = initialised from
# a ViT and fine-tuned.  All were trained with the official kernels, i.e. rational form "A".
default_cfgs = generate_default_cfgs({
    "kat_tiny_patch16_224": _cfg(
        url=_HF + "kat_tiny_patch16_224_1f3ad3b2e69821f3d412f2924cf159a0e266f142d739cb68f68f796f5a0fe289.pth",
        hf_hub_id="adamdad/kat_tiny_patch16_224"),
    "kat_tiny_patch16_224.vitft": _cfg(
        url=_HF + "kat_tiny_patch16_224-finetune_64f124d003803e4a7e1aba1ba23500ace359b544e8a5f0110993f25052e402fb.pth",
        hf_hub_id="adamdad/kat_tiny_patch16_224.vitft"),
    "kat_small_patch16_224": _cfg(
        url=_HF + "kat_small_patch16_224_32487885cf13d2c14e461c9016fac8ad43f7c769171f132530941e930aeb5fe2.pth",
        hf_hub_id="adamdad/kat_small_patch16_224"),
    "kat_small_patch16_224.vitft": _cfg(
        url=_HF + "kat_small_patch_224-finetune_3ae087a4c28e2993468eb377d5151350c52c80b2a70cc48ceec63d1328ba58e0.pth",
        hf_hub_id="adamdad/kat_small_patch16_224.vitft"),
    "kat_base_patch16_224": _cfg(
        url=_HF + "kat_base_patch16_224_abff874d925d756d15cde97303f772a3460ddbd44b9c53fb9ce5cf15be230fb6.pth",
        hf_hub_id="adamdad/kat_base_patch16_224"),
    "kat_base_patch16_224.vitft": _cfg(
        url=_HF + "kat_base_patch16_224-finetune_440bf1ead9dd8ecab642078cfb60ae542f1fa33ca65517260501e02c011e38f2.pth",
        hf_hub_id="adamdad/kat_base_patch16_224.vitft"),
    # No released weights: usable with pretrained_cfg_overlay=dict(file=...).
    **{f"kat_{size}_{act}_patch16_224": _cfg() for size in ("tiny", "small", "base") for act in ("gelu", "swish")},
})

# Paper Table 15.
MODEL_CONFIGS: Dict[str, Dict[str, int]] = {
    "tiny": dict(patch_size=16, embed_dim=192, depth=12, num_heads=3),
    "small": dict(patch_size=16, embed_dim=384, depth=12, num_heads=6),
    "base": dict(patch_size=16, embed_dim=768, depth=12, num_heads=12),
}


def checkpoint_filter_fn(state_dict: Dict[str, torch.Tensor], model: KAT, **kwargs: Any) -> Dict[str, torch.Tensor]:
    """timm's ViT conversions (pos-embed / patch-embed resampling), then strict key/shape/value checks."""
    out = _vit_filter(state_dict, model, **kwargs)
    cfg = getattr(model, "pretrained_cfg", None) or {}
    classifier = cfg.get("classifier", "head")
    allow = model.num_classes != cfg.get("num_classes", model.num_classes)
    validate_state_dict(out, model, source=f"KAT checkpoint {cfg.get('file') or cfg.get('url') or ''}".strip(),
                        allow_classifier_mismatch=allow, classifier=classifier)
    return out


def _create_kat(variant: str, pretrained: bool = False, **kwargs: Any) -> KAT:
    overlay = kwargs.get("pretrained_cfg_overlay") or {}
    file = overlay.get("file")
    if pretrained and file:
        if not os.path.exists(file):
            raise FileNotFoundError(f"KAT checkpoint file not found: {file!r}")
        checkpoint_format(file)  # a clear error for a folder, an empty or a text file, before building
    out_indices = kwargs.pop("out_indices", 3)
    try:
        return build_model_with_cfg(
            KAT, variant, pretrained,
            pretrained_filter_fn=checkpoint_filter_fn,
            feature_cfg=dict(out_indices=out_indices, feature_cls="getter"),
            **kwargs,
        )
    except KATCheckpointError:
        raise
    except Exception as e:  # a file torch cannot read: say which file and why
        if pretrained and file:
            raise KATCheckpointError(f"could not load KAT checkpoint {file!r}: {type(e).__name__}: {e}") from e
        raise


def _entry(size: str, act: str, variant: str):
    def fn(pretrained: bool = False, **kwargs: Any) -> KAT:
        args = dict(MODEL_CONFIGS[size], act_init=act)
        return _create_kat(variant, pretrained=pretrained, **dict(args, **kwargs))
    fn.__name__ = variant
    fn.__qualname__ = variant
    fn.__module__ = __name__
    fn.__doc__ = f"KAT-{size.capitalize()}/16 at 224px, act2 initialised to {act} (paper Table 15)."
    return fn


# timm registers a name as fn.__name__ and finds its pretrained cfgs in this module's default_cfgs.
for _size in MODEL_CONFIGS:
    for _act, _suffix in (("swish", ""), ("gelu", "_gelu"), ("swish", "_swish")):
        _name = f"kat_{_size}{_suffix}_patch16_224"
        globals()[_name] = register_model(_entry(_size, _act, _name))  # also appends to __all__

"""The demo's KAT / ViT twin: the same timm VisionTransformer, differing only in the MLP.

Both are ``timm.models.vision_transformer.VisionTransformer`` with identical width, depth, heads,
patching, pooling and (timm's) initialisation; the KAT twin is :class:`fusedkat.models.KAT`, whose
``mlp_layer`` is :class:`fusedkat.nn.KANMlp` (act1 = identity, act2 = swish, variance-preserving fc
init). Mimetic attention init is switched off so that attention starts out the same way in both.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class TwinConfig:
    """Architecture shared by both twins (defaults sized for 8x8 digits on a CPU)."""

    img_size: int = 8
    patch_size: int = 2  # 8x8 image -> 16 tokens of 2x2 pixels
    in_chans: int = 1
    num_classes: int = 10
    embed_dim: int = 64
    depth: int = 4
    num_heads: int = 4
    mlp_ratio: float = 4.0
    num_groups: int = 8  # GR-KAN groups (KAT only); must divide embed_dim and the hidden width

    def vit_kwargs(self) -> dict:
        d = asdict(self)
        d.pop("num_groups")
        # Mean-pooled tokens, no class token: better for 16-token images and identical for both twins.
        return dict(d, global_pool="avg", class_token=False)


def build_vit(cfg: TwinConfig, seed: int) -> nn.Module:
    """The ViT twin (GELU MLP), weights drawn from ``torch.manual_seed(seed)``."""
    from timm.models.vision_transformer import VisionTransformer

    torch.manual_seed(seed)
    return VisionTransformer(**cfg.vit_kwargs())


def build_kat(cfg: TwinConfig, seed: int) -> nn.Module:
    """The KAT twin (GR-KAN MLP), weights drawn from ``torch.manual_seed(seed)``."""
    from ..models import KAT

    torch.manual_seed(seed)
    return KAT(**cfg.vit_kwargs(), num_groups=cfg.num_groups, mimetic_init=False)


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def rational_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """``(name, GroupRational)`` for every rational in the model, in forward order."""
    from ..nn import GroupRational

    return [(n, m) for n, m in model.named_modules() if isinstance(m, GroupRational)]

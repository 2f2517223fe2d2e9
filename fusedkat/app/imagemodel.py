"""Models and evaluation for ``fusedkat train`` / ``fusedkat eval``: building a timm model (KAT names
registered by :mod:`fusedkat.models`), ``--init-from-vit`` through the ViT -> KAT transfer, and
top-1 / top-5 / loss over a loader (summed over ranks under DDP).
"""
from __future__ import annotations

import ast
import contextlib
from typing import Any, Dict, List, Optional, TextIO

import torch

from .errors import CLIError


def parse_model_kwargs(items: Optional[List[str]]) -> Dict[str, Any]:
    """``["depth=2", "embed_dim=64", "act_init=gelu"]`` -> ``{"depth": 2, "embed_dim": 64, "act_init": "gelu"}``."""
    out: Dict[str, Any] = {}
    for item in items or []:
        key, eq, val = item.partition("=")
        if not eq or not key.isidentifier():
            raise CLIError(f"--model-kwargs takes KEY=VALUE items, got {item!r}")
        try:
            out[key] = ast.literal_eval(val)
        except (ValueError, SyntaxError):
            out[key] = val
    return out


def build_model(name: str, num_classes: int, *, img_size: Optional[int] = None, model_kwargs: Optional[dict] = None,
                drop_path: float = 0.0, **extra: Any) -> torch.nn.Module:
    """timm's ``name`` (KAT names registered by ``fusedkat.models``) with ``num_classes`` outputs."""
    import timm

    import fusedkat.models  # noqa: F401  (registers kat_* in timm)

    if not timm.is_model(name):
        raise CLIError(f"unknown model {name!r} (e.g. kat_tiny_patch16_224; see timm.list_models('kat_*'))")
    kwargs = dict(model_kwargs or {}, num_classes=num_classes, **extra)
    if img_size:
        kwargs["img_size"] = img_size
    if drop_path:
        kwargs["drop_path_rate"] = drop_path
    try:
        return timm.create_model(name, pretrained=False, **kwargs)
    except CLIError:
        raise
    except Exception as e:
        raise CLIError(f"could not build {name!r} with {kwargs}: {type(e).__name__}: {' '.join(str(e).split())[:300]}")


def init_from_vit(model: torch.nn.Module, path: str, vit_model: str, stream: TextIO) -> None:
    """Load a timm ViT checkpoint into ``model`` through the ViT -> KAT transfer (fusedkat convert's
    :func:`load_vit` and :func:`vit_to_kat`); the head is kept only if its size matches, the position
    embedding is resampled to the model's image size by timm."""
    from timm.models.vision_transformer import checkpoint_filter_fn

    from ..models import vit_to_kat
    from .convert import load_vit

    vit = load_vit(vit_model, path)
    kat = vit_to_kat(vit, form=getattr(model, "rational_form", "A"))
    sd = kat.state_dict()
    head = model.state_dict().get("head.weight")
    if head is None or "head.weight" not in sd or sd["head.weight"].shape != head.shape:
        sd = {k: v for k, v in sd.items() if not k.startswith("head.")}
    sd = checkpoint_filter_fn(sd, model)
    missing, unexpected = model.load_state_dict(sd, strict=False)
    bad = [k for k in missing if not k.startswith("head.")] + list(unexpected)
    if bad:
        raise CLIError(f"{path} ({vit_model}) does not fit {type(model).__name__}: keys {bad[:5]}")
    print(f"initialised from ViT {path} ({vit_model}) by the ViT -> KAT transfer"
          f"{'; new head' if missing else ''}", file=stream)


def vit_name_for(kat_name: str) -> str:
    size = next((s for s in ("tiny", "small", "base") if f"_{s}" in kat_name), None)
    if size is None:
        raise CLIError(f"--init-from-vit: cannot tell the ViT of {kat_name!r}; pass --vit-model")
    return f"vit_{size}_patch16_224"


@torch.no_grad()
def evaluate(model: torch.nn.Module, loader, dist: Optional[Any] = None, autocast=contextlib.nullcontext) -> Dict[str, float]:
    """``{"val_loss", "top1", "top5", "images"}`` over ``loader`` (summed over ranks); top-k in percent,
    top-5 is top-min(5, classes)."""
    from timm.utils import accuracy

    was = model.training
    model.eval()
    device = dist.device if dist is not None else next(model.parameters()).device
    loss_sum, c1, c5, n = 0.0, 0.0, 0.0, 0
    for x, y in loader:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        with autocast():
            logits = model(x)
        logits = logits.float()
        k5 = min(5, logits.shape[-1])
        a1, a5 = accuracy(logits, y, topk=(1, k5))
        loss_sum += float(torch.nn.functional.cross_entropy(logits, y, reduction="sum"))
        c1 += round(float(a1) * x.shape[0] / 100)
        c5 += round(float(a5) * x.shape[0] / 100)
        n += x.shape[0]
    model.train(was)
    if dist is not None:
        loss_sum, c1, c5, n = dist.sum([loss_sum, c1, c5, float(n)])
    n = max(1, int(n))
    return {"val_loss": loss_sum / n, "top1": 100.0 * c1 / n, "top5": 100.0 * c5 / n, "images": n}


def format_eval(m: Dict[str, Any]) -> str:
    return f"top-1 {m['top1']:.2f}%  top-5 {m['top5']:.2f}%  loss {m['val_loss']:.4f}  ({m['images']} images)"

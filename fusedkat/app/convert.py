"""``fusedkat convert``: a timm ViT checkpoint file -> a KAT checkpoint (paper sec. 4.4, Fig. 4).

Every ViT weight is copied; each MLP becomes a GR-KAN block with fc1/fc2 copied 1:1, act1 = identity
and act2 = a rational fit of the ViT's activation (:func:`fusedkat.models.vit_to_kat`). The written
state_dict has the official KAT layout, so timm loads it with ``pretrained_cfg_overlay=dict(file=...)``.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Optional, TextIO

import torch

from ..files import atomic_save, check_writable
from .errors import CLIError

_KAT_NAME = re.compile(r"^vit_(tiny|small|base)_patch16_224(\..*)?$")


def kat_name_for(vit_name: str) -> Optional[str]:
    """The registered KAT model with the same architecture as a timm ViT, if there is one."""
    m = _KAT_NAME.match(vit_name)
    return f"kat_{m.group(1)}_patch16_224" if m else None


def _one_line(e: BaseException, limit: int = 400) -> str:
    s = " ".join(str(e).split())
    return s if len(s) <= limit else s[: limit - 3] + "..."


def load_vit(model_name: str, path: str) -> torch.nn.Module:
    """Build timm's ``model_name`` and load ``path`` into it strictly (head size taken from the file)."""
    from ..models.checkpoint import KATCheckpointError, checkpoint_format

    if not os.path.isfile(path) and not os.path.isdir(path):
        raise CLIError(f"checkpoint file not found: {path}")
    try:  # a missing, empty or text file is reported before timm is even imported
        checkpoint_format(path)
    except KATCheckpointError as e:
        raise CLIError(str(e))
    import timm
    from timm.models import load_state_dict

    if not timm.is_model(model_name):
        raise CLIError(f"unknown timm model {model_name!r} (see timm.list_models('vit_*'))")
    try:
        sd = load_state_dict(path, weights_only=True)  # handles 'state_dict' / 'model' wrappers, safetensors
    except Exception as e:
        raise CLIError(f"could not read checkpoint {path}: {type(e).__name__}: {_one_line(e)}")
    head = sd.get("head.weight")
    num_classes = int(head.shape[0]) if isinstance(head, torch.Tensor) and head.dim() == 2 else 0
    try:
        vit = timm.create_model(model_name, pretrained=False, num_classes=num_classes)
    except Exception as e:
        raise CLIError(f"could not build {model_name!r}: {_one_line(e)}")
    if not hasattr(vit, "blocks"):
        raise CLIError(f"{model_name!r} is not a ViT-style model (no transformer blocks); convert needs a timm ViT")
    filt = getattr(__import__(type(vit).__module__, fromlist=["checkpoint_filter_fn"]), "checkpoint_filter_fn", None)
    if filt is not None:  # timm's own conversions (pos-embed resampling, other layouts)
        sd = filt(sd, vit)
    missing, unexpected = _diff_keys(vit.state_dict(), sd)
    if missing or unexpected:
        raise CLIError(
            f"{path} does not match {model_name}: missing keys {missing[:5]}{'...' if len(missing) > 5 else ''}, "
            f"unexpected keys {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}"
        )
    not_float = [k for k, v in vit.state_dict().items()
                 if v.is_floating_point() and isinstance(sd[k], torch.Tensor) and not sd[k].is_floating_point()]
    if not_float:
        k = not_float[0]
        raise CLIError(f"{path}: {len(not_float)} tensors are not floating point, e.g. {k} ({sd[k].dtype}); "
                       f"refusing to cast them silently")
    bad = [k for k, v in vit.state_dict().items() if tuple(sd[k].shape) != tuple(v.shape)]
    if bad:
        k = bad[0]
        raise CLIError(
            f"{path} does not match {model_name}: {len(bad)} tensors have the wrong shape, e.g. {k} "
            f"{tuple(sd[k].shape)} vs {tuple(vit.state_dict()[k].shape)}"
        )
    vit.load_state_dict(sd, strict=True)
    return vit.eval()


def _diff_keys(want: dict, have: dict) -> tuple[list, list]:
    return sorted(set(want) - set(have)), sorted(set(have) - set(want))


def run_convert(
    src: str,
    dst: str,
    *,
    model: str = "vit_tiny_patch16_224",
    form: str = "A",
    num_groups: int = 8,
    verify: bool = True,
    force: bool = False,
    stream: Optional[TextIO] = None,
) -> dict:
    """Convert the ViT checkpoint ``src`` into a KAT state_dict written atomically to ``dst``.

    ``dst`` is checked before any work (a folder, a missing or read-only folder, or an existing
    file without ``force`` is a one-line error) and written to a temporary file that is renamed
    into place: Ctrl-C or a crash mid-write leaves any previous ``dst`` intact.
    """
    import sys

    stream = stream or sys.stdout
    if form not in ("A", "B"):
        raise CLIError(f"--form must be A or B, got {form!r}")
    out = Path(dst)
    if out.resolve() == Path(src).resolve():
        raise CLIError("the output file must differ from the input checkpoint")
    check_writable(out, force=force, what="output file")
    vit = load_vit(model, src)
    from ..models import vit_to_kat

    try:
        kat = vit_to_kat(vit, form=form, num_groups=num_groups).eval()
    except (ValueError, TypeError, NotImplementedError) as e:
        raise CLIError(f"cannot convert {model}: {_one_line(e)}")
    state = kat.state_dict()
    atomic_save(out, lambda fh: torch.save(state, fh))
    info = {"src": src, "dst": str(out), "vit_model": model, "form": form, "num_groups": num_groups,
            "num_classes": int(vit.num_classes), "params": sum(p.numel() for p in kat.parameters())}
    print(f"wrote {out}: KAT with every weight of {model} ({info['params']:,} parameters, "
          f"act2 = rational fit of the ViT activation, form {form}, {num_groups} groups)", file=stream)
    if verify:
        # Same random images through both: how close is the KAT to the ViT it came from?
        cfg = getattr(vit, "pretrained_cfg", {}) or {}
        size = tuple(cfg.get("input_size", (3, 224, 224)))
        x = torch.randn((2,) + size, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            a, b = vit(x), kat(x)
        info["verify_max_abs_logit_diff"] = float((a - b).abs().max())
        info["verify_logit_scale"] = float(a.abs().max())
        print(f"check: on 2 random images max |logit(ViT) - logit(KAT)| = {info['verify_max_abs_logit_diff']:.3g} "
              f"(logits up to {info['verify_logit_scale']:.3g})", file=stream)
    name = kat_name_for(model)
    nc = "" if vit.num_classes == 1000 else f", num_classes={vit.num_classes}"
    if name and form == "A" and num_groups == 8:
        # num_classes goes into the overlay too: otherwise timm drops a head whose size differs
        # from the pretrained cfg's 1000 classes.
        print(f"load it with: timm.create_model({name!r}, pretrained=True{nc}, "
              f"pretrained_cfg_overlay=dict(file={str(out)!r}{nc}))  # after `import fusedkat`", file=stream)
        info["timm_name"] = name
    else:
        print(f"load it with: fusedkat.models.vit_to_kat(timm.create_model({model!r}{nc}), form={form!r}, "
              f"num_groups={num_groups}).load_state_dict(torch.load({str(out)!r}))", file=stream)
    return info

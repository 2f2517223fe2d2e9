"""``fusedkat eval``: top-1 / top-5 / loss of a checkpoint on a folder of class folders.

Preprocessing is the model's own (``timm.data.resolve_model_data_config``: resize by crop_pct,
interpolation, center crop, mean/std), at ``--img-size`` if given.  Reads both checkpoints written by
``fusedkat train`` (model name, model kwargs, image size and class list come from the checkpoint;
``--use-ema`` evaluates its EMA weights) and plain state_dicts in the official KAT layout (wrapped in
``model``/``state_dict`` or not; ``--model`` names the architecture, the head size is read from the file).
"""
from __future__ import annotations

import sys
from typing import Any, Dict, List, Optional, TextIO

import torch

from . import checkpointing as ck
from .errors import CLIError
from .imagedata import SeededImages, ShardSampler, eval_data_config, eval_transform, make_loader, scan_folder
from .imagemodel import build_model, evaluate, format_eval, parse_model_kwargs


def _official_model(path: str, name: Optional[str], num_classes: int, img_size: Optional[int],
                    model_kwargs: Dict[str, Any]) -> torch.nn.Module:
    from timm.models import load_state_dict

    from ..models import KATCheckpointError

    if not name:
        raise CLIError(f"{path} is not a fusedkat train checkpoint; pass --model (e.g. kat_tiny_patch16_224)")
    try:
        sd = load_state_dict(path, weights_only=True)
    except Exception as e:
        raise CLIError(f"could not read checkpoint {path}: {type(e).__name__}: {' '.join(str(e).split())[:300]}")
    head = sd.get("head.weight")
    nc = int(head.shape[0]) if isinstance(head, torch.Tensor) and head.dim() == 2 else num_classes
    if nc != num_classes:
        raise CLIError(f"{path} has a {nc}-class head but the data folder has {num_classes} classes")
    model = build_model(name, nc, img_size=img_size, model_kwargs=model_kwargs)
    filt = getattr(sys.modules.get(type(model).__module__), "checkpoint_filter_fn", None)
    try:
        if filt is not None:  # timm's conversions (pos-embed resampling); KAT's also validates keys/shapes
            sd = filt(sd, model)
        model.load_state_dict(sd, strict=True)
    except (KATCheckpointError, RuntimeError) as e:
        first = str(e).strip().splitlines()
        raise CLIError(f"{path} does not fit {name}: {' '.join(' '.join(first).split())[:400]}")
    return model


def run_eval(checkpoint: str, data_dir: str, *, model: Optional[str] = None, img_size: Optional[int] = None,
             model_kwargs: Optional[List[str]] = None, use_ema: bool = False, batch_size: int = 128,
             workers: int = 4, device: str = "auto", check_images: str = "verify", bad_images: str = "error",
             stream: Optional[TextIO] = None) -> Dict[str, Any]:
    """Evaluate ``checkpoint`` on ``data_dir`` (``data_dir/<class>/<image>``); prints and returns the metrics."""
    stream = stream or sys.stdout
    scan = scan_folder(data_dir, what="evaluation folder", check=check_images, bad_images=bad_images)
    if scan.skipped:
        print(f"skipped {len(scan.skipped)} corrupt images (e.g. {scan.skipped[0]})", file=stream)
    kwargs = parse_model_kwargs(model_kwargs)
    obj = ck.read_file(checkpoint)
    if ck.is_train_checkpoint(obj):
        cfg = obj.get("config") or {}
        if model and model != cfg.get("model"):
            raise CLIError(f"{checkpoint} is a checkpoint of {cfg.get('model')!r}, not of {model!r}")
        if kwargs and kwargs != (cfg.get("model_kwargs") or {}):
            raise CLIError(f"{checkpoint} was trained with --model-kwargs {cfg.get('model_kwargs')}, not {kwargs}")
        if list(obj.get("classes") or []) != scan.classes:
            raise CLIError(f"the classes of {data_dir!r} differ from those {checkpoint} was trained on")
        if use_ema and obj.get("ema") is None:
            raise CLIError(f"{checkpoint} has no EMA weights (trained without --model-ema)")
        img_size = img_size or cfg.get("img_size")
        net = build_model(cfg["model"], len(scan.classes), img_size=img_size, model_kwargs=cfg.get("model_kwargs"))
        net.load_state_dict(obj["ema"] if use_ema else obj["model"])
        name = cfg["model"]
    else:
        if use_ema:
            raise CLIError("--use-ema needs a fusedkat train checkpoint")
        del obj
        net = _official_model(checkpoint, model, len(scan.classes), img_size, kwargs)
        name = model
    dev = torch.device("cuda" if torch.cuda.is_available() and device != "cpu" else "cpu")
    if device == "cuda" and dev.type != "cuda":
        raise CLIError("--device cuda was requested but torch sees no CUDA device")
    net.to(dev).eval()
    data_cfg = eval_data_config(net, img_size)
    ds = SeededImages(scan.samples, eval_transform(data_cfg))
    loader = make_loader(ds, ShardSampler(len(ds), shuffle=False), batch_size, workers=workers, drop_last=False,
                         pin_memory=dev.type == "cuda")
    print(f"evaluating {name}{' (EMA weights)' if use_ema else ''} from {checkpoint} on {len(ds)} images, "
          f"{len(scan.classes)} classes; preprocessing input {data_cfg['input_size'][1:]}, crop_pct "
          f"{data_cfg.get('crop_pct')}, {data_cfg.get('interpolation')}, mean {tuple(round(v, 3) for v in data_cfg['mean'])}, "
          f"std {tuple(round(v, 3) for v in data_cfg['std'])}", file=stream)
    autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if dev.type == "cuda" else None
    import contextlib

    m = evaluate(net, loader, None, autocast or contextlib.nullcontext)
    print(f"{checkpoint}: {format_eval(m)}", file=stream)
    return m

"""``fusedkat export``: a KAT checkpoint file -> a ``pt2`` program, an ONNX model or an AOTInductor package.

The checkpoint is a state_dict in the official KAT layout (the released ``kat_*.pth`` files, a
``fusedkat convert`` output, anything ``timm.create_model("kat_...", pretrained=True,
pretrained_cfg_overlay=dict(file=...))`` loads).  ``--model`` names its architecture: a registered
KAT (``kat_tiny_patch16_224``, ...) or the timm ViT a ``fusedkat convert`` output came from
(``vit_small_patch16_224``, ...: rebuilt with :func:`fusedkat.models.vit_to_kat`).  The number of
classes is read from the checkpoint's head.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional, TextIO

import torch
from torch import nn

from ..files import check_writable
from .errors import CLIError


def _one_line(e: BaseException, limit: int = 400) -> str:
    s = " ".join(str(e).split())
    return s if len(s) <= limit else s[: limit - 3] + "..."


def load_model(checkpoint: str, model_name: str, *, form: str = "A", num_groups: int = 8,
               img_size: Optional[int] = None) -> nn.Module:
    """The eval-mode KAT ``model_name`` holding the weights of ``checkpoint`` (strictly checked)."""
    import timm
    from timm.models import load_state_dict

    from ..models import KATCheckpointError, checkpoint_filter_fn, checkpoint_format, vit_to_kat

    if form not in ("A", "B"):
        raise CLIError(f"--form must be A or B, got {form!r}")
    if not timm.is_model(model_name):
        raise CLIError(f"unknown model {model_name!r}: a KAT (timm.list_models('kat_*')) or the timm ViT "
                       f"a `fusedkat convert` checkpoint came from")
    try:
        checkpoint_format(checkpoint)
    except KATCheckpointError as e:
        raise CLIError(str(e))
    try:
        sd = load_state_dict(checkpoint, weights_only=True)  # 'state_dict'/'model' wrappers, safetensors
    except Exception as e:
        raise CLIError(f"could not read checkpoint {checkpoint}: {type(e).__name__}: {_one_line(e)}")
    head = sd.get("head.weight")
    kwargs = {"num_classes": int(head.shape[0]) if isinstance(head, torch.Tensor) and head.dim() == 2 else 0}
    if img_size is not None:
        kwargs["img_size"] = img_size
    try:
        if model_name.startswith("kat_"):
            # mimetic init draws SVDs that the checkpoint overwrites anyway
            model = timm.create_model(model_name, pretrained=False, rational_form=form, num_groups=num_groups,
                                      mimetic_init=False, **kwargs)
        else:
            vit = timm.create_model(model_name, pretrained=False, **kwargs)
            if not hasattr(vit, "blocks"):
                raise CLIError(f"{model_name!r} is neither a KAT nor a timm ViT (no transformer blocks)")
            model = vit_to_kat(vit, form=form, num_groups=num_groups)
    except CLIError:
        raise
    except Exception as e:
        raise CLIError(f"could not build {model_name!r}: {_one_line(e)}")
    # the error messages name the file, not the default cfg's download URL
    model.pretrained_cfg = dict(getattr(model, "pretrained_cfg", None) or {}, file=checkpoint)
    try:
        sd = checkpoint_filter_fn(sd, model)  # timm's pos-embed resampling (--img-size), then strict checks
    except KATCheckpointError as e:
        raise CLIError(f"{_one_line(e, 600)} (is --model {model_name} the checkpoint's architecture?)")
    model.load_state_dict(sd, strict=True)
    return model.eval()


def _size(n: int) -> str:
    return f"{n / 1e6:.1f} MB" if n >= 1e5 else f"{n / 1e3:.1f} kB"


_LOAD_HINT = {
    "pt2": "torch.export.load({path!r}).module()(images)",
    "onnx": "onnxruntime.InferenceSession({path!r}).run(None, {{'x': images}})",
    "aoti": "torch._inductor.aoti_load_package({path!r})(images)",
}


def run_export(checkpoint: str, out: str, *, model: str, format: str, batch: Optional[int] = None,
               img_size: Optional[int] = None, keep_custom_ops: bool = False, force: bool = False,
               form: str = "A", num_groups: int = 8, stream: Optional[TextIO] = None) -> dict:
    """Export the checkpoint to ``out``; prints what it wrote and the logits difference it verified."""
    from ..export import FORMATS, ExportError, export_model

    stream = stream or sys.stdout
    if format not in FORMATS:
        raise CLIError(f"--format must be one of {', '.join(FORMATS)}, got {format!r}")
    if keep_custom_ops and format != "pt2":
        raise CLIError(f"--keep-custom-ops works with --format pt2 only ({format} cannot call fusedkat's Python ops)")
    if Path(out).resolve() == Path(checkpoint).resolve():
        raise CLIError("the output file must differ from the input checkpoint")
    check_writable(out, force=force, what="output file")  # before minutes of loading and compiling
    kat = load_model(checkpoint, model, form=form, num_groups=num_groups, img_size=img_size)
    try:
        report = export_model(kat, out, format=format, keep_custom_ops=keep_custom_ops, batch=batch, force=force)
    except ExportError as e:
        raise CLIError(str(e))
    ops = (f"keeps {', '.join(report.fusedkat_ops)} (load after `import fusedkat`)" if report.fusedkat_ops
           else "fusedkat ops decomposed into standard ops")
    shape = "dynamic batch" if report.dynamic_batch else f"batch {batch}"
    print(f"wrote {report.path}: {format}, {_size(report.bytes)}, {shape}, {ops} ({report.seconds:.0f} s)", file=stream)
    print(f"check: on random images at batch {' and '.join(map(str, report.batches_checked))}, max |logit({format}) "
          f"- logit(eager)| = {report.max_abs_diff:.3g} ({report.max_rel_diff:.3g} of the largest logit; "
          f"tolerance {report.tolerance:g})", file=stream)
    print("load it with: " + _LOAD_HINT[format].format(path=report.path), file=stream)
    return report.as_dict()

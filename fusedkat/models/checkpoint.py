"""Loading official-format KAT checkpoints: file-format sniffing and key/shape/dtype validation
with clear errors."""
from __future__ import annotations

import os
from typing import Dict, List

import torch
from torch import nn


class KATCheckpointError(ValueError):
    """A checkpoint does not fit the model; the message lists every offending key."""


def checkpoint_format(path: str) -> str:
    """What kind of checkpoint file ``path`` is, from its first bytes, without unpickling anything.

    Returns ``"torch-zip"`` (``torch.save``'s format), ``"torch-legacy"`` (a pickle, torch < 1.6)
    or ``"safetensors"``.  Raises :class:`KATCheckpointError` naming the file if it is missing,
    empty, a folder, or none of these (e.g. a text or HTML file: a failed download), instead of
    the ``KeyError``/``EOFError`` that torch's unpickler would raise deep inside.
    """
    if os.path.isdir(path):
        raise KATCheckpointError(f"checkpoint {path!r} is a folder, not a file")
    if not os.path.isfile(path):
        raise KATCheckpointError(f"checkpoint file not found: {path!r}")
    size = os.path.getsize(path)
    if size == 0:
        raise KATCheckpointError(f"checkpoint {path!r} is empty (0 bytes): an interrupted download or write?")
    with open(path, "rb") as f:
        head = f.read(16)
    if head.startswith(b"PK\x03\x04"):
        return "torch-zip"
    if head[:1] == b"\x80" and len(head) > 1 and 2 <= head[1] <= 5:
        return "torch-legacy"
    if len(head) >= 9:
        header_len = int.from_bytes(head[:8], "little")
        if 0 < header_len <= size - 8 and head[8:9] == b"{":
            return "safetensors"
    kind = "a text file" if _looks_like_text(head) else "not a checkpoint"
    raise KATCheckpointError(f"checkpoint {path!r} ({size} bytes) is {kind}: expected a torch.save "
                             f"(.pth/.bin) or .safetensors file; starts with {head[:12]!r}")


def _looks_like_text(head: bytes) -> bool:
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:  # (a multi-byte character cut at the end also lands here: fine)
        return False
    return all(ch.isprintable() or ch in "\t\r\n" for ch in text)


def _is_classifier(key: str, classifier: str) -> bool:
    return key == classifier or key.startswith(classifier + ".")


def validate_state_dict(state_dict: Dict[str, torch.Tensor], model: nn.Module, *, source: str = "checkpoint",
                        allow_classifier_mismatch: bool = False, classifier: str = "head") -> None:
    """Raise :class:`KATCheckpointError` unless ``state_dict`` has exactly the model's keys and shapes
    and only finite floating values.  A non-floating tensor (e.g. int64) where the model has a
    floating one is an error, not silently cast (an integer-typed coefficient is a damaged file or a
    mistake in its conversion, and rounding would hide it).  Classifier keys may differ when ``allow_classifier_mismatch``
    (timm drops them itself when num_classes differs from the pretrained config)."""
    expected = model.state_dict()
    skip = (lambda k: allow_classifier_mismatch and _is_classifier(k, classifier))
    missing = sorted(k for k in expected if k not in state_dict and not skip(k))
    unexpected = sorted(k for k in state_dict if k not in expected and not skip(k))
    wrong_shape: List[str] = []
    bad_values: List[str] = []
    for k, v in state_dict.items():
        if k not in expected or skip(k):
            continue
        if not isinstance(v, torch.Tensor):
            bad_values.append(f"{k} (not a tensor: {type(v).__name__})")
            continue
        if expected[k].is_floating_point() and not v.is_floating_point():
            bad_values.append(f"{k} (dtype {v.dtype}, model expects a floating tensor; not cast)")
        elif tuple(v.shape) != tuple(expected[k].shape):
            wrong_shape.append(f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(expected[k].shape)}")
        elif v.is_floating_point() and not bool(torch.isfinite(v).all()):
            bad_values.append(f"{k} (non-finite values)")
    problems = []
    if missing:
        problems.append(f"missing keys ({len(missing)}): {missing}")
    if unexpected:
        problems.append(f"unexpected keys ({len(unexpected)}): {unexpected}")
    if wrong_shape:
        problems.append(f"shape mismatches ({len(wrong_shape)}): {wrong_shape}")
    if bad_values:
        problems.append(f"corrupt values ({len(bad_values)}): {bad_values}")
    if problems:
        raise KATCheckpointError(f"{source} does not match {type(model).__name__}:\n  " + "\n  ".join(problems))

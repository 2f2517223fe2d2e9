"""Loading official-format KAT checkpoints: key/shape validation with clear errors."""
from __future__ import annotations

from typing import Dict, List

import torch
from torch import nn


class KATCheckpointError(ValueError):
    """A checkpoint does not fit the model; the message lists every offending key."""


def _is_classifier(key: str, classifier: str) -> bool:
    return key == classifier or key.startswith(classifier + ".")


def validate_state_dict(state_dict: Dict[str, torch.Tensor], model: nn.Module, *, source: str = "checkpoint",
                        allow_classifier_mismatch: bool = False, classifier: str = "head") -> None:
    """Raise :class:`KATCheckpointError` unless ``state_dict`` has exactly the model's keys and shapes
    and only finite floating values.  Classifier keys may differ when ``allow_classifier_mismatch``
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
        if tuple(v.shape) != tuple(expected[k].shape):
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

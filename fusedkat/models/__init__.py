"""KAT vision transformers for timm (registered on import) and ViT -> KAT conversion."""
from __future__ import annotations

from .checkpoint import KATCheckpointError, checkpoint_format, validate_state_dict
from .convert import activation_target, vit_to_kat
from .kanify import KanifyReport, kanify
from .kat import KAT, MODEL_CONFIGS, checkpoint_filter_fn
from .mimetic import mimetic_init_, ortho_like

__all__ = ["KAT", "MODEL_CONFIGS", "KATCheckpointError", "checkpoint_format", "validate_state_dict", "checkpoint_filter_fn",
           "vit_to_kat", "activation_target", "mimetic_init_", "ortho_like",
           "kanify", "KanifyReport"]

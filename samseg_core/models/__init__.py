"""Model loaders: SAM checkpoints and models, transformers semantic segmenters, device helpers."""

from samseg_core.models.device import autocast_context, resolve_device
from samseg_core.models.sam import (
    SAM_CHECKPOINT_FILES,
    SAM_CHECKPOINT_URLS,
    SamCheckpointNotFound,
    load_sam,
    resolve_sam_checkpoint,
)
from samseg_core.models.semantic import (
    SemanticModelNotFound,
    SemanticPrediction,
    SemanticSegmenter,
    load_semantic_model,
    upsample_argmax,
)

__all__ = [
    "SAM_CHECKPOINT_FILES",
    "SAM_CHECKPOINT_URLS",
    "SamCheckpointNotFound",
    "SemanticModelNotFound",
    "SemanticPrediction",
    "SemanticSegmenter",
    "autocast_context",
    "load_sam",
    "load_semantic_model",
    "resolve_device",
    "resolve_sam_checkpoint",
    "upsample_argmax",
]

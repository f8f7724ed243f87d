"""Test and demo helpers: tiny random-init models of the real architectures and synthetic scenes."""

from samseg_core.testing.scenes import (
    Instance,
    SyntheticScene,
    degrade_prediction,
    make_scene,
    make_scenes,
    write_scene_images,
)
from samseg_core.testing.tiny_models import (
    save_random_sam_checkpoint,
    save_tiny_mask2former,
    save_tiny_segformer,
    tiny_mask2former,
    tiny_mask2former_processor,
    tiny_sam,
    tiny_segformer,
    tiny_segformer_processor,
)

__all__ = [
    "Instance",
    "SyntheticScene",
    "degrade_prediction",
    "make_scene",
    "make_scenes",
    "save_random_sam_checkpoint",
    "save_tiny_mask2former",
    "save_tiny_segformer",
    "tiny_mask2former",
    "tiny_mask2former_processor",
    "tiny_sam",
    "tiny_segformer",
    "tiny_segformer_processor",
    "write_scene_images",
]

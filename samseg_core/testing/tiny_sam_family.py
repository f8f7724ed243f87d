"""Tiny random-init transformers SAM-family models (the real architectures, tiny widths) saved to disk."""

from __future__ import annotations

import os
import pathlib
from typing import Any

import torch

__all__ = ["TINY_SAM_IMAGE_SIZE", "save_tiny_transformers_sam", "tiny_transformers_sam"]

# Input side of the tiny models; like segment_anything's tiny_sam(), masks come out at a quarter of it.
TINY_SAM_IMAGE_SIZE = 256
_KINDS = ("sam", "sam_hq", "sam2")


def _tiny_config(kind: str, image_size: int) -> Any:
    """Return a ``SamConfig`` / ``SamHQConfig`` with a 2-layer 32-wide ViT, prompt encoder and decoder."""
    from transformers import SamConfig, SamHQConfig

    vision = {
        "hidden_size": 32,
        "output_channels": 32,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "image_size": image_size,
        "patch_size": 16,
        "window_size": 4,
        "global_attn_indexes": [1],
        "num_pos_feats": 16,  # half the prompt width, as in the released models (128 for 256)
        "mlp_dim": 64,
        # the released config's 1e-10 makes a random ViT output ~0 for every image: use a real spread
        "initializer_range": 0.02,
    }
    prompt = {"hidden_size": 32, "image_size": image_size, "patch_size": 16, "mask_input_channels": 16}
    decoder = {
        "hidden_size": 32,
        "mlp_dim": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "iou_head_hidden_dim": 32,
    }
    if kind == "sam_hq":
        decoder["vit_dim"] = vision["hidden_size"]
    cls = SamHQConfig if kind == "sam_hq" else SamConfig
    return cls(vision_config=vision, prompt_encoder_config=prompt, mask_decoder_config=decoder)


def _tiny_sam2_config(image_size: int) -> Any:
    """Return a ``Sam2Config``: a 6-block Hiera (widths 16-128), 32-wide FPN, prompt encoder and decoder."""
    from transformers import Sam2Config, Sam2HieraDetConfig, Sam2VisionConfig

    backbone = Sam2HieraDetConfig(
        hidden_size=16,
        image_size=[image_size, image_size],
        embed_dim_per_stage=[16, 32, 64, 128],
        num_attention_heads_per_stage=[1, 1, 1, 1],
        blocks_per_stage=[1, 2, 2, 1],
        window_size_per_stage=[4, 4, 4, 4],
        global_attention_blocks=[4],  # not a stage's first (query-pooling) block: those need a window
    )
    levels = [[image_size // stride] * 2 for stride in (4, 8, 16)]
    vision = Sam2VisionConfig(
        backbone_config=backbone,
        backbone_channel_list=[128, 64, 32, 16],
        backbone_feature_sizes=levels,
        fpn_hidden_size=32,
    )
    prompt = {"hidden_size": 32, "image_size": image_size, "patch_size": 16}
    decoder = {"hidden_size": 32, "mlp_dim": 64, "num_attention_heads": 2, "iou_head_hidden_dim": 32}
    return Sam2Config(vision_config=vision, prompt_encoder_config=prompt, mask_decoder_config=decoder)


def _tiny_processor(kind: str, image_size: int) -> Any:
    """Return the processor of ``kind`` resizing to ``image_size``, masks at a quarter of it."""
    import transformers

    low = image_size // 4
    if kind == "sam2":
        image_processor = transformers.Sam2ImageProcessor(
            size={"height": image_size, "width": image_size}, mask_size={"height": low, "width": low}
        )
        return transformers.Sam2Processor(image_processor)
    image_processor = transformers.SamImageProcessor(
        size={"longest_edge": image_size},
        pad_size={"height": image_size, "width": image_size},
        mask_size={"longest_edge": low},
        mask_pad_size={"height": low, "width": low},
    )
    return (transformers.SamHQProcessor if kind == "sam_hq" else transformers.SamProcessor)(image_processor)


def tiny_transformers_sam(
    kind: str = "sam", seed: int = 0, *, image_size: int = TINY_SAM_IMAGE_SIZE
) -> tuple[Any, Any]:
    """Return ``(model, processor)``: a tiny seeded transformers SAM-family model in eval mode.

    Args:
        kind: ``"sam"`` (``SamModel``), ``"sam_hq"`` (``SamHQModel``) or ``"sam2"`` (``Sam2Model``).
        seed: Seed of the random initialisation.
        image_size: Input side; a multiple of 64 (patch 16, window 4).
    """
    import transformers

    if kind not in _KINDS:
        raise ValueError(f"kind must be one of {_KINDS}, got {kind!r}")
    if image_size % 64:
        raise ValueError(f"image_size must be a multiple of 64, got {image_size}")
    config = _tiny_sam2_config(image_size) if kind == "sam2" else _tiny_config(kind, image_size)
    model_cls = {"sam": "SamModel", "sam_hq": "SamHQModel", "sam2": "Sam2Model"}[kind]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = getattr(transformers, model_cls)(config)
        _pytorch_default_init(model)
    return model.eval(), _tiny_processor(kind, image_size)


def _pytorch_default_init(model: torch.nn.Module) -> None:
    """Re-initialise linear and conv layers with PyTorch's defaults (as ``tiny_sam()`` has).

    With transformers' trained-model init (std 0.02) a 32-wide decoder outputs logits of ~1e-5, too close
    to zero for comparisons to mean anything; the default init gives logits of ~0.1 that depend on the image.
    """
    for module in model.modules():
        if isinstance(module, (torch.nn.Linear, torch.nn.Conv2d, torch.nn.ConvTranspose2d)):
            module.reset_parameters()


def save_tiny_transformers_sam(
    directory: str | os.PathLike, kind: str = "sam", seed: int = 0
) -> pathlib.Path:
    """Save a :func:`tiny_transformers_sam` model and processor with ``save_pretrained``; return the directory.

    ``SamModel.from_pretrained(directory)`` (or ``SamHQModel``) and the matching processor load it back.

    Args:
        directory: Destination directory (created when missing).
        kind: ``"sam"``, ``"sam_hq"`` or ``"sam2"``.
        seed: Seed of the random initialisation.
    """
    out = pathlib.Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    model, processor = tiny_transformers_sam(kind, seed)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out


# Hiera backbones of the released SAM 2.1 checkpoints (their config.json on the hub), for random-weight
# full-size models in benchmarks: (hidden size, blocks per stage, global attention blocks, windows, bkg size).
_SAM2_HIERA = {
    "sam2.1-hiera-tiny": (96, [1, 2, 7, 2], [5, 7, 9], [8, 4, 14, 7], [7, 7]),
    "sam2.1-hiera-small": (96, [1, 2, 11, 2], [7, 10, 13], [8, 4, 14, 7], [7, 7]),
    "sam2.1-hiera-base-plus": (112, [2, 3, 16, 3], [12, 16, 20], [8, 4, 14, 7], [14, 14]),
    "sam2.1-hiera-large": (144, [2, 6, 36, 4], [23, 33, 43], [8, 4, 16, 8], [7, 7]),
}


def full_size_sam2(name: str = "sam2.1-hiera-large", seed: int = 0) -> Any:
    """Return a random-weight transformers ``Sam2Model`` with the architecture of a released SAM 2.1 model.

    For speed and memory benchmarks only (random weights say nothing about quality).

    Args:
        name: ``sam2.1-hiera-tiny`` / ``-small`` / ``-base-plus`` / ``-large`` (a ``facebook/`` prefix is ignored).
        seed: Seed of the random initialisation.
    """
    from transformers import Sam2Config, Sam2HieraDetConfig, Sam2Model, Sam2VisionConfig

    name = name.removeprefix("facebook/")
    if name not in _SAM2_HIERA:
        raise ValueError(f"name must be one of {sorted(_SAM2_HIERA)}, got {name!r}")
    hidden, blocks, global_blocks, windows, background = _SAM2_HIERA[name]
    widths = [hidden, 2 * hidden, 4 * hidden, 8 * hidden]
    backbone = Sam2HieraDetConfig(
        hidden_size=hidden,
        num_attention_heads=1 if hidden == 96 else 2,
        embed_dim_per_stage=widths,
        num_attention_heads_per_stage=[1, 2, 4, 8] if hidden == 96 else [2, 4, 8, 16],
        blocks_per_stage=blocks,
        global_attention_blocks=global_blocks,
        window_size_per_stage=windows,
        window_positional_embedding_background_size=background,
    )
    vision = Sam2VisionConfig(backbone_config=backbone, backbone_channel_list=widths[::-1])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Sam2Model(Sam2Config(vision_config=vision))
    return model.eval()

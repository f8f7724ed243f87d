"""Tiny random-init models of the real architectures (SAM, SegFormer, Mask2Former) for tests and demos."""

from __future__ import annotations

import os
import pathlib
from collections.abc import Mapping
from functools import partial

import torch

SAM_PIXEL_MEAN = [123.675, 116.28, 103.53]
SAM_PIXEL_STD = [58.395, 57.12, 57.375]


def tiny_sam(img_size: int = 256, seed: int = 0, *, prompt_embed_dim: int = 32):
    """Return a tiny segment_anything ``Sam`` (2-block, 64-dim ViT) with seeded random weights, in eval mode.

    It works with ``SamPredictor`` and ``SamAutomaticMaskGenerator`` like the real models (which use
    ``img_size=1024``): inputs are resized to ``img_size`` and masks are predicted at ``img_size // 4``.

    Args:
        img_size: Input side of the image encoder; a multiple of 64 (patch 16, window 4).
        seed: Seed of the random initialisation.
        prompt_embed_dim: Width of the image embedding, prompt tokens and mask decoder.
    """
    from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

    if img_size % 64:
        raise ValueError(f"img_size must be a multiple of 64, got {img_size}")
    patch_size = 16
    # As in segment_anything/build_sam.py: embedding grid = img_size / patch; mask input = 4x that grid.
    embedding_size = img_size // patch_size
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        sam = Sam(
            image_encoder=ImageEncoderViT(
                img_size=img_size,
                patch_size=patch_size,
                embed_dim=64,
                depth=2,
                num_heads=2,
                mlp_ratio=4,
                out_chans=prompt_embed_dim,
                qkv_bias=True,
                norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
                use_rel_pos=True,
                global_attn_indexes=(1,),
                window_size=4,
            ),
            prompt_encoder=PromptEncoder(
                embed_dim=prompt_embed_dim,
                image_embedding_size=(embedding_size, embedding_size),
                input_image_size=(img_size, img_size),
                mask_in_chans=16,
            ),
            mask_decoder=MaskDecoder(
                num_multimask_outputs=3,
                transformer=TwoWayTransformer(
                    depth=2, embedding_dim=prompt_embed_dim, mlp_dim=64, num_heads=2
                ),
                transformer_dim=prompt_embed_dim,
                iou_head_depth=3,
                iou_head_hidden_dim=32,
            ),
            pixel_mean=SAM_PIXEL_MEAN,
            pixel_std=SAM_PIXEL_STD,
        )
    return sam.eval()


def save_random_sam_checkpoint(
    path: str | os.PathLike, model_type: str = "vit_b", seed: int = 0
) -> pathlib.Path:
    """Save the state dict of a randomly initialised full-size SAM (``vit_b`` is ~375 MB) and return its path.

    Args:
        path: Destination ``.pth`` file (parent directories are created).
        model_type: ``vit_b``, ``vit_l``, ``vit_h`` or ``default``.
        seed: Seed of the random initialisation.
    """
    from segment_anything import sam_model_registry

    if model_type not in sam_model_registry:
        raise ValueError(
            f"Unknown SAM model type {model_type!r}; valid: {', '.join(sorted(sam_model_registry))}"
        )
    out = pathlib.Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        sam = sam_model_registry[model_type](checkpoint=None)
    torch.save(sam.state_dict(), out)
    return out


def _label_maps(id2label: Mapping[int, str]) -> tuple[dict[int, str], dict[str, int]]:
    id2label = {int(k): str(v) for k, v in id2label.items()}
    return id2label, {v: k for k, v in id2label.items()}


def tiny_segformer(id2label: Mapping[int, str], seed: int = 0):
    """Return a tiny ``SegformerForSemanticSegmentation`` (4 stages of width 8-32) with seeded random weights.

    Args:
        id2label: Class id -> name; ids must be ``0..C-1``.
        seed: Seed of the random initialisation.
    """
    from transformers import SegformerConfig, SegformerForSemanticSegmentation

    id2label, label2id = _label_maps(id2label)
    config = SegformerConfig(
        num_channels=3,
        num_encoder_blocks=4,
        depths=[1, 1, 1, 1],
        sr_ratios=[8, 4, 2, 1],
        hidden_sizes=[8, 16, 24, 32],
        num_attention_heads=[1, 1, 1, 1],
        mlp_ratios=[2, 2, 2, 2],
        decoder_hidden_size=32,
        num_labels=len(id2label),
        id2label=id2label,
        label2id=label2id,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = SegformerForSemanticSegmentation(config)
    return model.eval()


def tiny_segformer_processor(size: int = 64):
    """Return a ``SegformerImageProcessor`` that resizes images to ``size x size``."""
    from transformers import SegformerImageProcessor

    return SegformerImageProcessor(size={"height": size, "width": size})


def save_tiny_segformer(
    directory: str | os.PathLike, id2label: Mapping[int, str], seed: int = 0, *, size: int = 64
) -> pathlib.Path:
    """Save a :func:`tiny_segformer` and its image processor with ``save_pretrained``; return the dir."""
    out = pathlib.Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    tiny_segformer(id2label, seed).save_pretrained(out)
    tiny_segformer_processor(size).save_pretrained(out)
    return out


def tiny_mask2former(id2label: Mapping[int, str], seed: int = 0):
    """Return a tiny ``Mask2FormerForUniversalSegmentation`` (Swin backbone of width 16, 8 queries), seeded.

    Args:
        id2label: Class id -> name; ids must be ``0..C-1``.
        seed: Seed of the random initialisation.
    """
    from transformers import Mask2FormerConfig, Mask2FormerForUniversalSegmentation, SwinConfig

    id2label, label2id = _label_maps(id2label)
    backbone = SwinConfig(
        embed_dim=16,
        depths=[1, 1, 1, 1],
        num_heads=[1, 1, 1, 1],
        window_size=4,
        image_size=64,
        drop_path_rate=0.0,
        out_features=["stage1", "stage2", "stage3", "stage4"],
    )
    config = Mask2FormerConfig(
        backbone_config=backbone,
        feature_size=32,
        mask_feature_size=32,
        hidden_dim=32,
        encoder_feedforward_dim=64,
        encoder_layers=1,
        decoder_layers=2,
        num_attention_heads=2,
        dim_feedforward=64,
        num_queries=8,
        num_labels=len(id2label),
        id2label=id2label,
        label2id=label2id,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Mask2FormerForUniversalSegmentation(config)
    return model.eval()


def tiny_mask2former_processor(shortest_edge: int = 64, longest_edge: int = 128):
    """Return a ``Mask2FormerImageProcessor`` that keeps the aspect ratio within the given edge lengths."""
    from transformers import Mask2FormerImageProcessor

    return Mask2FormerImageProcessor(size={"shortest_edge": shortest_edge, "longest_edge": longest_edge})


def save_tiny_mask2former(
    directory: str | os.PathLike, id2label: Mapping[int, str], seed: int = 0, *, with_processor: bool = True
) -> pathlib.Path:
    """Save a :func:`tiny_mask2former` (and optionally its image processor) with ``save_pretrained``."""
    out = pathlib.Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    tiny_mask2former(id2label, seed).save_pretrained(out)
    if with_processor:
        tiny_mask2former_processor().save_pretrained(out)
    return out

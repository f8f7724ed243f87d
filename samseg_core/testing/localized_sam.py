"""A random-weight SAM whose mask decoder draws image-following blobs around the prompt point.

A random-weight SAM decoder's masks are image-wide noise: every box is the whole image, so NMS, crop-edge
filtering and crops would prove nothing. :class:`LocalizedMaskDecoder` is a parameter-free stand-in for SAM's
``MaskDecoder`` (same call, same outputs) whose masks are local, differ between prompts and carry a varying
predicted IoU, so that comparisons of automatic mask generators (``tests/test_amg.py``, ``bench/amg.py``)
exercise every filter. It is a simulator: what it outputs says nothing about any real SAM's quality.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

__all__ = ["LocalizedMaskDecoder", "localized_sam"]


class LocalizedMaskDecoder(torch.nn.Module):
    """A parameter-free stand-in for SAM's ``MaskDecoder``: blobs around the prompt point (for benchmarks/tests).

    The point's positional encoding, recovered from its sparse prompt embedding, dotted with the dense
    positional encoding is a bump at the point (random Fourier features); the image embedding's cosine
    similarity to the point's neighbourhood bends it along the image. Four nested levels of the sum (one for
    ``multimask_output=False``, three otherwise) give the masks, ``sharpness`` their logit scale; the predicted
    IoU grows with the mean similarity inside the mask.
    """

    def __init__(self, prompt_encoder: torch.nn.Module, sharpness: float = 100.0) -> None:
        """Read the foreground-point label embedding off ``prompt_encoder`` (a segment_anything one)."""
        super().__init__()
        label = prompt_encoder.point_embeddings[1].weight.detach().clone()
        self.register_buffer("label_embedding", label, persistent=False)
        self.register_buffer("levels", torch.tensor([0.45, 0.6, 0.45, 0.3]), persistent=False)
        self.sharpness = float(sharpness)

    def forward(
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        sparse_prompt_embeddings: torch.Tensor,
        dense_prompt_embeddings: torch.Tensor,
        multimask_output: bool,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(B, M, 4h, 4w)`` mask logits and ``(B, M)`` predicted IoU, as ``MaskDecoder.forward``."""
        point_pe = sparse_prompt_embeddings[:, 0].float() - self.label_embedding
        pe = image_pe[0].float()
        kernel = torch.einsum("bc,chw->bhw", point_pe, pe) / (pe.shape[0] / 2)
        feats = image_embeddings[0].float()
        feats = F.normalize(feats - feats.mean(dim=(1, 2), keepdim=True), dim=0)
        window = kernel.clamp(min=0) ** 8
        anchor = F.normalize(torch.einsum("bhw,chw->bc", window, feats), dim=1)
        sim = torch.einsum("bc,chw->bhw", anchor, feats)
        low = self.sharpness * ((0.6 * kernel + 0.4 * sim)[:, None] - self.levels[None, :, None, None])
        inside = torch.sigmoid(low)
        mean_in = (inside * sim[:, None]).sum((2, 3)) / inside.sum((2, 3)).clamp_min(1e-6)
        iou = torch.sigmoid(6 * (mean_in - 0.5))
        logits = F.interpolate(low, scale_factor=4, mode="bilinear", align_corners=False)
        kept = slice(1, None) if multimask_output else slice(0, 1)
        return logits[:, kept], iou[:, kept]


def localized_sam(model: str = "tiny", seed: int = 0) -> Any:
    """A random-weight segment_anything ``Sam`` (``tiny``: 256-px input; ``vit_h``) with a localized decoder."""
    if model == "tiny":
        from samseg_core.testing.tiny_models import tiny_sam

        sam = tiny_sam(256, seed)
    elif model == "vit_h":
        from segment_anything import sam_model_registry

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            sam = sam_model_registry["vit_h"](checkpoint=None)
    else:
        raise ValueError(f"model must be tiny or vit_h, got {model!r}")
    sam.mask_decoder = LocalizedMaskDecoder(sam.prompt_encoder)
    return sam.eval()

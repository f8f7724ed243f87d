"""Per-pixel disagreement and uncertainty maps for QA without ground truth (values in [0, 1], 1 = least sure)."""

from __future__ import annotations

import numpy as np


def label_disagreement(a: np.ndarray, b: np.ndarray, *, ignore_index: int | None = 255) -> np.ndarray:
    """HxW float32: 1 where two label maps give different classes, 0 where they agree or either is unlabelled."""
    a = np.asarray(a)
    b = np.asarray(b)
    if a.shape != b.shape or a.ndim != 2:
        raise ValueError(f"expected two HxW label maps of one shape, got {a.shape} and {b.shape}")
    differ = a != b
    if ignore_index is not None:
        differ &= (a != ignore_index) & (b != ignore_index)
    return differ.astype(np.float32)


def mask_score_uncertainty(masks: np.ndarray, scores: np.ndarray, *, uncovered: float = 0.5) -> np.ndarray:
    """HxW float32 ``1 - score`` of the mask that owns each pixel, ``uncovered`` where no mask does.

    Ownership follows SSA's painting order: masks are painted largest first, so the smallest mask covering a
    pixel owns it. ``scores`` are SAM's per-mask quality estimates in [0, 1] (predicted IoU, stability score).

    Args:
        masks: (N, H, W) bool masks.
        scores: (N,) scores.
        uncovered: value of pixels no mask covers (SAM has no opinion there).
    """
    masks = np.asarray(masks, dtype=bool)
    scores = np.clip(np.asarray(scores, dtype=np.float32).ravel(), 0.0, 1.0)
    if masks.ndim != 3 or masks.shape[0] != scores.size:
        raise ValueError(f"expected (N, H, W) masks and N scores, got {masks.shape} and {scores.size}")
    n = masks.shape[0]
    if n == 0:
        return np.full(masks.shape[1:], uncovered, dtype=np.float32)
    order = np.argsort(-masks.reshape(n, -1).sum(axis=1), kind="stable")
    painted = masks[order]
    last = n - 1 - np.argmax(painted[::-1], axis=0)
    owner_score = scores[order][last]
    return np.where(painted.any(axis=0), 1.0 - owner_score, np.float32(uncovered)).astype(np.float32)


def combined_uncertainty(disagreement: np.ndarray, mask_uncertainty: np.ndarray | None = None) -> np.ndarray:
    """Pixelwise maximum of a disagreement map and a mask-score uncertainty map (either alone when one is None).

    Where two segmentations disagree the pixel is as uncertain as it gets (1); where they agree, SAM's own
    uncertainty about the mask holding the pixel remains.
    """
    if mask_uncertainty is None:
        return np.asarray(disagreement, dtype=np.float32)
    if np.shape(mask_uncertainty) != np.shape(disagreement):
        raise ValueError(f"maps differ in shape: {np.shape(disagreement)} vs {np.shape(mask_uncertainty)}")
    return np.maximum(disagreement, mask_uncertainty).astype(np.float32)

"""SSA's voting as a plain loop over masks: the reference the vectorised voting is tested and benchmarked against.

Semantic Segment Anything decodes each mask, gathers the baseline classes under it, counts them and paints the
winner, one mask at a time, largest mask first. This does the same (with the same exact tie rules and no-harm
rule as :func:`samseg_core.voting.vote_masks`); it is slow on purpose and never used in a pipeline.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from samseg_core.masks import rle_area
from samseg_core.voting import QUANT_SCALE, VotingResult, nearest_indices, quantize_unit


def _mask_getter(masks: Any) -> tuple[Any, np.ndarray, tuple[int, int], bool]:
    """Returns (mask i -> bool map, areas, (H, W), transposed) for a dense stack or a list of COCO RLEs.

    A decoded COCO RLE is column-major: its transpose is a C-contiguous (W, H) map, and indexing in that layout
    is ~10x faster than indexing a Fortran array, so with RLE input the loop works on transposed maps.
    """
    if (
        isinstance(masks, Sequence)
        and not isinstance(masks, np.ndarray)
        and masks
        and isinstance(masks[0], Mapping)
    ):
        from pycocotools import mask as mask_utils

        def counts(rle: Mapping[str, Any]) -> Any:
            return rle["counts"].encode() if isinstance(rle["counts"], str) else rle["counts"]

        rles = [{"size": r["size"], "counts": counts(r)} for r in masks]
        areas = np.array([rle_area(r) for r in masks], np.int64)
        shape = (int(rles[0]["size"][0]), int(rles[0]["size"][1]))
        return (lambda i: mask_utils.decode(rles[i]).T.view(bool)), areas, shape, True
    dense = np.asarray(masks, dtype=bool)
    return (lambda i: dense[i]), dense.sum(axis=(1, 2), dtype=np.int64), dense.shape[1:], False


def vote_per_mask_reference(
    masks: Any,
    baseline: np.ndarray,
    *,
    mode: str = "plurality",
    min_vote_share: float = 0.5,
    confidence: np.ndarray | None = None,
    probabilities: np.ndarray | None = None,
    topk: int = 3,
    ignore_index: int | None = None,
) -> VotingResult:
    """SSA voting, one mask at a time (see :func:`samseg_core.voting.vote_masks` for the arguments).

    ``masks`` is an ``(N, H, W)`` bool stack or a list of COCO RLEs, decoded one at a time as SSA does.
    """
    get_mask, areas, shape, transposed = _mask_getter(masks)
    baseline = np.asarray(baseline).astype(np.int64)
    probs = None
    if probabilities is not None:
        quantized = quantize_unit(probabilities)
        rows, cols = (
            nearest_indices(shape[0], quantized.shape[1]),
            nearest_indices(shape[1], quantized.shape[2]),
        )
        probs = quantized[:, rows][:, :, cols]
    classes = max(int(baseline.max()) + 1, probs.shape[0] if probs is not None else 0)
    conf = quantize_unit(confidence) if confidence is not None else None
    n, k = len(areas), int(topk)
    if transposed:
        baseline = np.ascontiguousarray(baseline.T)
        conf = np.ascontiguousarray(conf.T) if conf is not None else None
        probs = np.ascontiguousarray(probs.transpose(0, 2, 1)) if probs is not None else None

    out = baseline.copy()
    mask_classes = np.full(n, -1, np.int64)
    vote_share = np.full(n, np.nan)
    topk_classes = np.full((n, k), -1, np.int64)
    topk_shares = np.zeros((n, k))
    accepted = np.zeros(n, bool)
    soft_mode = mode == "no_harm" and probs is not None
    for i in np.argsort(-areas, kind="stable"):
        if areas[i] == 0:
            continue
        mask = get_mask(i)
        voting = mask & (baseline != ignore_index) if ignore_index is not None else mask
        voters = int(voting.sum())
        labels = baseline[voting]
        votes = np.bincount(labels, minlength=classes)
        soft = np.zeros(classes, np.int64)
        if probs is not None:
            soft[: probs.shape[0]] = probs[:, voting].sum(axis=1)
        tie = None
        if conf is not None:
            tie = np.bincount(labels, weights=conf[voting], minlength=classes).astype(np.int64)
        elif probs is not None:
            tie = soft
        if ignore_index is not None and ignore_index < classes:
            votes[ignore_index] = soft[ignore_index] = 0
            if tie is not None:
                tie[ignore_index] = 0
        if soft_mode:
            score = soft / QUANT_SCALE
            ranking = np.lexsort((np.arange(classes), -soft))
        else:
            score = votes.astype(np.float64)
            keys = (np.arange(classes), -tie, -votes) if tie is not None else (np.arange(classes), -votes)
            ranking = np.lexsort(keys)
        top = [int(c) for c in ranking[:k] if score[c] > 0 and c != ignore_index]
        if not top:  # no voting pixel, or all-zero probabilities: nothing to decide, the baseline stays
            vote_share[i] = 0.0
            out[mask] = baseline[mask]
            continue
        topk_classes[i, : len(top)] = top
        topk_shares[i, : len(top)] = score[top] / voters
        mask_classes[i] = top[0]
        vote_share[i] = score[top[0]] / voters
        accepted[i] = mode == "plurality" or vote_share[i] >= min_vote_share
        out[mask] = mask_classes[i] if accepted[i] else baseline[mask]
    return VotingResult(
        semantic=np.ascontiguousarray(out.T if transposed else out).astype(np.int32),
        mask_classes=mask_classes,
        vote_share=vote_share,
        topk_classes=topk_classes,
        topk_shares=topk_shares,
        accepted=accepted,
        areas=areas.astype(np.int64),
        mode=mode,
        soft=soft_mode,
    )

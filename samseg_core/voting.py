"""Semantic voting (SSA) over mask proposals: one vectorised pass per image, deterministic, with a no-harm mode.

Semantics (SSA's, made exact):

- The output starts as the baseline class map. Masks are painted largest first (equal areas: lower index
  first), so a pixel's *owner* is the smallest mask covering it (equal areas: the higher index). Pixels no mask
  covers keep the baseline.
- Each mask votes with *all* its pixels' original baseline classes (not only the pixels it owns). Its class is
  the plurality class; ties go to the class with the higher mean baseline confidence inside the mask when a
  ``confidence`` map (or ``probabilities``) is given, then to the lower class id. Empty masks are skipped.
- With ``ignore_index`` (a "no class" value such as 255), baseline pixels holding it cast no vote and it is
  never a candidate; shares are fractions of the voting pixels. A mask whose pixels all hold it gets no class
  and is not accepted, so the pixels it owns keep the baseline (the ignore value stays).
- ``mode="plurality"``: every non-empty mask is *accepted*: its owned pixels take its class.
- ``mode="no_harm"``: a mask is accepted only if its vote share reaches ``min_vote_share``; with
  ``probabilities`` the vote is soft: the class with the highest mean probability over the mask wins and that
  mean is the share. A pixel owned by a rejected mask keeps its baseline class: larger accepted masks do not
  reach into a rejected smaller one (SAM's smaller mask is its finer decision, and the baseline disagrees
  inside it). So no pixel whose owner falls below the threshold ever changes.

Confidences and probabilities are compared as integers at 2**-20 resolution, so results are exact and do not
depend on summation order. The work is done on runs of the masks (:mod:`samseg_core.mask_runs`): class votes are
overlaps between mask runs and the baseline's constant runs, and painting is a max-priority cover of the runs, so
after one read of a dense stack (none for RLE input) the cost grows with the number of runs, not masks x pixels.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import scipy.sparse
import torch

from samseg_core.mask_runs import (
    MaskRuns,
    max_priority_cover,
    overlaps,
    runs_from_coco_rles,
    runs_from_dense,
    runs_of_labels,
)

VotingMode = Literal["plurality", "no_harm"]
VOTING_MODES: tuple[str, ...] = ("plurality", "no_harm")
QUANT_SCALE = 1 << 20  # confidences and probabilities become integers in [0, 2**20]


@dataclass
class VotingResult:
    """The voted class map of one image and what each mask decided.

    Attributes:
        semantic: ``(H, W)`` int32 class map.
        mask_classes: ``(N,)`` int64 class each mask voted for (-1: empty mask).
        vote_share: ``(N,)`` float64 share of the winning class: its fraction of the mask's pixels, or its mean
            probability with soft voting (nan: empty mask).
        topk_classes: ``(N, k)`` int64 best classes in ranking order (-1 pads classes with no votes).
        topk_shares: ``(N, k)`` float64 their shares (0 pads).
        accepted: ``(N,)`` bool whether the mask relabels the pixels it owns.
        areas: ``(N,)`` int64 pixels per mask.
        mode: the voting mode used.
        soft: whether the vote was soft (mean class probabilities).
    """

    semantic: np.ndarray
    mask_classes: np.ndarray
    vote_share: np.ndarray
    topk_classes: np.ndarray
    topk_shares: np.ndarray
    accepted: np.ndarray
    areas: np.ndarray
    mode: str = "plurality"
    soft: bool = False


def quantize_unit(values: Any) -> np.ndarray:
    """Returns values in [0, 1] (clipped) as int64 multiples of 2**-20 (round half to even)."""
    array = values.detach().cpu().numpy() if isinstance(values, torch.Tensor) else np.asarray(values)
    return np.rint(np.clip(array.astype(np.float64), 0.0, 1.0) * QUANT_SCALE).astype(np.int64)


def nearest_indices(out_size: int, in_size: int) -> np.ndarray:
    """Source index of each output index for nearest resampling with pixel-centre alignment."""
    return ((2 * np.arange(out_size, dtype=np.int64) + 1) * in_size) // (2 * out_size)


def as_mask_runs(masks: Any) -> MaskRuns:
    """Returns :class:`MaskRuns` for dense ``(N, H, W)`` masks, COCO RLEs, MaskProposals or MaskRuns.

    A dense numpy stack is scanned on CPU, a CUDA tensor on its GPU (an upload would cost as much as the scan).
    """
    if isinstance(masks, MaskRuns):
        return masks
    if hasattr(masks, "mask_runs") and hasattr(masks, "predicted_iou"):  # MaskProposals: dense or label map
        return masks.mask_runs()
    if isinstance(masks, (np.ndarray, torch.Tensor)):
        return runs_from_dense(masks)
    if isinstance(masks, Sequence) and masks and all(isinstance(m, Mapping) for m in masks):
        return runs_from_coco_rles(masks)
    raise TypeError(
        "masks must be an (N, H, W) array or tensor, a non-empty list of COCO RLE dicts, MaskProposals or "
        f"MaskRuns; got {type(masks).__name__}"
    )


def check_voting_options(mode: str, min_vote_share: float, topk: int) -> None:
    """Raises ValueError for an unknown mode, a share outside [0, 1] or topk below 1."""
    if mode not in VOTING_MODES:
        raise ValueError(f"mode must be one of {VOTING_MODES}, got {mode!r}")
    if not 0.0 <= float(min_vote_share) <= 1.0:
        raise ValueError(f"min_vote_share must lie in [0, 1], got {min_vote_share}")
    if int(topk) < 1:
        raise ValueError(f"topk must be at least 1, got {topk}")


def _baseline_array(baseline: Any, shape: tuple[int, int]) -> np.ndarray:
    array = baseline.detach().cpu().numpy() if isinstance(baseline, torch.Tensor) else np.asarray(baseline)
    if array.shape != tuple(shape):
        raise ValueError(f"baseline has shape {array.shape} but the masks are {tuple(shape)}")
    if not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"baseline must hold integer class ids, got dtype {array.dtype}")
    if array.size and np.issubdtype(array.dtype, np.signedinteger) and array.min() < 0:
        raise ValueError("baseline class ids must be >= 0")
    return array


def vote_masks(
    masks: Any,
    baseline: np.ndarray | torch.Tensor,
    *,
    mode: VotingMode = "plurality",
    min_vote_share: float = 0.5,
    confidence: np.ndarray | torch.Tensor | None = None,
    probabilities: np.ndarray | torch.Tensor | None = None,
    topk: int = 3,
    ignore_index: int | None = None,
) -> VotingResult:
    """Labels each mask with the baseline's plurality class and paints the masks over the baseline.

    See the module docstring for the exact semantics (painting order, ties, no-harm rule, ignored pixels).

    Args:
        masks: ``(N, H, W)`` bool masks (numpy, or a torch tensor: a CUDA one is scanned on the GPU), a list of
            N COCO RLE dicts, ``MaskProposals`` (dense or a region label map) or :class:`MaskRuns`.
        baseline: ``(H, W)`` non-negative integer class map.
        mode: ``"plurality"`` (SSA) or ``"no_harm"`` (only masks whose share reaches ``min_vote_share``).
        min_vote_share: acceptance threshold of ``"no_harm"``.
        confidence: optional ``(H, W)`` baseline confidence in [0, 1] (ties: higher mean confidence wins).
        probabilities: optional ``(C, h, w)`` class probabilities at any resolution (nearest-resampled to the
            image): tie-break of hard votes, and the soft vote of ``"no_harm"``.
        topk: classes recorded per mask.
        ignore_index: a "no class" baseline value (e.g. 255): its pixels cast no vote and it is never a
            mask's class; shares are fractions of the voting pixels. Pixels keep it where no accepted mask
            owns them.

    Returns:
        a :class:`VotingResult`.
    """
    check_voting_options(mode, min_vote_share, topk)
    runs = as_mask_runs(masks)
    base = _baseline_array(baseline, runs.shape)
    probs = _quantized_probabilities(probabilities)
    id_bound = max(int(base.max()) + 1 if base.size else 1, probs.shape[0] if probs is not None else 0)
    flat = runs.flatten(base.astype(_compact_dtype(id_bound), copy=False))  # small dtype: cheap transposes
    areas = runs.areas()
    if ignore_index is not None and not 0 <= int(ignore_index) < id_bound:
        ignore_index = None  # no pixel holds it and no probability names it
    voters, candidates, piece_class = _voting_pieces(runs, flat, probs, ignore_index)
    scores = _class_scores(voters, piece_class, candidates, probs, confidence)
    use_soft = mode == "no_harm" and scores.soft is not None
    top_local, topk_shares = _rank_classes(
        scores.votes, scores.tie, scores.soft if use_soft else None, voters.areas(), int(topk)
    )
    topk_classes = np.where(top_local >= 0, candidates[np.maximum(top_local, 0)], -1)
    nonempty = areas > 0
    mask_classes = np.where(nonempty, topk_classes[:, 0], -1)
    vote_share = np.where(nonempty, topk_shares[:, 0], np.nan)
    accepted = nonempty & (mask_classes >= 0)
    if mode == "no_harm":
        accepted &= topk_shares[:, 0] >= float(min_vote_share)

    semantic = _paint(runs, flat, areas, np.where(accepted, mask_classes, -1))
    return VotingResult(
        semantic=semantic,
        mask_classes=mask_classes.astype(np.int64),
        vote_share=vote_share.astype(np.float64),
        topk_classes=topk_classes,
        topk_shares=topk_shares,
        accepted=accepted,
        areas=areas,
        mode=mode,
        soft=use_soft,
    )


def _quantized_probabilities(probabilities: Any) -> np.ndarray | None:
    if probabilities is None:
        return None
    probs = quantize_unit(probabilities)
    if probs.ndim != 3:
        raise ValueError(f"probabilities must be (C, h, w), got shape {probs.shape}")
    return probs


def _voting_pieces(
    runs: MaskRuns, flat: np.ndarray, probs: np.ndarray | None, ignore_index: int | None
) -> tuple[MaskRuns, np.ndarray, np.ndarray]:
    """The voting pixels of each mask as runs, the candidate classes and each run's candidate index.

    A voting run is the overlap of a mask run with a constant run of the baseline that is not
    ``ignore_index``. Candidates are the baseline's classes plus every probability class, sorted (so ids keep
    their order), without ``ignore_index``.
    """
    seg_start, seg_end, seg_class = runs_of_labels(flat)
    candidates = np.unique(seg_class).astype(np.int64)
    if probs is not None:
        candidates = np.union1d(candidates, np.arange(probs.shape[0]))
    run, seg, first, stop = overlaps(runs.start, runs.end, seg_start, seg_end)
    if ignore_index is not None:
        candidates = candidates[candidates != ignore_index]
        keep = seg_class[seg] != ignore_index
        run, seg, first, stop = run[keep], seg[keep], first[keep], stop[keep]
    voters = MaskRuns(runs.mask_index[run], first, stop - first, runs.num_masks, runs.shape, runs.order)
    return voters, candidates, np.searchsorted(candidates, seg_class[seg])


@dataclass
class _ClassScores:
    """Per mask and candidate class: votes (pixels), tie-break sums and soft (probability) sums."""

    votes: np.ndarray
    tie: np.ndarray | None
    soft: np.ndarray | None


def _class_scores(
    voters: MaskRuns,
    piece_class: np.ndarray,
    candidates: np.ndarray,
    probs: np.ndarray | None,
    confidence: Any,
) -> _ClassScores:
    """Sums over each mask's voting pixels, by candidate class (exact integer arithmetic)."""
    n, k = voters.num_masks, candidates.size
    key = voters.mask_index * k + piece_class
    votes = np.bincount(key, weights=voters.length, minlength=n * k).astype(np.int64).reshape(n, k)
    tie = None
    if confidence is not None:
        conf = quantize_unit(confidence)
        if conf.shape != voters.shape:
            raise ValueError(f"confidence has shape {conf.shape} but the masks are {voters.shape}")
        cumulative = np.concatenate([[0], np.cumsum(voters.flatten(conf))])
        # float64 bincount of integer values below 2**53 is exact
        tie = np.bincount(key, weights=cumulative[voters.end] - cumulative[voters.start], minlength=n * k)
        tie = tie.astype(np.int64).reshape(n, k)
    soft = None
    if probs is not None:
        soft = np.zeros((n, k), np.int64)
        has_prob = candidates < probs.shape[0]
        soft[:, has_prob] = _soft_scores(voters, probs)[:, candidates[has_prob]]
    return _ClassScores(votes, tie if tie is not None else soft, soft)


def _rank_classes(
    votes: np.ndarray, tie: np.ndarray | None, soft: np.ndarray | None, areas: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Top-k classes and shares per mask: by soft score, else by votes then tie score; then lower class id.

    Shares are fractions of ``areas``, the pixels of each mask that vote.
    """
    n, classes = votes.shape
    class_ids = np.broadcast_to(np.arange(classes), (n, classes))
    if soft is not None:
        order = np.lexsort((class_ids, -soft), axis=-1)
        score = soft.astype(np.float64) / QUANT_SCALE
    else:
        keys = (class_ids, -tie, -votes) if tie is not None else (class_ids, -votes)
        order = np.lexsort(keys, axis=-1)
        score = votes.astype(np.float64)
    top = order[:, : min(k, classes)]
    top_score = np.take_along_axis(score, top, axis=1)
    shares = top_score / np.maximum(areas[:, None], 1)
    has_votes = top_score > 0
    top_classes = np.full((n, k), -1, np.int64)
    top_shares = np.zeros((n, k))
    top_classes[:, : top.shape[1]] = np.where(has_votes, top, -1)
    top_shares[:, : top.shape[1]] = np.where(has_votes, shares, 0.0)
    return top_classes, top_shares


def _soft_scores(runs: MaskRuns, probs_q: np.ndarray) -> np.ndarray:
    """``(N, C)`` int64 sums over each mask's pixels of its quantized class probabilities.

    Each image pixel reads the probability cell its centre falls in; a mask's run overlaps a few cells, so the
    sums are a sparse (masks x cells) overlap matrix times the (cells x classes) probabilities.
    """
    num_probs, h, w = probs_q.shape
    height, width = runs.shape
    rows, cols = nearest_indices(height, h), nearest_indices(width, w)
    if runs.order == "C":
        inner_start, inner_end, inner_col = runs_of_labels(cols)
        offset = np.arange(height)[:, None] * width
        cell = rows[:, None] * w + inner_col[None, :]
    else:
        inner_start, inner_end, inner_row = runs_of_labels(rows)
        offset = np.arange(width)[:, None] * height
        cell = inner_row[None, :] * w + cols[:, None]
    seg_start = (offset + inner_start[None, :]).reshape(-1)
    seg_end = (offset + inner_end[None, :]).reshape(-1)
    run, seg, first, stop = overlaps(runs.start, runs.end, seg_start, seg_end)
    counts = scipy.sparse.csr_matrix(
        ((stop - first).astype(np.float64), (runs.mask_index[run], cell.reshape(-1)[seg])),
        shape=(runs.num_masks, h * w),
    )
    # integer-valued float64 products and sums stay exact (< 2**53), so the order of summation does not matter
    sums = counts @ probs_q.reshape(num_probs, h * w).T.astype(np.float64)
    return np.rint(sums).astype(np.int64)


def _compact_dtype(classes: int) -> np.dtype:
    """The smallest unsigned dtype holding class ids below ``classes``."""
    for dtype in (np.uint8, np.uint16, np.uint32):
        if classes <= np.iinfo(dtype).max + 1:
            return np.dtype(dtype)
    return np.dtype(np.int64)


def _paint(runs: MaskRuns, flat: np.ndarray, areas: np.ndarray, paint_class: np.ndarray) -> np.ndarray:
    """Paints masks largest first over the flat baseline; returns the ``(H, W)`` int32 map."""
    paint_order = np.argsort(-areas, kind="stable")
    priority = np.empty_like(paint_order)
    priority[paint_order] = np.arange(paint_order.size)
    bounds, best = max_priority_cover(runs.start, runs.end, priority[runs.mask_index])
    out = flat.copy()
    if best.size:
        owner = paint_order[np.maximum(best, 0)]
        leaf_class = np.where(best >= 0, paint_class[owner], -1)
        painted = np.repeat(
            leaf_class.astype(np.int64 if out.dtype.itemsize > 4 else np.int32), np.diff(bounds)
        )
        span = out[bounds[0] : bounds[-1]]
        np.copyto(span, painted, where=painted >= 0, casting="unsafe")
    return runs.unflatten(out).astype(np.int32)

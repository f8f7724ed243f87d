"""The candidate maps calibrated fusion chooses from: samseg's gated refinement at several no-harm gates and
no-harm voting at several vote shares, each computed once per image (FiftyOne-free).

Refinement decodes every prompt set once with the gate open and repaints the accepted masks per gate; voting is
cheap enough to run once per share.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from samseg_core.fusion import Candidate
from samseg_core.refine import aggregate_masks, refine_semantic
from samseg_core.voting import vote_masks


def refine_maps(image: Any, baseline: np.ndarray, gates: Sequence[float]) -> dict[float, np.ndarray]:
    """``{gate: refined map}``: samseg's default refinement (points + box, change gates on) of ``baseline`` at
    each no-harm gate, from one decoder pass."""
    regions = refine_semantic(image, baseline, gate=0.0).regions
    start = torch.as_tensor(baseline.astype(np.int64))
    out = {}
    for gate in gates:
        keep = regions.accepted & (regions.baseline_iou >= gate)
        painted = aggregate_masks(
            start, torch.as_tensor(regions.masks[keep]), torch.as_tensor(regions.class_ids[keep])
        )
        out[gate] = painted.numpy().astype(baseline.dtype, copy=False)
    return out


def vote_maps(
    proposals: Any, baseline: np.ndarray, shares: Sequence[float], ignore_index: int | None = None
) -> dict[float, np.ndarray]:
    """``{share: voted map}``: no-harm voting of ``proposals`` over ``baseline`` at each minimum vote share."""
    return {
        share: vote_masks(
            proposals, baseline, mode="no_harm", min_vote_share=share, ignore_index=ignore_index
        ).semantic.astype(baseline.dtype, copy=False)
        for share in shares
    }


def candidate_maps(
    candidates: Sequence[Candidate],
    baseline: np.ndarray,
    *,
    image: Any = None,
    proposals: Any = None,
    ignore_index: int | None = None,
) -> dict[str, np.ndarray]:
    """The maps of ``candidates`` for one image, by candidate name.

    Args:
        candidates: the candidates (:func:`samseg_core.fusion.fusion_candidates`).
        baseline: (H, W) class map at the image's resolution.
        image: the embedded image (:class:`~samseg_core.models.promptable.PromptImage`), for ``refine``.
        proposals: the image's mask proposals (``MaskProposals``), for ``vote``.
        ignore_index: a "no class" baseline value voting leaves alone.
    """
    by_method: dict[str, list[float]] = {}
    for cand in candidates:
        by_method.setdefault(cand.method, []).append(cand.threshold)
    maps: dict[str, np.ndarray] = {}
    for method, thresholds in by_method.items():
        if method == "refine":
            if image is None:
                raise ValueError("refine candidates need the embedded image")
            found = refine_maps(image, baseline, thresholds)
        elif method == "vote":
            if proposals is None:
                raise ValueError("vote candidates need mask proposals")
            found = vote_maps(proposals, baseline, thresholds, ignore_index)
        else:
            raise ValueError(f"unknown fusion method {method!r}")
        maps.update({Candidate(method, t).name: found[t] for t in thresholds})
    return maps

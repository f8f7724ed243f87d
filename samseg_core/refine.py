"""SAM refinement of a semantic map from prompts made of it (Algorithm 1 of "Can SAM improve semantic
segmentation?"), with a no-harm gate.

Per image: prompt sets from the baseline (:mod:`samseg_core.prompts`) -> all of them through one batched
decoder call of the image's SAM-family model (:class:`~samseg_core.models.promptable.PromptImage`; chunked only
beyond ``max_prompts_per_call``) -> three multimask
candidates each -> one candidate per prompt set, chosen by IoU with the baseline region (the study) or by
SAM's predicted IoU -> the **no-harm gate**: the chosen candidate is accepted only when its IoU with the
baseline region is at least ``gate`` (``gate=0`` accepts everything, as the study did), and the two
**change gates** look at the pixels it would change (mask pixels the baseline gives another class):

- ``min_change`` (default 2): the changed pixels must amount to at least this many per pixel of the region's
  boundary. Below that the candidate moves the baseline's boundary by less than two pixels on average, within
  SAM's own boundary noise (1-2 px): painting it replaces baseline pixels with equally uncertain ones (on a
  near-perfect baseline, strictly worse ones). On the SAM simulator 1 px still lost where SAM's noise was
  1.5 px; 2 px lost at most 0.001 mIoU there (``docs/quality.md``).
- ``protect_regions`` (default on): the changed pixels must not cover half or more of any connected baseline
  region of another class of :data:`PROTECTED_MIN_AREA` pixels or more. A mask that swallows a neighbour's
  region is a prompt that hit the wrong object (a box holding several, a point on a boundary) or a leak into a
  similar-looking neighbour, not a boundary correction.

A third gate asks SAM itself: ``min_predicted_iou`` (default 0.7) rejects a candidate SAM rates below it (SAM's
automatic mask generator drops masks below 0.88 for the same reason). On the simulator it removed the last
losses of the two change gates where SAM's errors were harsh, at no cost where they were moderate.

The study's setting is ``gate=0, min_change=0, protect_regions=False, min_predicted_iou=0``. Accepted masks are painted into one map.

Aggregation rules:

- ``overlap="area"`` (default): accepted masks are painted in decreasing area order, so where two overlap the
  smaller one wins (SSA's rule: a small object inside a large one survives). ``overlap="score"``: painted by
  increasing predicted IoU, so the more confident mask wins. Ties keep prompt-set order (later wins).
- ``fill="baseline"`` (default): the output starts from the baseline, so every pixel no accepted mask claims
  keeps its baseline class, *including* baseline pixels of class c that c's accepted mask no longer covers:
  SAM can move a pixel to another class only through another accepted mask. This is the conservative choice
  that keeps quality (the study's losses came from pixels its masks dropped).
- ``fill="background"``: the study's aggregation. The pixels of every accepted prompt set's baseline region
  are released to ``background_id`` first, then accepted masks are painted; with ``gate=0`` every prompted
  class is released, which is the study's "start from an empty map". Rejected regions and ignored classes keep
  the baseline.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import numpy as np
import torch
from segment_anything.utils.amg import calculate_stability_score

from samseg_core.models.device import autocast_context
from samseg_core.prompts import (
    DEFAULT_MASK_LOGIT,
    DEFAULT_MIN_REGION_AREA,
    Granularity,
    PromptSet,
    prompt_sets_from_semantic,
)

__all__ = [
    "PromptTarget",
    "RefinedRegions",
    "RefinementResult",
    "STUDY_SETTINGS",
    "aggregate_masks",
    "boundary_length",
    "prompts_per_call",
    "refine_prompt_sets",
    "refine_semantic",
]

Selection = Literal["baseline_iou", "predicted_iou"]
Fill = Literal["baseline", "background"]
Overlap = Literal["area", "score"]

#: The logit offset SAM's automatic mask generator uses for stability scores (the threshold is the model's).
STABILITY_OFFSET = 1.0
DEFAULT_GATE = 0.5
#: Default of ``min_change``: changed pixels per pixel of the region's boundary a candidate must reach.
DEFAULT_MIN_CHANGE = 2.0
#: The workshop study's setting of :func:`refine_semantic`: one prompt set per class, best candidate by baseline
#: IoU, no gate of any kind, empty start map.
STUDY_SETTINGS: dict[str, Any] = {
    "granularity": "class",
    "selection": "baseline_iou",
    "gate": 0.0,
    "min_change": 0.0,
    "protect_regions": False,
    "min_predicted_iou": 0.0,
    "fill": "background",
}
#: Default of ``min_predicted_iou``: SAM's own score a candidate must reach.
DEFAULT_MIN_PREDICTED_IOU = 0.7
#: Baseline regions smaller than this are not protected by ``protect_regions`` (specks are the baseline's noise).
PROTECTED_MIN_AREA = 16
#: Upper bound on prompt sets per decoder call.
MAX_PROMPTS_PER_CALL = 64
#: float32 elements one decoder call's (B, 3, ...) logits may take at image and at encoder resolution
#: (the upscale to the image goes through the encoder square). CUDA: 2**27 (512 MB). CPU: 2**23 (32 MB): there the upsampling is
#: memory-bound and larger blocks are fresh page-faulted allocations on every call, so big batches measured
#: slower than small ones.
LOGITS_BUDGET = {"cuda": 2**27, "cpu": 2**23}


class PromptTarget(Protocol):
    """What refinement needs of an embedded image: a :class:`~samseg_core.models.promptable.PromptImage`.

    ``model`` tells the input size, whether inputs are padded (for mask prompts) and the mask threshold;
    ``predict_logits`` decodes a batch of prompts given in original image pixels.
    """

    model: Any
    original_size: tuple[int, int]

    @property
    def device(self) -> torch.device:
        """The model's device."""
        ...

    def predict_logits(
        self,
        points: torch.Tensor | None = None,
        point_labels: torch.Tensor | None = None,
        boxes: torch.Tensor | None = None,
        mask_inputs: torch.Tensor | None = None,
        multimask: bool = True,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns (B, M, H, W) mask logits at image resolution and (B, M) predicted IoUs."""
        ...


@dataclass
class RefinedRegions:
    """One entry per prompt set: its chosen SAM candidate and the scores that decided its fate.

    Attributes:
        class_ids: (N,) int64 class of each prompt set.
        masks: (N, H, W) bool chosen candidate masks (accepted or not).
        predicted_iou: (N,) float32 SAM's predicted IoU of the chosen candidate.
        stability: (N,) float32 stability score of the chosen candidate (IoU of its masks thresholded at
            +/- 1 around the logit threshold, as SAM's automatic mask generator computes it).
        baseline_iou: (N,) float32 IoU of the chosen candidate with the prompt set's baseline region.
        accepted: (N,) bool whether the candidate passed the gate (and was painted).
        candidate: (N,) int64 index (0-2) of the chosen multimask candidate.
        candidate_baseline_iou: (N, 3) float32 IoU of every candidate with the baseline region.
        candidate_predicted_iou: (N, 3) float32 SAM's predicted IoU of every candidate.
        changed_pixels: (N,) int64 pixels the chosen candidate would repaint (the baseline gives them another
            class).
        change_ratio: (N,) float32 ``changed_pixels`` per pixel of the baseline region's boundary.
        swallows: (N,) bool whether the changes cover half or more of another class's baseline region.
    """

    class_ids: np.ndarray
    masks: np.ndarray
    predicted_iou: np.ndarray
    stability: np.ndarray
    baseline_iou: np.ndarray
    accepted: np.ndarray
    candidate: np.ndarray
    candidate_baseline_iou: np.ndarray
    candidate_predicted_iou: np.ndarray
    changed_pixels: np.ndarray
    change_ratio: np.ndarray
    swallows: np.ndarray

    def __len__(self) -> int:
        return int(self.class_ids.size)

    @classmethod
    def empty(cls, shape: tuple[int, int]) -> RefinedRegions:
        """Returns the regions of an image without prompt sets."""
        f32 = np.zeros(0, dtype=np.float32)
        return cls(
            class_ids=np.zeros(0, dtype=np.int64),
            masks=np.zeros((0, *shape), dtype=bool),
            predicted_iou=f32,
            stability=f32.copy(),
            baseline_iou=f32.copy(),
            accepted=np.zeros(0, dtype=bool),
            candidate=np.zeros(0, dtype=np.int64),
            candidate_baseline_iou=np.zeros((0, 3), dtype=np.float32),
            candidate_predicted_iou=np.zeros((0, 3), dtype=np.float32),
            changed_pixels=np.zeros(0, dtype=np.int64),
            change_ratio=f32.copy(),
            swallows=np.zeros(0, dtype=bool),
        )

    def only_accepted(self) -> RefinedRegions:
        """Returns the accepted entries only."""
        keep = self.accepted
        return RefinedRegions(**{name: value[keep] for name, value in vars(self).items()})


@dataclass
class RefinementResult:
    """The refined (H, W) class map and, per prompt set, the chosen candidate and its scores."""

    semantic: np.ndarray
    regions: RefinedRegions


def _stack_prompts(
    image: PromptTarget, prompt_sets: Sequence[PromptSet]
) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """Returns (points, labels, boxes, mask inputs) of all prompt sets in image pixels on the device; shorter
    point sets are padded with label -1 (SAM's "not a point")."""
    device = image.device
    counts = [len(p.points) for p in prompt_sets]
    points = labels = boxes = masks = None
    if max(counts) > 0:
        k = max(counts)
        coords = np.zeros((len(prompt_sets), k, 2), dtype=np.float32)
        point_labels = np.full((len(prompt_sets), k), -1, dtype=np.int64)
        for i, p in enumerate(prompt_sets):
            coords[i, : counts[i]] = p.points
            point_labels[i, : counts[i]] = p.point_labels
        points = torch.as_tensor(coords, device=device)
        labels = torch.as_tensor(point_labels, device=device)
    has_box = [p.box is not None for p in prompt_sets]
    if any(has_box):
        if not all(has_box):
            raise ValueError("either every prompt set of an image has a box or none has")
        boxes = torch.as_tensor(np.stack([p.box for p in prompt_sets]).astype(np.float32), device=device)
    has_mask = [p.mask_input is not None for p in prompt_sets]
    if any(has_mask):
        if not all(has_mask):
            raise ValueError("either every prompt set of an image has a mask input or none has")
        masks = torch.as_tensor(
            np.stack([p.mask_input for p in prompt_sets]).astype(np.float32), device=device
        )
        masks = masks[:, None]
    if points is None and boxes is None and masks is None:
        raise ValueError("prompt sets carry no prompt (no points, box or mask)")
    return points, labels, boxes, masks


def prompts_per_call(
    image_hw: tuple[int, int], encoder_size: int, device: torch.device | str = "cuda"
) -> int:
    """Returns how many prompt sets one decoder call takes so that its three candidates' logits, at image and
    at encoder resolution, stay within the device's :data:`LOGITS_BUDGET` (at least 1, at most
    :data:`MAX_PROMPTS_PER_CALL`)."""
    budget = LOGITS_BUDGET["cuda" if torch.device(device).type == "cuda" else "cpu"]
    per_prompt = 3 * (int(image_hw[0]) * int(image_hw[1]) + encoder_size * encoder_size)
    return int(min(MAX_PROMPTS_PER_CALL, max(1, budget // per_prompt)))


def _count(masks: torch.Tensor) -> torch.Tensor:
    """Foreground pixels over the last dimension of a bool tensor, exactly (int32 accumulation over a uint8
    view, several times faster on CPU than summing bools)."""
    return masks.view(torch.uint8).sum(-1, dtype=torch.int32)


def _iou_with_regions(candidates: torch.Tensor, regions: torch.Tensor) -> torch.Tensor:
    """(B, C) IoU of (B, C, H, W) bool candidates with (B, H, W) bool regions; 0 when both are empty."""
    flat = candidates.flatten(2)
    region = regions.flatten(1)[:, None, :]
    inter = _count(flat & region)
    union = _count(flat) + _count(region) - inter
    return inter.float() / union.clamp(min=1).float()


def boundary_length(regions: torch.Tensor) -> torch.Tensor:
    """(N,) boundary length in pixels of (N, H, W) bool regions inside the image: their 4-neighbour edges times
    pi / 4 (the mean length of a unit edge of a digital curve), at least 1."""
    edges = _count((regions[:, :, 1:] != regions[:, :, :-1]).flatten(1))
    edges = edges + _count((regions[:, 1:] != regions[:, :-1]).flatten(1))
    return (edges.float() * (np.pi / 4)).clamp(min=1.0)


def baseline_components(baseline: np.ndarray, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(H, W) int64 ids of the baseline's connected same-class regions (4-connected, from 0) and (K,) their areas."""
    from skimage.measure import label as label_regions

    ids = label_regions(baseline.astype(np.int64) + 1, background=0, connectivity=1) - 1
    ids_t = torch.as_tensor(ids, device=device, dtype=torch.int64)
    return ids_t, torch.bincount(ids_t.flatten())


def swallowed_regions(
    changed: torch.Tensor, components: torch.Tensor, areas: torch.Tensor, min_area: int = PROTECTED_MIN_AREA
) -> torch.Tensor:
    """(N,) whether each of the (N, H, W) bool ``changed`` maps covers half or more of a baseline component of
    ``min_area`` pixels or more (one bincount over all candidates, no loop over masks)."""
    n, k = changed.shape[0], areas.numel()
    which, flat = changed.flatten(1).nonzero(as_tuple=True)
    counts = torch.bincount(which * k + components.flatten()[flat], minlength=n * k).view(n, k)
    big = areas >= min_area
    return ((2 * counts >= areas[None]) & big[None]).any(dim=1)


@torch.inference_mode()
def refine_prompt_sets(
    image: PromptTarget,
    baseline: np.ndarray,
    prompt_sets: Sequence[PromptSet],
    *,
    selection: Selection = "baseline_iou",
    gate: float = DEFAULT_GATE,
    min_change: float = DEFAULT_MIN_CHANGE,
    protect_regions: bool = True,
    min_predicted_iou: float = DEFAULT_MIN_PREDICTED_IOU,
    fill: Fill = "baseline",
    overlap: Overlap = "area",
    background_id: int = 0,
    max_prompts_per_call: int | None = None,
) -> RefinementResult:
    """Refines ``baseline`` with SAM candidates for given prompt sets (custom prompts enter here).

    Args:
        image: the embedded image (:class:`~samseg_core.models.promptable.PromptImage`, e.g. from
            ``EmbeddingCache.prompt_image``).
        baseline: (H, W) integer class map the prompt sets were made from.
        prompt_sets: the prompt sets; all of them go through one decoder call per
            ``max_prompts_per_call`` sets.
        selection: ``"baseline_iou"`` picks the candidate with the highest IoU with the baseline region (the
            study); ``"predicted_iou"`` picks SAM's most confident candidate.
        gate: minimum IoU of the chosen candidate with its baseline region to accept it; 0 accepts all.
        min_change: changed pixels per pixel of the region's boundary a candidate must reach (0: no minimum).
        protect_regions: reject candidates whose changes swallow half or more of another class's region.
        min_predicted_iou: reject candidates whose SAM predicted IoU is below this (0: no minimum).
        fill: ``"baseline"`` or ``"background"`` (see the module docstring).
        overlap: ``"area"`` (smaller mask wins) or ``"score"`` (higher predicted IoU wins).
        background_id: the class released pixels get with ``fill="background"``.
        max_prompts_per_call: prompt sets per decoder call; default: as many as fit the device's
            :data:`LOGITS_BUDGET` (1024-pixel encoder on CUDA: about 40 for small images, 10 for 1500x2250;
            on CPU 2 and 1), at most :data:`MAX_PROMPTS_PER_CALL`.
    """
    baseline = np.asarray(baseline)
    if baseline.ndim != 2:
        raise ValueError(f"expected an HxW class map, got shape {baseline.shape}")
    if selection not in ("baseline_iou", "predicted_iou"):
        raise ValueError(f"selection must be 'baseline_iou' or 'predicted_iou', got {selection!r}")
    if not 0.0 <= gate <= 1.0:
        raise ValueError(f"gate must lie in [0, 1], got {gate}")
    if not min_change >= 0.0:
        raise ValueError(f"min_change must be >= 0, got {min_change}")
    if not 0.0 <= min_predicted_iou <= 1.0:
        raise ValueError(f"min_predicted_iou must lie in [0, 1], got {min_predicted_iou}")
    if max_prompts_per_call is None:
        encoder_size = int(image.model.input_size)
        max_prompts_per_call = prompts_per_call(baseline.shape, encoder_size, image.device)
    if max_prompts_per_call < 1:
        raise ValueError("max_prompts_per_call must be >= 1")
    if fill not in ("baseline", "background"):
        raise ValueError(f"fill must be 'baseline' or 'background', got {fill!r}")
    if overlap not in ("area", "score"):
        raise ValueError(f"overlap must be 'area' or 'score', got {overlap!r}")
    shape = baseline.shape
    if tuple(image.original_size) != tuple(shape):
        raise ValueError(f"the embedded image is {tuple(image.original_size)}, the baseline is {shape}")
    if not prompt_sets:
        return RefinementResult(baseline.copy(), RefinedRegions.empty(shape))

    device = image.device
    threshold = float(image.model.mask_threshold)
    points, labels, boxes, mask_inputs = _stack_prompts(image, prompt_sets)
    regions = torch.as_tensor(np.stack([p.region_mask for p in prompt_sets]), device=device, dtype=torch.bool)
    chosen_masks, chosen, pred_ious, base_ious, stabilities = [], [], [], [], []
    for lo in range(0, len(prompt_sets), max_prompts_per_call):
        hi = min(lo + max_prompts_per_call, len(prompt_sets))
        with autocast_context(device):
            logits, predicted = image.predict_logits(
                points=points[lo:hi] if points is not None else None,
                point_labels=labels[lo:hi] if labels is not None else None,
                boxes=boxes[lo:hi] if boxes is not None else None,
                mask_inputs=mask_inputs[lo:hi] if mask_inputs is not None else None,
                multimask=True,
            )
        logits, predicted = logits.float(), predicted.float()
        candidates = logits > threshold
        ious = _iou_with_regions(candidates, regions[lo:hi])
        pick = (ious if selection == "baseline_iou" else predicted).argmax(dim=1)  # first max on ties
        rows = torch.arange(hi - lo, device=device)
        stability = calculate_stability_score(logits[rows, pick], threshold, STABILITY_OFFSET)
        chosen_masks.append(candidates[rows, pick])
        chosen.append(pick)
        pred_ious.append(predicted)
        base_ious.append(ious)
        stabilities.append(torch.nan_to_num(stability, nan=0.0))  # empty mask: 0 / 0
        del logits, candidates

    pick = torch.cat(chosen)
    rows = torch.arange(pick.numel(), device=device)
    masks = torch.cat(chosen_masks)
    all_base, all_pred = torch.cat(base_ious), torch.cat(pred_ious)
    base_iou, pred_iou = all_base[rows, pick], all_pred[rows, pick]
    class_ids = torch.as_tensor([p.class_id for p in prompt_sets], device=device, dtype=torch.int64)
    start = torch.as_tensor(baseline.astype(np.int64), device=device)
    changed = masks & (start[None] != class_ids[:, None, None])
    changed_pixels = _count(changed.flatten(1)).to(torch.int64)
    change_ratio = changed_pixels.float() / boundary_length(regions)
    swallows = torch.zeros_like(changed_pixels, dtype=torch.bool)
    if protect_regions:
        components, areas = baseline_components(baseline, device)
        swallows = swallowed_regions(changed, components, areas)
    del changed
    accepted = (base_iou >= gate) & (change_ratio >= min_change) & ~swallows
    if min_predicted_iou > 0:  # 0 is no minimum: an untrained decoder's scores can be negative
        accepted &= pred_iou >= min_predicted_iou
    if fill == "background":
        released = (regions & accepted[:, None, None]).any(dim=0)
        start = torch.where(released, torch.as_tensor(background_id, device=device), start)
    semantic = aggregate_masks(
        start, masks[accepted], class_ids[accepted], pred_iou[accepted], overlap=overlap
    )

    result = RefinedRegions(
        class_ids=class_ids.cpu().numpy(),
        masks=masks.cpu().numpy(),
        predicted_iou=pred_iou.cpu().numpy().astype(np.float32),
        stability=torch.cat(stabilities).cpu().numpy().astype(np.float32),
        baseline_iou=base_iou.cpu().numpy().astype(np.float32),
        accepted=accepted.cpu().numpy(),
        candidate=pick.cpu().numpy(),
        candidate_baseline_iou=all_base.cpu().numpy().astype(np.float32),
        candidate_predicted_iou=all_pred.cpu().numpy().astype(np.float32),
        changed_pixels=changed_pixels.cpu().numpy(),
        change_ratio=change_ratio.cpu().numpy().astype(np.float32),
        swallows=swallows.cpu().numpy(),
    )
    return RefinementResult(semantic.cpu().numpy().astype(baseline.dtype, copy=False), result)


def aggregate_masks(
    start: torch.Tensor,
    masks: torch.Tensor,
    class_ids: torch.Tensor,
    scores: torch.Tensor | None = None,
    *,
    overlap: Overlap = "area",
) -> torch.Tensor:
    """Returns ``start`` (H, W) with each of the (M, H, W) bool ``masks`` painted in its class, in one pass.

    ``overlap="area"``: painted largest first, so the smallest covering mask wins a pixel; ``"score"``:
    painted by increasing ``scores``, so the highest-scoring covering mask wins. Equal keys keep the given
    order, the later mask winning.
    """
    if masks.shape[0] == 0:
        return start.clone()
    if overlap == "area":
        key = -_count(masks.flatten(1)).to(torch.float64)
    elif overlap == "score":
        if scores is None:
            raise ValueError("overlap='score' needs scores")
        key = scores.to(torch.float64)
    else:
        raise ValueError(f"overlap must be 'area' or 'score', got {overlap!r}")
    order = torch.sort(key, stable=True).indices  # painting order: the last covering mask wins
    stacked = masks[order]
    covered = stacked.any(dim=0)
    last = stacked.shape[0] - 1 - stacked.flip(0).to(torch.uint8).argmax(dim=0)
    painted = class_ids[order][last].to(start.dtype)
    return torch.where(covered, painted, start)


def refine_semantic(
    image: PromptTarget,
    baseline: np.ndarray,
    *,
    prompts: str | Sequence[str] = ("points", "box"),
    granularity: Granularity = "class",
    selection: Selection = "baseline_iou",
    gate: float = DEFAULT_GATE,
    min_change: float = DEFAULT_MIN_CHANGE,
    protect_regions: bool = True,
    min_predicted_iou: float = DEFAULT_MIN_PREDICTED_IOU,
    fill: Fill = "baseline",
    overlap: Overlap = "area",
    loose_margin: float = 0.2,
    min_region_area: int = DEFAULT_MIN_REGION_AREA,
    ignore_classes: Iterable[int] = (255,),
    background_id: int = 0,
    mask_logit: float = DEFAULT_MASK_LOGIT,
    max_prompts_per_call: int | None = None,
) -> RefinementResult:
    """Refines a baseline class map with SAM prompted by the baseline itself (the study's Algorithm 1).

    Args:
        image: the embedded image (:class:`~samseg_core.models.promptable.PromptImage`).
        baseline: (H, W) integer class map at the image's resolution.
        prompts: prompt types (see :data:`samseg_core.prompts.PROMPT_TYPES`), e.g. ``("points", "box")``.
        granularity: ``"class"`` (one prompt set per class, the study) or ``"region"`` (per connected region).
        selection: ``"baseline_iou"`` (the study) or ``"predicted_iou"``.
        gate: the no-harm gate, minimum IoU with the baseline region to accept a candidate (0 = the study).
        min_change: changed pixels per boundary pixel a candidate must reach (0 = the study).
        protect_regions: reject candidates swallowing another class's region (False = the study).
        min_predicted_iou: reject candidates SAM scores below this (0 = the study).
        fill: ``"baseline"`` (unclaimed pixels keep the baseline) or ``"background"`` (the study).
        overlap: ``"area"`` (smaller mask wins) or ``"score"`` (higher predicted IoU wins).
        loose_margin: per-side margin of the loose box as a fraction of the box size.
        min_region_area: smallest region that gets its own point / prompt set.
        ignore_classes: class ids never prompted (and never released).
        background_id: class of released pixels with ``fill="background"``.
        mask_logit: magnitude of the mask prompt's logits.
        max_prompts_per_call: prompt sets per decoder call (default: what fits the :data:`LOGITS_BUDGET`).
    """
    prompt_sets = prompt_sets_from_semantic(
        baseline,
        prompts,
        granularity,
        loose_margin=loose_margin,
        min_region_area=min_region_area,
        ignore_classes=ignore_classes,
        encoder_size=int(image.model.input_size),
        pad=bool(getattr(image.model, "pads_input", True)),
        mask_logit=mask_logit,
    )
    return refine_prompt_sets(
        image,
        baseline,
        prompt_sets,
        selection=selection,
        gate=gate,
        min_change=min_change,
        protect_regions=protect_regions,
        min_predicted_iou=min_predicted_iou,
        fill=fill,
        overlap=overlap,
        background_id=background_id,
        max_prompts_per_call=max_prompts_per_call,
    )

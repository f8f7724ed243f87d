"""SAM refinement of a stored baseline segmentation (Algorithm 1 of the workshop study, with a no-harm gate).

``refine_with_sam`` prompts SAM with a baseline field's own classes and writes the refined ``fo.Segmentation``
(optionally the accepted regions as ``fo.Detections``). Each image's SAM embedding is computed once
(:class:`~samseg_core.sam_embedding.EmbeddingCache`) and shared by every prompt set and by any other stage
given the same ``cache``. The prompt study (:mod:`samseg_core.stages.prompt_study`) reuses the settings, their
validation and the per-image refinement declared here.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from samseg_core.errors import StageParameterError
from samseg_core.labels import detections_from_masks, mask_targets_of, read_segmentation
from samseg_core.masks import resize_mask_nearest
from samseg_core.prompts import DEFAULT_MASK_LOGIT, DEFAULT_MIN_REGION_AREA, Granularity
from samseg_core.refine import (
    DEFAULT_GATE,
    DEFAULT_MIN_CHANGE,
    DEFAULT_MIN_PREDICTED_IOU,
    Fill,
    Overlap,
    RefinementResult,
    Selection,
    refine_semantic,
)
from samseg_core.runner import STATS, RunSummary, SampleItem, StageResult, run_stage
from samseg_core.stages.options import (
    DETECTIONS,
    SEGMENTATION,
    OptionInfo,
    OptionSpec,
    check_option,
    input_field,
    mask_dir_option,
    option,
    option_specs,
    output_field,
)
from samseg_core.stages.plan import StagePlan
from samseg_core.stages.registry import StageSpec, stage
from samseg_core.stages.sam_options import SamOptions, embedding_cache_for

PromptType = Literal["point", "points", "box", "loose_box", "extreme_points", "mask"]

#: The options of :class:`RefinementOptions` that are refinement settings (keywords of
#: :func:`samseg_core.refine.refine_semantic`); a prompt-study configuration may set any of them.
REFINE_SETTINGS = (
    "prompts",
    "granularity",
    "selection",
    "gate",
    "min_change",
    "protect_regions",
    "min_predicted_iou",
    "fill",
    "overlap",
    "loose_margin",
    "min_region_area",
    "ignore_classes",
    "background_id",
)

#: A setting only configurations from Python may change (the form has no input for it).
_MASK_LOGIT = OptionSpec(
    "mask_logit", float, DEFAULT_MASK_LOGIT, OptionInfo(help="Magnitude of the mask prompt's logits", gt=0.0)
)


@dataclass(frozen=True)
class RefinementOptions(SamOptions):
    """Options of :func:`refine_with_sam`."""

    baseline_field: str = input_field(
        "baseline", SEGMENTATION, "The segmentation to refine; its mask targets are copied to the output",
        label="Baseline field",
    )  # fmt: skip
    label_field: str = output_field(
        "sam_refined", SEGMENTATION, "Output segmentation field", label="Output segmentation field"
    )
    instances_field: str | None = output_field(
        None, DETECTIONS, "Optional Detections of the accepted masks (class_id, predicted_iou, stability_score, "
        "baseline_iou)", label="Accepted regions field (optional)",
    )  # fmt: skip
    prompts: tuple[PromptType, ...] = option(
        ("points", "box"), "Prompts made from each class: any of point, points, box or loose_box (one box "
        "kind), extreme_points, mask", label="Prompt types",
    )  # fmt: skip
    granularity: Granularity = option(
        "class", "class: one prompt set per class (the study); region: one per connected region"
    )
    selection: Selection = option(
        "baseline_iou", "Pick the candidate with the highest IoU with the baseline region (the study) or "
        "SAM's predicted_iou",
    )  # fmt: skip
    gate: float = option(
        DEFAULT_GATE, "No-harm gate: accept a candidate only if its IoU with its baseline region is at least "
        "this (0: the study)", ge=0.0, le=1.0, label="No-harm gate",
    )  # fmt: skip
    min_change: float = option(
        DEFAULT_MIN_CHANGE, "Accept a candidate only if the pixels it changes reach this many per pixel of its "
        "region's boundary: smaller changes are within SAM's boundary noise (0: the study)", ge=0.0, le=100.0,
        label="Minimum change",
    )  # fmt: skip
    protect_regions: bool = option(
        True, "Reject a candidate that takes half or more of another class's region (a prompt that hit the "
        "wrong object); off: the study", label="Protect other regions",
    )  # fmt: skip
    min_predicted_iou: float = option(
        DEFAULT_MIN_PREDICTED_IOU, "Accept a candidate only if SAM's own predicted IoU reaches this (0: the study)",
        ge=0.0, le=1.0, label="Minimum SAM score",
    )  # fmt: skip
    fill: Fill = option(
        "baseline", "baseline: pixels no accepted mask claims keep the baseline; background: the study's "
        "empty start map",
    )  # fmt: skip
    overlap: Overlap = option(
        "area", "Where accepted masks overlap: area (the smaller wins) or score (higher predicted IoU wins)"
    )
    loose_margin: float = option(
        0.2, "With loose_box: each side of the box moves out by this fraction of its width / height",
        ge=0.0, le=2.0, label="Loose-box margin",
    )  # fmt: skip
    min_region_area: int = option(
        DEFAULT_MIN_REGION_AREA, "Regions smaller than this many pixels get no point and, per region, no "
        "prompt set", ge=0,
    )  # fmt: skip
    ignore_classes: tuple[int, ...] = option(
        (255,), "Class ids never prompted and never changed (e.g. 255 = unlabeled)"
    )
    background_id: int = option(
        0, "Class of the released pixels with fill=background", ge=0, le=65535, label="Background id"
    )
    mask_dir: str | None = mask_dir_option()

    @classmethod
    def normalize(cls, values: dict[str, Any]) -> dict[str, Any]:
        """``prompts="points+box"`` (or ``"points,box"``) becomes ``("points", "box")``."""
        if isinstance(values.get("prompts"), str):
            values["prompts"] = split_prompts(values["prompts"])
        return values

    def settings(self) -> dict[str, Any]:
        """The refinement settings (:data:`REFINE_SETTINGS`) as keywords of ``refine_semantic``."""
        return {name: getattr(self, name) for name in REFINE_SETTINGS}

    def check(self, samples: Any) -> None:
        """At least one prompt type, and only one box kind."""
        check_prompts(self.prompts, "prompts")


REFINE_WITH_SAM = StageSpec(
    name="refine_with_sam",
    label="refine with SAM",
    description="Refine a baseline segmentation with SAM prompted by its own classes, with a no-harm gate",
    options=RefinementOptions,
    batch_size=4,
    aliases={"semantic_field": "baseline_field"},
    next_step="samseg: evaluate IoU of the refined field against ground truth (or samseg: agreement IoU with the baseline)",
)


# ------------------------------------------------------------------------------------- settings checks


def split_prompts(prompts: str) -> tuple[str, ...]:
    """``"points+box"`` or ``"points, box"`` as ``("points", "box")``."""
    return tuple(p.strip().lower() for p in prompts.replace("+", ",").split(",") if p.strip())


def check_prompts(prompts: Sequence[str], param: str) -> None:
    """Raises StageParameterError naming ``param`` for no prompt type or both box kinds (SAM takes one box)."""
    if not prompts:
        raise StageParameterError(
            param, "no prompt type chosen", "choose at least one, e.g. ('points', 'box')"
        )
    if {"box", "loose_box"} <= set(prompts):
        raise StageParameterError(
            param,
            "SAM takes one box per prompt set: 'box' and 'loose_box' exclude each other",
            "keep one of them",
        )


def _setting_specs() -> dict[str, OptionSpec]:
    specs = {spec.name: spec for spec in option_specs(RefinementOptions) if spec.name in REFINE_SETTINGS}
    return {**specs, "mask_logit": _MASK_LOGIT}


def check_settings(settings: Mapping[str, Any], param: str) -> dict[str, Any]:
    """Returns refinement settings checked against the declarations of :class:`RefinementOptions` (plus
    ``mask_logit``); an unknown name or a bad value raises StageParameterError naming ``param``. FiftyOne-free:
    the prompt study checks its configurations with it."""
    if not isinstance(settings, Mapping):
        raise StageParameterError(param, f"expected a mapping of settings, got {type(settings).__name__}",
                                  "pass e.g. {'prompts': ('box',), 'gate': 0.5}")  # fmt: skip
    specs = _setting_specs()
    unknown = sorted(set(settings) - set(specs))
    if unknown:
        raise StageParameterError(
            param, f"unknown refinement setting(s) {unknown}", f"use {', '.join(specs)}"
        )
    out = {}
    for name, value in settings.items():
        if name == "prompts" and isinstance(value, str):
            value = split_prompts(value)
        try:
            out[name] = check_option(specs[name], value)
        except StageParameterError as err:
            raise StageParameterError(param, f"{name}: {err.problem}", err.remedy) from None
    if "prompts" in out:
        check_prompts(out["prompts"], param)
    return out


def default_settings() -> dict[str, Any]:
    """Every refinement setting at its declared default."""
    return {name: spec.default for name, spec in _setting_specs().items()}


# ---------------------------------------------------------------------------------------- per image


def baseline_of(item: SampleItem, baseline_field: str) -> np.ndarray:
    """The baseline class map of a sample; ValueError when it has none."""
    baseline = read_segmentation(item.inputs.get(baseline_field))
    if baseline is None:
        raise ValueError(f"sample has no '{baseline_field}' segmentation to refine")
    return baseline


def refine_image(
    cache: Any, embedding: Any, baseline: np.ndarray, image_hw: tuple[int, int], settings: Mapping[str, Any]
) -> tuple[np.ndarray, RefinementResult]:
    """Refines one image; a baseline stored at another resolution is resized to the image and back."""
    from samseg_core.sam_embedding import prompt_image

    at_image = baseline if baseline.shape == image_hw else resize_mask_nearest(baseline, image_hw)
    result = refine_semantic(prompt_image(cache.model, embedding), at_image, **settings)
    refined = (
        result.semantic
        if baseline.shape == image_hw
        else resize_mask_nearest(result.semantic, baseline.shape)
    )
    return refined, result


def region_stats(result: RefinementResult) -> dict[str, int]:
    """The prompt sets of one refined image and how many of them the gate accepted."""
    return {"prompt_sets": len(result.regions), "accepted": int(result.regions.accepted.sum())}


def embedded_process(
    cache: Any, refine_item: Callable[[SampleItem, Any], dict[str, Any]]
) -> Callable[[list[SampleItem]], list[StageResult]]:
    """A batch ``process`` that encodes the batch's images together, then runs ``refine_item(item, embedding)``
    per sample; a sample's exception is its own result, so one bad sample does not fail its batch."""

    def process(items: list[SampleItem]) -> list[StageResult]:
        embeddings = cache.get_many([item.id for item in items], [item.image for item in items])
        results: list[StageResult] = []
        for item, embedding in zip(items, embeddings):
            try:
                results.append(refine_item(item, embedding))
            except Exception as err:  # recorded per sample by the runner
                results.append(err)
        return results

    return process


def _instances(result: RefinementResult, targets: Mapping[int, str]) -> Any:
    regions = result.regions.only_accepted()
    return detections_from_masks(
        regions.masks,
        [targets.get(int(c), str(int(c))) for c in regions.class_ids],
        confidences=regions.predicted_iou,
        attributes={
            "class_id": regions.class_ids,
            "predicted_iou": regions.predicted_iou,
            "stability_score": regions.stability,
            "baseline_iou": regions.baseline_iou,
        },
    )


@stage(REFINE_WITH_SAM)
def refine_with_sam(plan: StagePlan, options: RefinementOptions) -> RunSummary:
    """Refines ``baseline_field`` with SAM prompted by its own classes and writes ``label_field``.

    Per image: prompt sets from the baseline (per class or per connected region), three SAM candidates each,
    one chosen (by IoU with the baseline region or by SAM's score), accepted only when its IoU with the
    baseline region reaches ``gate``, accepted masks painted into the output. ``mask_targets[label_field]``
    gets the baseline's classes, merged entry by entry. A baseline stored at another resolution than its image
    is refined at the image's and written back at its own.

    Returns:
        a RunSummary; ``extra`` holds ``prompt_sets``, ``accepted`` (summed over the samples written) and
        ``encoder_calls`` (images this run encoded; 0 when a shared cache already held them).
    """
    cache = embedding_cache_for(options, plan.run.device)
    targets = mask_targets_of(plan.samples, options.baseline_field)
    plan.add_mask_targets(options.label_field, targets)
    settings = options.settings()
    encoder_calls_before = cache.encoder_calls

    def refine_item(item: SampleItem, embedding: Any) -> dict[str, Any]:
        baseline = baseline_of(item, options.baseline_field)
        refined, result = refine_image(cache, embedding, baseline, item.image.shape[:2], settings)
        out: dict[str, Any] = {
            options.label_field: plan.segmentation(options.label_field, refined, item.id),
            STATS: region_stats(result),
        }
        if options.instances_field:
            out[options.instances_field] = _instances(result, targets)
        return out

    summary = run_stage(plan, process=embedded_process(cache, refine_item))
    for key in ("prompt_sets", "accepted"):
        summary.extra.setdefault(key, 0)
    summary.extra["encoder_calls"] = cache.encoder_calls - encoder_calls_before
    return summary

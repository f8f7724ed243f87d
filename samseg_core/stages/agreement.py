"""QA stage without ground truth: agreement between a baseline and a SAM-based segmentation, stored as a run.

Per sample the mIoU of the prediction taking the baseline as reference (per-class IoU is symmetric), the share
of agreeing pixels, per-class IoU and a disagreement heatmap; where the two agree, the heatmap shows SAM's own
uncertainty (``1 - score`` of the mask owning the pixel) when SAM's masks with scores are given.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from samseg_core.labels import masks_from_detections
from samseg_core.metrics import ConfusionAccumulator, IoUOptions, class_iou_dict, score_masks
from samseg_core.runner import STATS, RunSummary, SampleItem, run_stage
from samseg_core.stages.eval_runs import (
    AGREEMENT,
    agreement_sample_fields,
    run_record_config,
    save_samseg_results,
)
from samseg_core.stages.options import (
    DETECTIONS,
    DICT,
    FLOAT,
    HEATMAP,
    SEGMENTATION,
    OutputField,
    StageOptions,
    input_field,
    option,
    output_run,
)
from samseg_core.stages.plan import RunRecord, StagePlan
from samseg_core.stages.qa_common import nan_to_none, per_item_process, require_mask, resolve_class_names
from samseg_core.stages.registry import StageSpec, stage
from samseg_core.uncertainty import combined_uncertainty, label_disagreement, mask_score_uncertainty

_FIELD_TYPES = {"miou": FLOAT, "accuracy": FLOAT, "class_iou": DICT, "heatmap": HEATMAP}


@dataclass(frozen=True)
class AgreementOptions(StageOptions):
    """Options of :func:`agreement_iou`."""

    pred_field: str = input_field(
        None,
        SEGMENTATION,
        "The SAM-based segmentation compared with the baseline (e.g. ssa)",
        label="Prediction field",
    )
    baseline_field: str = input_field(
        "baseline", SEGMENTATION, "The reference segmentation (e.g. baseline)", label="Baseline field"
    )
    eval_key: str = output_run(
        "samseg_agreement", AGREEMENT, "Run key and prefix of the per-sample fields", label="Evaluation key"
    )
    masks_field: str | None = input_field(
        None, DETECTIONS, "Optional SAM masks with predicted_iou / stability_score: their uncertainty enters the heatmap",
        required=False, label="SAM masks with scores (optional)",
    )  # fmt: skip
    ignore_index: int | None = option(
        255, "'No class' value; such baseline pixels are left out", ge=0, le=65535
    )
    heatmap: bool = option(True, "Write a disagreement / uncertainty heatmap", label="Disagreement heatmap")
    score_attributes: tuple[str, ...] = option(
        ("predicted_iou", "stability_score"), "Mask attributes read as scores (the smallest present is used)"
    )
    uncovered: float = option(0.5, "Heatmap value of agreeing pixels no scored mask covers", ge=0.0, le=1.0)

    def output_fields(self) -> list[OutputField]:
        names = agreement_sample_fields(self.eval_key, self.heatmap)
        return [OutputField(name, _FIELD_TYPES[metric], "eval_key") for metric, name in names.items()]

    def run_record(self) -> RunRecord:
        names = [out.name for out in self.output_fields()]
        params = {
            "baseline_field": self.baseline_field,
            "pred_field": self.pred_field,
            "masks_field": self.masks_field,
            "ignore_index": self.ignore_index,
            "heatmap": self.heatmap,
            "score_attributes": list(self.score_attributes),
            "uncovered": self.uncovered,
        }
        return RunRecord(
            self.eval_key, AGREEMENT, run_record_config(self.eval_key, [*names, f"{names[0]}_error"], params)
        )


AGREEMENT_IOU = StageSpec(
    name="agreement_iou",
    label="agreement without ground truth",
    description="Per-sample agreement of a SAM-based segmentation with the baseline, and a disagreement heatmap",
    options=AgreementOptions,
    batch_size=16,
    aliases={"field_a": "baseline_field", "field_b": "pred_field", "scores_field": "masks_field"},
    next_step="no ground truth needed: samseg: build relabel queue on this run's eval_key (disagreement × SAM uncertainty), or open the QA panel",
)


def detection_scores(detections: Any, attributes: Sequence[str]) -> tuple[list[Any], np.ndarray]:
    """Detections that carry a score, and their scores: the smallest of ``attributes`` present on each
    (e.g. SAM's ``predicted_iou``, ``stability_score``), else its ``confidence``."""
    kept, scores = [], []
    for det in getattr(detections, "detections", None) or []:
        values = [det[name] for name in attributes if det.has_field(name) and det[name] is not None]
        if not values and det.confidence is not None:
            values = [det.confidence]
        if values:
            kept.append(det)
            scores.append(min(float(v) for v in values))
    return kept, np.asarray(scores, dtype=np.float32)


@stage(AGREEMENT_IOU)
def agreement_iou(plan: StagePlan, options: AgreementOptions) -> RunSummary:
    """Agreement between the baseline and another segmentation of the same samples, for QA without ground truth.

    Per sample: ``<eval_key>_miou``, ``<eval_key>_accuracy`` (share of pixels where they agree),
    ``<eval_key>_class_iou`` and, with ``heatmap``, an ``fo.Heatmap`` ``<eval_key>_disagreement``: 1 where the
    two maps disagree; where they agree, SAM's uncertainty ``1 - score`` of the mask owning the pixel when
    ``masks_field`` is given, else 0. The dataset-level agreement in both reductions is stored as run
    ``eval_key``.

    Returns:
        a RunSummary; ``extra["agreement"]`` holds the dataset-level agreement in both reductions.
    """
    import fiftyone as fo

    names = resolve_class_names(plan.samples, options.baseline_field, [options.pred_field])
    scoring = IoUOptions(
        known_classes=max(names, default=-1) + 1, ignore_index=options.ignore_index, boundary=False
    )
    fields = agreement_sample_fields(options.eval_key, options.heatmap)
    totals = ConfusionAccumulator()

    def score_item(item: SampleItem) -> dict[str, Any]:
        a = require_mask(item.inputs.get(options.baseline_field), options.baseline_field)
        b = require_mask(item.inputs.get(options.pred_field), options.pred_field)
        image = score_masks(a, b, scoring)
        result: dict[str, Any] = {
            fields["miou"]: nan_to_none(image.scores.miou),
            fields["accuracy"]: nan_to_none(image.scores.pixel_accuracy),
            fields["class_iou"]: class_iou_dict(image.scores, names),
            STATS: image,
        }
        if options.heatmap:
            unsure = None
            if options.masks_field:
                dets, scores = detection_scores(
                    item.inputs.get(options.masks_field), options.score_attributes
                )
                masks, _ = masks_from_detections(fo.Detections(detections=dets), *a.shape)
                unsure = mask_score_uncertainty(masks, scores, uncovered=options.uncovered)
            heat = combined_uncertainty(label_disagreement(a, b, ignore_index=options.ignore_index), unsure)
            result[fields["heatmap"]] = fo.Heatmap(map=heat, range=[0, 1])
        return result

    summary = run_stage(
        plan,
        process=per_item_process(score_item),
        load_images=False,
        on_result=lambda sample_id, image: totals.add(image),
        rescore_skipped=True,
    )
    agreement = totals.summary(names)
    save_samseg_results(plan.samples, options.eval_key, agreement=agreement, summary=summary.to_dict())
    summary.extra.update(agreement=agreement, eval_key=options.eval_key)
    return summary

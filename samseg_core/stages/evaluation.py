"""QA stage: per-sample IoU against ground truth, stored as a FiftyOne run (see :mod:`.eval_runs`).

Scoring itself is FiftyOne-free (:func:`samseg_core.metrics.score_masks`, row bands, bounded memory); this
module reads the label maps, writes the per-sample fields and the run's dataset-level results. Class ids and
names come from ``dataset.mask_targets`` (ground-truth field first, then the prediction fields); ids no mask
target names are still scored, under their number.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from samseg_core.errors import StageParameterError
from samseg_core.labels import read_segmentation
from samseg_core.metrics import ConfusionAccumulator, ImageScores, IoUOptions, class_iou_dict, score_masks
from samseg_core.runner import STATS, RunSummary, SampleItem, run_stage
from samseg_core.stages.eval_runs import IOU, iou_sample_fields, run_record_config, save_samseg_results
from samseg_core.stages.options import (
    DICT,
    FLOAT,
    SEGMENTATION,
    OutputField,
    StageOptions,
    input_field,
    option,
    output_run,
)
from samseg_core.stages.plan import RunRecord, StagePlan
from samseg_core.stages.qa_common import (
    check_mask_targets_agree,
    nan_to_none,
    per_item_process,
    require_mask,
    resolve_class_ids,
    resolve_class_names,
)
from samseg_core.stages.registry import StageSpec, stage

_FIELD_TYPES = {"miou": FLOAT, "accuracy": FLOAT, "boundary_iou": FLOAT, "class_iou": DICT, "delta": FLOAT}


@dataclass(frozen=True)
class IoUEvaluationOptions(StageOptions):
    """Options of :func:`evaluate_iou`."""

    pred_field: str = input_field(
        None,
        SEGMENTATION,
        "The prediction scored against ground truth (e.g. baseline)",
        label="Prediction field",
    )
    gt_field: str = input_field(
        "ground_truth", SEGMENTATION, "The ground-truth segmentation", label="Ground truth"
    )
    eval_key: str = output_run(
        "samseg_iou",
        IOU,
        "Run key and prefix of the per-sample fields (<eval_key>_miou, ...)",
        label="Evaluation key",
    )
    compare_fields: tuple[str, ...] = input_field(
        (), SEGMENTATION, "Further predictions scored side by side, each with a per-sample delta field",
        required=False, label="Also compare",
    )  # fmt: skip
    ignore_index: int | None = option(
        255, "Ground-truth value ignored everywhere; in a prediction it counts as wrong (None: no ignore value)",
        ge=0, le=65535,
    )  # fmt: skip
    reduce_zero_label: bool = option(
        False, "Ground truth 0 is ignored and other ids decremented (mmseg); predictions use the reduced ids"
    )
    classes: tuple[str | int, ...] = option(
        (), "Class subset (names or ids) that mIoU averages over; empty: every class", label="Class subset"
    )
    boundary: bool = option(True, "Also compute boundary IoU (Cheng et al. 2021)", label="Boundary IoU")
    dilation_ratio: float = option(0.02, "Boundary width as a share of the image diagonal", gt=0.0, le=0.5)

    @property
    def fields(self) -> list[str]:
        """The scored prediction fields, the reference first."""
        return [self.pred_field, *self.compare_fields]

    def sample_fields(self) -> dict[str, dict[str, str]]:
        """Per scored field, the names of its per-sample fields."""
        return iou_sample_fields(self.eval_key, self.pred_field, self.compare_fields, self.boundary)

    def output_fields(self) -> list[OutputField]:
        # the reference's mIoU comes first: it is the primary field the runner writes last
        return [
            OutputField(name, _FIELD_TYPES[metric], "eval_key")
            for per_field in self.sample_fields().values()
            for metric, name in per_field.items()
        ]

    def run_record(self) -> RunRecord:
        names = [out.name for out in self.output_fields()]
        params = {
            "pred_field": self.pred_field,
            "gt_field": self.gt_field,
            "compare_fields": list(self.compare_fields),
            "ignore_index": self.ignore_index,
            "reduce_zero_label": self.reduce_zero_label,
            "classes": [str(c) for c in self.classes],
            "boundary": self.boundary,
            "dilation_ratio": self.dilation_ratio,
        }
        return RunRecord(
            self.eval_key, IOU, run_record_config(self.eval_key, [*names, f"{names[0]}_error"], params)
        )

    def check(self, samples: Any) -> None:
        check_mask_targets_agree(samples, "gt_field", self.gt_field, self.fields, self.reduce_zero_label)
        names = resolve_class_names(samples, self.gt_field, self.fields, self.reduce_zero_label)
        try:
            resolve_class_ids(self.classes or None, names)
        except ValueError as err:
            raise StageParameterError(
                "classes", str(err), "name classes of the mask targets, or ids"
            ) from None


EVALUATE_IOU = StageSpec(
    name="evaluate_iou",
    label="evaluate IoU",
    description="Per-sample mIoU, accuracy and boundary IoU against ground truth, stored as a run",
    options=IoUEvaluationOptions,
    batch_size=16,
    positional=("pred_field", "gt_field", "eval_key"),
    next_step="open the QA panel (worst samples, per-class IoU); samseg: detect failure modes, then samseg: build relabel queue",
)


def _iou_options(samples: Any, options: IoUEvaluationOptions) -> tuple[IoUOptions, dict[int, str]]:
    names = resolve_class_names(samples, options.gt_field, options.fields, options.reduce_zero_label)
    subset = resolve_class_ids(options.classes or None, names)
    scoring = IoUOptions(
        known_classes=max(names, default=-1) + 1,
        ignore_index=options.ignore_index,
        reduce_zero_label=options.reduce_zero_label,
        classes=subset,
        boundary=options.boundary,
        dilation_ratio=options.dilation_ratio,
    )
    return scoring, names


def _sample_values(
    per_field: dict[str, ImageScores | None], options: IoUEvaluationOptions, names: dict[int, str]
) -> dict[str, Any]:
    """The per-sample field values of one sample's scores."""
    sample_fields = options.sample_fields()
    reference = per_field[options.pred_field]
    result: dict[str, Any] = {}
    for field, image in per_field.items():
        out = sample_fields[field]
        if image is None:
            result.update(dict.fromkeys(out.values()))
            continue
        result[out["miou"]] = nan_to_none(image.scores.miou)
        result[out["accuracy"]] = nan_to_none(image.scores.pixel_accuracy)
        result[out["class_iou"]] = class_iou_dict(image.scores, names)
        if options.boundary:
            result[out["boundary_iou"]] = nan_to_none(image.boundary_iou)
        if "delta" in out:
            delta = math.nan if reference is None else image.scores.miou - reference.scores.miou
            result[out["delta"]] = nan_to_none(delta)
    return result


@stage(EVALUATE_IOU)
def evaluate_iou(plan: StagePlan, options: IoUEvaluationOptions) -> RunSummary:
    """Scores ``pred_field`` (and ``compare_fields``) against ground truth per sample and over the collection.

    Per sample, for the reference field ``pred_field``: ``<eval_key>_miou`` (mean IoU over the classes present
    in ground truth or prediction, restricted to ``classes``), ``<eval_key>_accuracy`` (pixel accuracy),
    ``<eval_key>_boundary_iou`` and ``<eval_key>_class_iou`` (dict class name -> IoU). Each compared field ``f``
    gets the same under ``<eval_key>_<f>_...`` plus ``<eval_key>_<f>_delta`` = its mIoU minus the reference's.
    A sample whose prediction label is absent gets None for that field and is left out of the totals; a
    sample without ground truth, or with masks of different shapes, gets ``<eval_key>_miou_error``.

    Dataset-level results in both reductions (``summed``: one confusion matrix over all images, as mmseg and
    SSA report; ``mean_of_images``: the mean of per-image mIoUs) are stored as run ``eval_key``:
    ``dataset.load_run_results(eval_key).fields[field]``. With ``skip_existing`` a run with the same settings
    is resumed: samples that already have results keep them and are re-scored for the totals.

    Returns:
        a RunSummary; ``extra["fields"]`` holds the dataset-level results per field.
    """
    samples = plan.samples
    scoring, names = _iou_options(samples, options)
    totals = {field: ConfusionAccumulator(scoring.classes) for field in options.fields}

    def score_item(item: SampleItem) -> dict[str, Any]:
        gt = require_mask(item.inputs.get(options.gt_field), options.gt_field)
        per_field: dict[str, ImageScores | None] = {}
        for field in options.fields:
            pred = read_segmentation(item.inputs.get(field))
            per_field[field] = None if pred is None else score_masks(gt, pred, scoring)
        return {**_sample_values(per_field, options, names), STATS: per_field}

    def add(sample_id: str, per_field: dict[str, ImageScores | None]) -> None:
        for field, image in per_field.items():
            if image is None:
                totals[field].missing_predictions += 1
            else:
                totals[field].add(image)

    summary = run_stage(
        plan, process=per_item_process(score_item), load_images=False, on_result=add, rescore_skipped=True
    )
    field_results = {field: totals[field].summary(names) for field in options.fields}
    _add_deltas(field_results, options.pred_field)
    save_samseg_results(
        samples,
        options.eval_key,
        fields=field_results,
        reference=options.pred_field,
        class_names={str(k): v for k, v in sorted(names.items())},
        summary=summary.to_dict(),
    )
    summary.extra.update(fields=field_results, eval_key=options.eval_key)
    return summary


def _add_deltas(field_results: dict[str, dict[str, Any]], reference: str) -> None:
    base = field_results[reference]
    base_summed = (base["summed"] or {}).get("miou")
    for field, res in field_results.items():
        if field == reference:
            continue
        summed = (res["summed"] or {}).get("miou")
        res["delta_summed"] = None if summed is None or base_summed is None else summed - base_summed
        mean, base_mean = res["mean_of_images"], base["mean_of_images"]
        res["delta_mean_of_images"] = None if mean is None or base_mean is None else mean - base_mean


def miou_for_evaluation(
    samples: Any,
    pred_field: str,
    gt_field: str,
    eval_key: str | None = None,
    *,
    ignore_index: int | None = 255,
    reduce_zero_label: bool = False,
    batch_size: int = 64,
) -> tuple[float | None, dict[str, str]]:
    """mIoU of ``pred_field`` against ``gt_field`` for FiftyOne's ``evaluate_segmentations`` custom metric.

    Writes each sample's mIoU to ``<eval_key>_miou`` when ``eval_key`` is given (FiftyOne's evaluation owns
    that field) and returns the summed (mmseg/SSA) mIoU over the collection, plus the errors of samples that
    could not be scored (sample id -> message; those samples are left out).
    """
    from samseg_core.runner import describe_error

    names = resolve_class_names(samples, gt_field, [pred_field], reduce_zero_label)
    scoring = IoUOptions(
        known_classes=max(names, default=-1) + 1,
        ignore_index=ignore_index,
        reduce_zero_label=reduce_zero_label,
        boundary=False,
    )
    totals = ConfusionAccumulator()
    errors: dict[str, str] = {}
    ids = samples.values("id")
    for start in range(0, len(ids), batch_size):
        chunk = ids[start : start + batch_size]
        gts, preds = samples.select(chunk, ordered=True).values([gt_field, pred_field])
        values: dict[str, float | None] = {}
        for sid, gt_label, pred_label in zip(chunk, gts, preds):
            try:
                image = score_masks(
                    require_mask(gt_label, gt_field), require_mask(pred_label, pred_field), scoring
                )
            except Exception as err:  # one bad sample must not lose the metric
                errors[sid] = describe_error(err)
                values[sid] = None
                continue
            totals.add(image)
            values[sid] = nan_to_none(image.scores.miou)
        if eval_key:
            import fiftyone as fo

            dataset = samples._dataset
            if dataset.get_field(f"{eval_key}_miou") is None:
                dataset.add_sample_field(f"{eval_key}_miou", fo.FloatField)
            dataset.set_values(f"{eval_key}_miou", values, key_field="id")
    summed = totals.summed()
    return (None if summed is None else nan_to_none(summed.miou)), errors

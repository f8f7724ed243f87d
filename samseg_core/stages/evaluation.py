"""QA stages: per-sample IoU against ground truth, agreement without it (failure modes: ``detect_failures``,
re-exported from :mod:`samseg_core.stages.failure_modes`).

Each stage runs through :func:`samseg_core.runner.run_stage` (a bad sample gets ``<primary>_error`` and the run
goes on) and is stored as a FiftyOne run (see :mod:`samseg_core.stages.eval_runs`), so
``dataset.list_runs()``, ``load_run_results``, ``rename_run`` and ``delete_run`` work on it.

Class ids and names come from ``dataset.mask_targets`` (ground-truth field first, then the prediction fields);
ids no mask target names are still scored, under their number.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from samseg_core.labels import masks_from_detections, read_segmentation
from samseg_core.metrics import SegmentationScores, boundary_iou, confusion_and_missed, scores_from_confusion
from samseg_core.runner import ProgressArg, RunSummary, SampleItem, run_stage
from samseg_core.stages.eval_runs import (
    AGREEMENT,
    IOU,
    agreement_sample_fields,
    iou_sample_fields,
    register_samseg_run,
    save_samseg_results,
)
from samseg_core.stages.failure_modes import detect_failures
from samseg_core.stages.qa_common import (
    nan_to_none,
    per_item_process,
    require_mask,
    resolve_class_ids,
    resolve_class_names,
)
from samseg_core.uncertainty import combined_uncertainty, label_disagreement, mask_score_uncertainty

__all__ = [
    "agreement_iou",
    "detect_failures",
    "evaluate_iou",
    "miou_for_evaluation",
    "resolve_class_ids",
    "resolve_class_names",
    "score_masks",
]

#: Class ids at or above this are not classes: in ground truth they are ignored, in a prediction they are wrong
#: (a stray 65535 must not make a 65536 x 65536 confusion matrix).
MAX_CLASSES = 4096


@dataclass(frozen=True)
class IoUOptions:
    """How label maps are scored (see :mod:`samseg_core.metrics` for the conventions)."""

    known_classes: int = 0
    ignore_index: int | None = 255
    reduce_zero_label: bool = False
    classes: tuple[int, ...] | None = None
    boundary: bool = True
    dilation_ratio: float = 0.02


@dataclass
class ImageScores:
    """Scores of one prediction against one ground truth, with the confusion data to accumulate."""

    confusion: np.ndarray
    missed: np.ndarray
    scores: SegmentationScores
    boundary_iou: float


def _observed_max(values: np.ndarray, ignore_index: int | None) -> int:
    keep = (values >= 0) & (values < MAX_CLASSES)
    if ignore_index is not None:
        keep &= values != ignore_index
    return int(values[keep].max(initial=-1))


def score_masks(gt: np.ndarray, pred: np.ndarray, options: IoUOptions) -> ImageScores:
    """Scores one HxW prediction against its HxW ground truth.

    The number of classes is the largest of ``options.known_classes`` (from mask targets), the ids observed in
    either map (below :data:`MAX_CLASSES`) and the class subset, so an id no mask target names still counts.
    Raises ValueError when the shapes differ.
    """
    gt = np.asarray(gt).astype(np.int64, copy=False)
    pred = np.asarray(pred).astype(np.int64, copy=False)
    if gt.shape != pred.shape:
        raise ValueError(f"ground truth mask {gt.shape} and prediction mask {pred.shape} differ in shape")
    shift = 1 if options.reduce_zero_label else 0
    num_classes = max(
        options.known_classes,
        _observed_max(gt, options.ignore_index) + 1 - shift,
        _observed_max(pred, options.ignore_index) + 1,
        max(options.classes, default=-1) + 1 if options.classes else 0,
        1,
    )
    cm, missed = confusion_and_missed(gt, pred, num_classes, options.ignore_index, options.reduce_zero_label)
    scores = scores_from_confusion(cm, missed, options.classes)
    b_iou = math.nan
    if options.boundary:
        reduced = gt - shift
        ignored = (reduced < 0) | (reduced >= num_classes)
        if options.ignore_index is not None:
            ignored |= gt == options.ignore_index
        b_iou = boundary_iou(np.where(ignored, -1, reduced), pred, options.dilation_ratio, ignore_index=-1)
    return ImageScores(cm, missed, scores, b_iou)


class _Totals:
    """Dataset-level accumulation whose confusion matrix grows with the classes seen."""

    def __init__(self, classes: tuple[int, ...] | None) -> None:
        self.classes = classes
        self.confusion = np.zeros((0, 0), dtype=np.int64)
        self.missed = np.zeros(0, dtype=np.int64)
        self.image_mious: list[float] = []
        self.image_boundary: list[float] = []
        self.missing_predictions = 0

    def add(self, image: ImageScores) -> None:
        n = max(self.confusion.shape[0], image.confusion.shape[0])
        self.confusion = _pad(self.confusion, n) + _pad(image.confusion, n)
        self.missed = np.pad(self.missed, (0, n - self.missed.size)) + np.pad(
            image.missed, (0, n - image.missed.size)
        )
        self.image_mious.append(image.scores.miou)
        self.image_boundary.append(image.boundary_iou)

    def summary(self, names: Mapping[int, str]) -> dict[str, Any]:
        """The summed (mmseg/SSA) and mean-of-images reductions."""
        out: dict[str, Any] = {
            "num_images": len(self.image_mious),
            "missing_predictions": self.missing_predictions,
            "mean_of_images": nan_to_none(_nanmean(self.image_mious)),
            "boundary_iou_mean": nan_to_none(_nanmean(self.image_boundary)),
            "summed": None,
        }
        if self.confusion.size:
            n = self.confusion.shape[0]
            subset = None if self.classes is None else tuple(c for c in self.classes if c < n)
            out["summed"] = scores_from_confusion(self.confusion, self.missed, subset).to_dict(dict(names))
        return out


def _pad(cm: np.ndarray, n: int) -> np.ndarray:
    return np.pad(cm, ((0, n - cm.shape[0]), (0, n - cm.shape[1])))


def _nanmean(values: Sequence[float]) -> float:
    arr = np.asarray(values, dtype=np.float64)
    arr = arr[~np.isnan(arr)]
    return float(arr.mean()) if arr.size else math.nan


def _safe_key(name: str) -> str:
    """A class name usable as a MongoDB dict key (no dots, no leading $)."""
    return str(name).replace(".", "_").lstrip("$") or "_"


def class_iou_dict(scores: SegmentationScores, names: Mapping[int, str]) -> dict[str, float]:
    """``{class name: IoU}`` of the classes present in ground truth or prediction (unnamed ids by number)."""
    iou = scores.per_class_iou
    return {_safe_key(names.get(i, str(i))): float(iou[i]) for i in np.flatnonzero(~np.isnan(iou))}


def _default_gt_field(samples: Any, gt_field: str | None) -> str:
    if gt_field:
        return gt_field
    if samples.get_field("ground_truth") is not None:
        return "ground_truth"
    raise ValueError(
        "no gt_field given and no 'ground_truth' field; without ground truth use agreement_iou()"
    )


def evaluate_iou(
    samples: Any,
    pred_field: str,
    gt_field: str | None = None,
    eval_key: str = "samseg_iou",
    *,
    ignore_index: int | None = 255,
    reduce_zero_label: bool = False,
    classes: Sequence[int | str] | None = None,
    boundary: bool = True,
    dilation_ratio: float = 0.02,
    compare_fields: Sequence[str] = (),
    batch_size: int = 16,
    skip_failures: bool = True,
    overwrite: bool = True,
    progress: ProgressArg = None,
) -> RunSummary:
    """Scores ``pred_field`` (and ``compare_fields``) against ground truth per sample and over the collection.

    Per sample, for the reference field ``pred_field``: ``<eval_key>_miou`` (mean IoU over the classes present
    in ground truth or prediction, restricted to ``classes``), ``<eval_key>_accuracy`` (pixel accuracy),
    ``<eval_key>_boundary_iou`` and ``<eval_key>_class_iou`` (dict class name -> IoU). Each compared field ``f``
    gets the same under ``<eval_key>_<f>_...`` plus ``<eval_key>_<f>_delta`` = its mIoU minus the reference's.
    A sample whose prediction label is absent gets None for that field and is left out of the totals; a
    sample without ground truth, or with masks of different shapes, gets ``<eval_key>_miou_error``.

    Dataset-level results in both reductions (``summed``: one confusion matrix over all images, as mmseg and
    SSA report; ``mean_of_images``: the mean of per-image mIoUs) are stored as run ``eval_key``:
    ``dataset.load_run_results(eval_key).fields[field]``.

    Args:
        samples: a dataset or view.
        pred_field: the reference ``fo.Segmentation`` field (e.g. ``"baseline"``).
        gt_field: the ground-truth ``fo.Segmentation`` field (default ``"ground_truth"``).
        eval_key: run key and prefix of the per-sample fields.
        ignore_index: ground-truth value ignored everywhere; in a prediction it counts as wrong.
        reduce_zero_label: ground truth 0 is ignored and other ids are decremented (mmseg's option); the
            predictions must use the reduced ids.
        classes: subset (ids or names) that mIoU averages over; per-class values cover all classes.
        boundary: also compute boundary IoU (Cheng et al. 2021).
        dilation_ratio: boundary width as a share of the image diagonal.
        compare_fields: further prediction fields scored side by side (e.g. ``("ssa", "sam_refined")``).
        batch_size: samples per bulk write.
        skip_failures: record per-sample errors and go on.
        overwrite: replace an existing run ``eval_key`` (its fields are deleted first); else raise.
        progress: True, or a callable taking the fraction done.

    Returns:
        a RunSummary; ``extra["fields"]`` holds the dataset-level results per field.
    """
    gt_field = _default_gt_field(samples, gt_field)
    compare = [f for f in dict.fromkeys(compare_fields) if f != pred_field]
    fields = [pred_field, *compare]
    names = resolve_class_names(samples, gt_field, fields, reduce_zero_label)
    subset = resolve_class_ids(classes, names)
    options = IoUOptions(
        known_classes=max(names, default=-1) + 1,
        ignore_index=ignore_index,
        reduce_zero_label=reduce_zero_label,
        classes=subset,
        boundary=boundary,
        dilation_ratio=dilation_ratio,
    )
    sample_fields = iou_sample_fields(eval_key, pred_field, compare, boundary)
    # the reference's mIoU comes first: it is the primary field the runner writes last
    output_fields = [name for per_field in sample_fields.values() for name in per_field.values()]
    register_samseg_run(
        samples,
        eval_key,
        IOU,
        fields=output_fields,
        overwrite=overwrite,
        pred_field=pred_field,
        gt_field=gt_field,
        compare_fields=compare,
        ignore_index=ignore_index,
        reduce_zero_label=reduce_zero_label,
        classes=list(subset) if subset else None,
        boundary=boundary,
        dilation_ratio=dilation_ratio,
    )
    totals = {field: _Totals(subset) for field in fields}

    def score_item(item: SampleItem) -> dict[str, Any]:
        gt = require_mask(item.inputs.get(gt_field), gt_field)
        per_field: dict[str, ImageScores | None] = {}
        for field in fields:
            pred = read_segmentation(item.inputs.get(field))
            per_field[field] = None if pred is None else score_masks(gt, pred, options)
        result: dict[str, Any] = {}
        reference = per_field[pred_field]
        for field, image in per_field.items():
            out = sample_fields[field]
            if image is None:
                result.update(dict.fromkeys(out.values()))
                totals[field].missing_predictions += 1
                continue
            totals[field].add(image)
            result[out["miou"]] = nan_to_none(image.scores.miou)
            result[out["accuracy"]] = nan_to_none(image.scores.pixel_accuracy)
            result[out["class_iou"]] = class_iou_dict(image.scores, names)
            if boundary:
                result[out["boundary_iou"]] = nan_to_none(image.boundary_iou)
            if "delta" in out:
                delta = math.nan if reference is None else image.scores.miou - reference.scores.miou
                result[out["delta"]] = nan_to_none(delta)
        return result

    summary = run_stage(
        samples,
        stage="evaluate_iou",
        output_fields=output_fields,
        process=per_item_process(score_item),
        input_fields=[gt_field, *fields],
        load_images=False,
        batch_size=batch_size,
        skip_failures=skip_failures,
        overwrite=overwrite,
        progress=progress,
    )
    field_results = {field: totals[field].summary(names) for field in fields}
    _add_deltas(field_results, pred_field)
    save_samseg_results(
        samples,
        eval_key,
        fields=field_results,
        reference=pred_field,
        class_names={str(k): v for k, v in sorted(names.items())},
        summary=summary.to_dict(),
    )
    summary.extra["fields"] = field_results
    summary.extra["eval_key"] = eval_key
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


def agreement_iou(
    samples: Any,
    field_a: str,
    field_b: str,
    eval_key: str = "samseg_agreement",
    *,
    ignore_index: int | None = 255,
    heatmap: bool = True,
    scores_field: str | None = None,
    score_attributes: Sequence[str] = ("predicted_iou", "stability_score"),
    uncovered: float = 0.5,
    batch_size: int = 16,
    skip_failures: bool = True,
    overwrite: bool = True,
    progress: ProgressArg = None,
) -> RunSummary:
    """Agreement between two segmentations of the same samples, for QA without ground truth.

    Per sample: ``<eval_key>_miou`` (mIoU of ``field_b`` taking ``field_a`` as reference: per-class IoU is
    symmetric), ``<eval_key>_accuracy`` (share of pixels where they agree), ``<eval_key>_class_iou`` and, with
    ``heatmap``, an ``fo.Heatmap`` ``<eval_key>_disagreement``: 1 where the two maps disagree; where they agree,
    SAM's uncertainty ``1 - score`` of the mask owning the pixel when ``scores_field`` (SAM's masks as
    ``fo.Detections`` with ``predicted_iou`` / ``stability_score``) is given, else 0.

    Args:
        samples: a dataset or view.
        field_a: the reference ``fo.Segmentation`` field (e.g. ``"baseline"``).
        field_b: the other ``fo.Segmentation`` field (e.g. ``"ssa"``).
        eval_key: run key and prefix of the fields.
        ignore_index: "no class" value; such pixels of ``field_a`` are left out.
        heatmap: write the disagreement/uncertainty heatmap.
        scores_field: optional ``fo.Detections`` field of SAM masks with scores.
        score_attributes: detection attributes read as scores (the smallest present is used).
        uncovered: heatmap value of agreeing pixels no scored mask covers.
        batch_size: samples per bulk write.
        skip_failures: record per-sample errors and go on.
        overwrite: replace an existing run ``eval_key``.
        progress: True, or a callable taking the fraction done.

    Returns:
        a RunSummary; ``extra["agreement"]`` holds the dataset-level agreement in both reductions.
    """
    names = resolve_class_names(samples, field_a, [field_b])
    options = IoUOptions(known_classes=max(names, default=-1) + 1, ignore_index=ignore_index, boundary=False)
    sample_fields = agreement_sample_fields(eval_key, heatmap)
    register_samseg_run(
        samples,
        eval_key,
        AGREEMENT,
        fields=list(sample_fields.values()),
        overwrite=overwrite,
        field_a=field_a,
        field_b=field_b,
        ignore_index=ignore_index,
        heatmap=heatmap,
        scores_field=scores_field,
        score_attributes=list(score_attributes),
        uncovered=uncovered,
    )
    totals = _Totals(None)

    def score_item(item: SampleItem) -> dict[str, Any]:
        import fiftyone as fo

        a = require_mask(item.inputs.get(field_a), field_a)
        b = require_mask(item.inputs.get(field_b), field_b)
        image = score_masks(a, b, options)
        result: dict[str, Any] = {
            sample_fields["miou"]: nan_to_none(image.scores.miou),
            sample_fields["accuracy"]: nan_to_none(image.scores.pixel_accuracy),
            sample_fields["class_iou"]: class_iou_dict(image.scores, names),
        }
        if heatmap:
            unsure = None
            if scores_field:
                dets, scores = detection_scores(item.inputs.get(scores_field), score_attributes)
                masks, _ = masks_from_detections(fo.Detections(detections=dets), *a.shape)
                unsure = mask_score_uncertainty(masks, scores, uncovered=uncovered)
            heat = combined_uncertainty(label_disagreement(a, b, ignore_index=ignore_index), unsure)
            result[sample_fields["heatmap"]] = fo.Heatmap(map=heat, range=[0, 1])
        totals.add(image)
        return result

    summary = run_stage(
        samples,
        stage="agreement_iou",
        output_fields=list(sample_fields.values()),
        process=per_item_process(score_item),
        input_fields=[field_a, field_b, *([scores_field] if scores_field else [])],
        load_images=False,
        batch_size=batch_size,
        skip_failures=skip_failures,
        overwrite=overwrite,
        progress=progress,
    )
    agreement = totals.summary(names)
    save_samseg_results(samples, eval_key, agreement=agreement, summary=summary.to_dict())
    summary.extra["agreement"] = agreement
    summary.extra["eval_key"] = eval_key
    return summary


def _label_batches(samples: Any, fields: Sequence[str], batch_size: int) -> Any:
    """Yields ``(ids, {field: labels})`` for consecutive batches of samples (one query per batch)."""
    ids = samples.values("id")
    present = [f for f in fields if samples.get_field(f) is not None]
    for start in range(0, len(ids), batch_size):
        chunk = ids[start : start + batch_size]
        columns = samples.select(chunk, ordered=True).values(present) if present else []
        values = {f: column for f, column in zip(present, columns)}
        yield chunk, {f: values.get(f, [None] * len(chunk)) for f in fields}


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

    Writes each sample's mIoU to ``<eval_key>_miou`` when ``eval_key`` is given and returns the summed
    (mmseg/SSA) mIoU over the collection, plus the errors of samples that could not be scored (sample id ->
    message; those samples are left out).
    """
    from samseg_core.runner import describe_error

    names = resolve_class_names(samples, gt_field, [pred_field], reduce_zero_label)
    options = IoUOptions(
        known_classes=max(names, default=-1) + 1,
        ignore_index=ignore_index,
        reduce_zero_label=reduce_zero_label,
        boundary=False,
    )
    totals = _Totals(None)
    errors: dict[str, str] = {}
    for ids, labels in _label_batches(samples, [gt_field, pred_field], batch_size):
        values: dict[str, float | None] = {}
        for sid, gt_label, pred_label in zip(ids, labels[gt_field], labels[pred_field]):
            try:
                image = score_masks(
                    require_mask(gt_label, gt_field), require_mask(pred_label, pred_field), options
                )
            except Exception as err:  # one bad sample must not lose the metric
                errors[sid] = describe_error(err)
                values[sid] = None
                continue
            totals.add(image)
            values[sid] = nan_to_none(image.scores.miou)
        if eval_key:
            samples._dataset.set_values(f"{eval_key}_miou", values, key_field="id")
    summed = totals.summary(names)["summed"]
    return (summed or {}).get("miou"), errors

"""QA stage: failure modes (missing, incomplete, overlapping) of a semantic prediction per ground-truth object."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from samseg_core.failures import FAILURE_MODES, FailureReport, FailureThresholds, detect_failures_in_image
from samseg_core.labels import masks_from_detections, to_python
from samseg_core.runner import ProgressArg, RunSummary, SampleItem, run_stage
from samseg_core.stages.eval_runs import (
    FAILURES,
    failure_sample_fields,
    register_samseg_run,
    save_samseg_results,
)
from samseg_core.stages.qa_common import per_item_process, require_mask, resolve_class_names


def _instance_class_ids(detections: Any, names: Mapping[int, str]) -> list[int]:
    by_name = {name: class_id for class_id, name in names.items()}
    ids = []
    for det in detections:
        label = str(det.label)
        if label in by_name:
            ids.append(by_name[label])
        elif label.isdigit():
            ids.append(int(label))
        else:
            raise ValueError(f"instance label '{label}' is not a class of the prediction's mask targets")
    return ids


def failure_detections(
    report: FailureReport, names: Mapping[int, str], source_ids: Sequence[str] = ()
) -> Any:
    """``fo.Detections``, one per assessed object with its box-relative mask and attributes ``failure_mode``,
    ``iou``, ``coverage``, ``spill``, ``spans_objects``, ``area`` (and ``gt_id`` for instance objects)."""
    import fiftyone as fo

    height, width = report.labels.shape
    detections = []
    for i in range(len(report)):
        (rows, cols), mask = report.object_mask(i)
        class_id = int(report.class_ids[i])
        det = fo.Detection(
            label=names.get(class_id, str(class_id)),
            bounding_box=[
                cols.start / width,
                rows.start / height,
                (cols.stop - cols.start) / width,
                (rows.stop - rows.start) / height,
            ],
            mask=mask,
            failure_mode=str(report.modes[i]),
            iou=float(report.iou[i]),
            coverage=float(report.coverage[i]),
            spill=float(report.spill[i]),
            spans_objects=bool(report.spans_objects[i]),
            area=int(report.areas[i]),
        )
        source = int(report.source_index[i])
        if 0 <= source < len(source_ids):
            det["gt_id"] = source_ids[source]
        detections.append(det)
    return fo.Detections(detections=detections)


def detect_failures(
    samples: Any,
    pred_field: str,
    gt_field: str | None = "ground_truth",
    instances_field: str | None = None,
    label_field: str | None = None,
    *,
    thresholds: FailureThresholds | Mapping[str, float] | None = None,
    ignore_index: int | None = 255,
    skip_classes: Sequence[int] = (0,),
    batch_size: int = 16,
    skip_failures: bool = True,
    overwrite: bool = True,
    progress: ProgressArg = None,
) -> RunSummary:
    """Finds missing, incomplete and overlapping ground-truth objects of a semantic prediction.

    Objects are the instances of ``instances_field`` (``fo.Detections`` with masks; labels must be class names
    of the prediction's mask targets) when given, else the connected regions of each class of ``gt_field``
    (classes in ``skip_classes`` are not objects). See :mod:`samseg_core.failures` for the definitions.

    Writes ``label_field`` (default ``<pred_field>_failures``): ``fo.Detections``, one per object with its mask
    and attributes ``failure_mode``, ``iou``, ``coverage``, ``spill``, ``spans_objects``, ``area``; and per
    sample ``<label_field>_missing``, ``<label_field>_incomplete``, ``<label_field>_overlapping`` counts. The
    run is registered under the key ``label_field``; its results hold the dataset totals per mode.

    Args:
        samples: a dataset or view.
        pred_field: the ``fo.Segmentation`` prediction.
        gt_field: ground-truth ``fo.Segmentation`` (objects in semantic mode; its ``ignore_index`` pixels are
            left out in both modes). May be None with ``instances_field``.
        instances_field: ground-truth ``fo.Detections`` with instance masks.
        label_field: output field and run key.
        thresholds: :class:`FailureThresholds` or a dict of its fields.
        ignore_index: unlabelled ground-truth value and "no class" prediction value.
        skip_classes: ground-truth classes that are not objects in semantic mode (default background 0).
        batch_size: samples per bulk write.
        skip_failures: record per-sample errors and go on.
        overwrite: replace an existing run ``label_field``.
        progress: True, or a callable taking the fraction done.

    Returns:
        a RunSummary; ``extra["counts"]`` holds the totals per mode.
    """
    if not gt_field and not instances_field:
        raise ValueError("detect_failures needs gt_field or instances_field")
    if isinstance(thresholds, Mapping):
        thresholds = FailureThresholds(**thresholds)
    thresholds = thresholds or FailureThresholds()
    label_field = label_field or f"{pred_field}_failures"
    names = resolve_class_names(samples, gt_field, [pred_field])
    sample_fields = failure_sample_fields(label_field)
    register_samseg_run(
        samples,
        label_field,
        FAILURES,
        fields=list(sample_fields.values()),
        overwrite=overwrite,
        pred_field=pred_field,
        gt_field=gt_field,
        instances_field=instances_field,
        thresholds=thresholds.to_dict(),
        ignore_index=ignore_index,
        skip_classes=[int(c) for c in skip_classes],
    )
    totals = dict.fromkeys(("missing", "incomplete", "overlapping", "ok"), 0)

    def assess_item(item: SampleItem) -> dict[str, Any]:
        pred = require_mask(item.inputs.get(pred_field), pred_field)
        gt = require_mask(item.inputs.get(gt_field), gt_field) if gt_field else None
        source_ids: list[str] = []
        if instances_field:
            label = item.inputs.get(instances_field)
            masks, dets = masks_from_detections(label, *pred.shape)
            source_ids = [det.id for det in dets]
            report = detect_failures_in_image(
                pred,
                gt,
                instance_masks=masks,
                instance_classes=_instance_class_ids(dets, names),
                ignore_index=ignore_index,
                thresholds=thresholds,
            )
        else:
            report = detect_failures_in_image(
                pred, gt, ignore_index=ignore_index, skip_classes=skip_classes, thresholds=thresholds
            )
        counts = report.counts()
        for mode, count in counts.items():
            totals[mode] += count
        result: dict[str, Any] = {sample_fields["objects"]: failure_detections(report, names, source_ids)}
        result.update({sample_fields[mode]: counts[mode] for mode in FAILURE_MODES})
        return result

    summary = run_stage(
        samples,
        stage="detect_failures",
        output_fields=list(sample_fields.values()),
        process=per_item_process(assess_item),
        input_fields=[f for f in (pred_field, gt_field, instances_field) if f],
        load_images=False,
        batch_size=batch_size,
        skip_failures=skip_failures,
        overwrite=overwrite,
        progress=progress,
    )
    save_samseg_results(samples, label_field, counts=dict(totals), summary=summary.to_dict())
    summary.extra["counts"] = to_python(totals)
    summary.extra["label_field"] = label_field
    return summary

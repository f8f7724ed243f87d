"""QA stage: failure modes (missing, incomplete, overlapping) of a semantic prediction per ground-truth object."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any

from samseg_core.errors import StageParameterError
from samseg_core.failures import FAILURE_MODES, FailureReport, FailureThresholds, detect_failures_in_image
from samseg_core.labels import masks_from_detections, to_python
from samseg_core.runner import STATS, RunSummary, SampleItem, run_stage
from samseg_core.stages.eval_runs import (
    FAILURES,
    failure_sample_fields,
    run_record_config,
    save_samseg_results,
)
from samseg_core.stages.options import (
    DETECTIONS,
    INT,
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
    per_item_process,
    require_mask,
    resolve_class_names,
)
from samseg_core.stages.registry import StageSpec, stage

_DEFAULTS = FailureThresholds()


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


@dataclass(frozen=True)
class FailureOptions(StageOptions):
    """Options of :func:`detect_failures`."""

    pred_field: str = input_field(
        None, SEGMENTATION, "The semantic prediction whose failures are found", label="Prediction field"
    )
    gt_field: str | None = input_field(
        "ground_truth", SEGMENTATION, "Ground truth: objects are its connected regions per class (empty with "
        "ground-truth instances)", required=False, label="Ground truth",
    )  # fmt: skip
    eval_key: str = output_run(
        "samseg_failures", FAILURES, "Run key: the Detections field of assessed objects, and prefix of the "
        "per-mode counts <eval_key>_missing, ...", label="Failure run key",
    )  # fmt: skip
    gt_instances_field: str | None = input_field(
        None, DETECTIONS, "Ground-truth instances with masks (labels = class names); else connected regions",
        required=False, label="Ground-truth instances (optional)",
    )  # fmt: skip
    missing_below: float = option(
        _DEFAULTS.missing_below,
        "Missing: the prediction covers less than this share of the object",
        ge=0.0,
        le=1.0,
    )
    complete_above: float = option(
        _DEFAULTS.complete_above, "Incomplete: coverage below this (and not missing)", ge=0.0, le=1.0
    )
    spill_above: float = option(
        _DEFAULTS.spill_above, "Overlapping: more than this share of the object's prediction lies outside it",
        ge=0.0, le=1.0,
    )  # fmt: skip
    span_min_share: float = option(
        _DEFAULTS.span_min_share,
        "Overlapping: one region holds at least this share of two objects",
        gt=0.0,
        le=1.0,
    )
    attribution_min: float = option(
        _DEFAULTS.attribution_min, "A region belongs to an object's prediction from this overlap share",
        gt=0.0, le=1.0,
    )  # fmt: skip
    min_object_area: int = option(
        _DEFAULTS.min_object_area, "Ground-truth objects below this many pixels are not assessed", ge=0
    )
    ignore_index: int | None = option(
        255, "Unlabelled ground-truth value and 'no class' prediction value", ge=0, le=65535
    )
    skip_classes: tuple[int, ...] = option(
        (0,),
        "Ground-truth classes that are not objects in semantic mode (ids)",
        label="Classes that are not objects",
    )
    thresholds: Any = option(
        None, "FailureThresholds or a dict of its fields (sets the threshold options)", python_only=True
    )

    @classmethod
    def normalize(cls, values: dict[str, Any]) -> dict[str, Any]:
        """``thresholds=`` (a FailureThresholds or dict) sets the individual threshold options."""
        given = values.pop("thresholds", None)
        if given is None:
            return values
        given = asdict(given) if isinstance(given, FailureThresholds) else dict(given)
        known = {f.name for f in fields(FailureThresholds)}
        unknown = sorted(set(given) - known)
        if unknown:
            raise StageParameterError("thresholds", f"unknown thresholds {unknown}", f"use {sorted(known)}")
        return {**given, **values}

    def failure_thresholds(self) -> FailureThresholds:
        """The thresholds as the algorithm takes them."""
        return FailureThresholds(**{f.name: getattr(self, f.name) for f in fields(FailureThresholds)})

    def output_fields(self) -> list[OutputField]:
        names = failure_sample_fields(self.eval_key)
        return [
            OutputField(n, DETECTIONS if mode == "objects" else INT, "eval_key") for mode, n in names.items()
        ]

    def run_record(self) -> RunRecord:
        names = [out.name for out in self.output_fields()]
        params = {
            "pred_field": self.pred_field,
            "gt_field": self.gt_field,
            "gt_instances_field": self.gt_instances_field,
            "thresholds": self.failure_thresholds().to_dict(),
            "ignore_index": self.ignore_index,
            "skip_classes": list(self.skip_classes),
        }
        return RunRecord(
            self.eval_key, FAILURES, run_record_config(self.eval_key, [*names, f"{names[0]}_error"], params)
        )

    def check(self, samples: Any) -> None:
        if not self.gt_field and not self.gt_instances_field:
            raise StageParameterError(
                "gt_field", "no ground truth given", "pass gt_field or gt_instances_field"
            )
        if self.missing_below > self.complete_above:
            raise StageParameterError(
                "missing_below", f"{self.missing_below} exceeds complete_above={self.complete_above}",
                "missing objects must be less covered than incomplete ones",
            )  # fmt: skip
        check_mask_targets_agree(samples, "gt_field", self.gt_field, [self.pred_field])


DETECT_FAILURES = StageSpec(
    name="detect_failures",
    label="detect failure modes",
    description="Missing, incomplete and overlapping ground-truth objects per sample, stored as a run",
    options=FailureOptions,
    batch_size=16,
    positional=("pred_field", "gt_field"),
    aliases={"instances_field": "gt_instances_field", "label_field": "eval_key"},
    next_step="samseg: build relabel queue with this run as failures_key",
)


def _assess(
    item: SampleItem, options: FailureOptions, names: Mapping[int, str]
) -> tuple[FailureReport, list[str]]:
    pred = require_mask(item.inputs.get(options.pred_field), options.pred_field)
    gt = require_mask(item.inputs.get(options.gt_field), options.gt_field) if options.gt_field else None
    thresholds = options.failure_thresholds()
    if not options.gt_instances_field:
        return detect_failures_in_image(
            pred,
            gt,
            ignore_index=options.ignore_index,
            skip_classes=options.skip_classes,
            thresholds=thresholds,
        ), []
    masks, dets = masks_from_detections(item.inputs.get(options.gt_instances_field), *pred.shape)
    report = detect_failures_in_image(
        pred,
        gt,
        instance_masks=masks,
        instance_classes=_instance_class_ids(dets, names),
        ignore_index=options.ignore_index,
        thresholds=thresholds,
    )
    return report, [det.id for det in dets]


@stage(DETECT_FAILURES)
def detect_failures(plan: StagePlan, options: FailureOptions) -> RunSummary:
    """Finds missing, incomplete and overlapping ground-truth objects of a semantic prediction.

    Objects are the instances of ``gt_instances_field`` (``fo.Detections`` with masks; labels must be class
    names of the prediction's mask targets) when given, else the connected regions of each class of ``gt_field``
    (classes in ``skip_classes`` are not objects). See :mod:`samseg_core.failures` for the definitions.

    Writes the ``fo.Detections`` field ``<eval_key>``, one per object with its mask and attributes
    ``failure_mode``, ``iou``, ``coverage``, ``spill``, ``spans_objects``, ``area``; and per sample
    ``<eval_key>_missing``, ``<eval_key>_incomplete``, ``<eval_key>_overlapping`` counts. The run is registered
    under ``eval_key``; its results hold the dataset totals per mode.

    Returns:
        a RunSummary; ``extra["counts"]`` holds the totals per mode.
    """
    names = resolve_class_names(plan.samples, options.gt_field, [options.pred_field])
    sample_fields = failure_sample_fields(options.eval_key)

    def assess_item(item: SampleItem) -> dict[str, Any]:
        report, source_ids = _assess(item, options, names)
        counts = report.counts()
        result: dict[str, Any] = {sample_fields["objects"]: failure_detections(report, names, source_ids)}
        result.update({sample_fields[mode]: counts[mode] for mode in FAILURE_MODES})
        result[STATS] = {mode: counts.get(mode, 0) for mode in (*FAILURE_MODES, "ok")}
        return result

    summary = run_stage(plan, process=per_item_process(assess_item), load_images=False, rescore_skipped=True)
    totals = {mode: int(summary.extra.pop(mode, 0)) for mode in (*FAILURE_MODES, "ok")}
    save_samseg_results(plan.samples, options.eval_key, counts=dict(totals), summary=summary.to_dict())
    summary.extra.update(counts=to_python(totals), eval_key=options.eval_key)
    return summary

"""Operators: per-sample IoU (against ground truth, or agreement between two fields) and failure modes."""

from __future__ import annotations

from typing import Any

import fiftyone.operators.types as types

from samseg_core.failures import FailureThresholds
from samseg_core.stages.evaluation import agreement_iou, detect_failures, evaluate_iou

from . import common

GROUND_TRUTH, AGREEMENT = "ground_truth", "agreement"


def _qa_run_inputs(inputs: types.Object) -> None:
    inputs.int("batch_size", label="Batch size", default=16, required=False)
    inputs.bool(
        "overwrite", label="Replace an existing run with this key", default=True, view=types.CheckboxView()
    )
    inputs.bool(
        "skip_failures",
        label="Record per-sample errors and continue",
        default=True,
        view=types.CheckboxView(),
    )


def _qa_run_kwargs(ctx: Any) -> dict[str, Any]:
    params = ctx.params
    return {
        "batch_size": int(params.get("batch_size") or 16),
        "overwrite": bool(params.get("overwrite", True)),
        "skip_failures": bool(params.get("skip_failures", True)),
        "progress": common.progress_callback(ctx),
    }


def _ignore_index(params: dict[str, Any]) -> int | None:
    value = params.get("ignore_index", 255)
    return None if value is None or int(value) < 0 else int(value)


def _multi_field_input(
    inputs: types.Object, name: str, label: str, choices: list[str], description: str
) -> None:
    dropdown = types.Dropdown(label=label, multiple=True, description=description)
    for choice in choices:
        dropdown.add_choice(choice, label=choice)
    inputs.list(name, types.String(), default=[], required=False, label=label, view=dropdown)


def _evaluate_inputs(ctx: Any, inputs: types.Object) -> None:
    fields = common.semantic_fields(ctx)
    common.add_choice_input(
        inputs,
        "mode",
        "Compare against",
        [GROUND_TRUTH, AGREEMENT],
        GROUND_TRUTH,
        description="ground truth: IoU per sample; agreement: two predictions without ground truth",
    )
    mode = ctx.params.get("mode") or GROUND_TRUTH
    default_pred = next((f for f in ("baseline", "coarse") if f in fields), None)
    common.add_existing_field_input(ctx, inputs, "pred_field", "Prediction field", fields, default_pred)
    if mode == AGREEMENT:
        others = [f for f in fields if f != ctx.params.get("pred_field")]
        common.add_existing_field_input(ctx, inputs, "other_field", "Second prediction field", others, "ssa")
        common.add_field_input(inputs, "eval_key", "Evaluation key", "samseg_agreement", required=False)
        inputs.bool("heatmap", label="Write a disagreement heatmap", default=True, view=types.CheckboxView())
        dets = common.detections_fields(ctx)
        if dets:
            common.add_choice_input(
                inputs,
                "scores_field",
                "SAM masks with scores (optional)",
                ["", *dets],
                "",
                description="Detections with predicted_iou / stability_score add SAM's uncertainty to the heatmap",
            )
    else:
        common.add_existing_field_input(ctx, inputs, "gt_field", "Ground truth field", fields, "ground_truth")
        common.add_field_input(inputs, "eval_key", "Evaluation key", "samseg_iou", required=False)
        _multi_field_input(
            inputs,
            "compare_fields",
            "Also compare",
            fields,
            "Further prediction fields scored side by side, with a per-sample delta field",
        )
        inputs.bool("reduce_zero_label", label="Reduce zero label (0 = ignore)", default=False)
        inputs.bool("boundary", label="Boundary IoU", default=True, view=types.CheckboxView())
        inputs.str(
            "classes",
            label="Class subset (optional)",
            default="",
            required=False,
            description="Comma-separated class names or ids that mIoU averages over",
        )
    inputs.int("ignore_index", label="Ignore index", default=255, description="-1 for none")
    _qa_run_inputs(inputs)


class EvaluateIoU(common.StageOperator):
    """Per-sample mIoU, accuracy, boundary IoU and per-class IoU, or agreement between two predictions."""

    NAME = "evaluate_iou"
    LABEL = "evaluate IoU"
    DESCRIPTION = "Per-sample IoU against ground truth, or agreement between two fields"

    def build_form(self, ctx: Any, inputs: types.Object) -> None:
        _evaluate_inputs(ctx, inputs)

    def execute(self, ctx: Any) -> dict[str, Any]:
        params = ctx.params
        view = common.target_view(ctx)
        if (params.get("mode") or GROUND_TRUTH) == AGREEMENT:
            summary = agreement_iou(
                view,
                params["pred_field"],
                params["other_field"],
                eval_key=params.get("eval_key") or "samseg_agreement",
                ignore_index=_ignore_index(params),
                heatmap=bool(params.get("heatmap", True)),
                scores_field=params.get("scores_field") or None,
                **_qa_run_kwargs(ctx),
            )
        else:
            classes = [c.strip() for c in (params.get("classes") or "").split(",") if c.strip()]
            summary = evaluate_iou(
                view,
                params["pred_field"],
                params.get("gt_field") or None,
                eval_key=params.get("eval_key") or "samseg_iou",
                ignore_index=_ignore_index(params),
                reduce_zero_label=bool(params.get("reduce_zero_label", False)),
                classes=classes or None,
                boundary=bool(params.get("boundary", True)),
                compare_fields=params.get("compare_fields") or (),
                **_qa_run_kwargs(ctx),
            )
        return common.finish(ctx, summary)

    def __call__(
        self,
        sample_collection: Any,
        pred_field: str,
        gt_field: str = "ground_truth",
        eval_key: str = "samseg_iou",
        compare_fields: list[str] | None = None,
        agreement_with: str | None = None,
        ignore_index: int = 255,
        delegate: bool = False,
    ) -> Any:
        """Evaluates ``pred_field`` from Python through the operator.

        Args:
            sample_collection: a dataset or view.
            pred_field: the prediction (reference) field.
            gt_field: the ground-truth field (ground-truth mode).
            eval_key: run key and field prefix.
            compare_fields: further prediction fields scored side by side.
            agreement_with: a second prediction field: agreement mode instead of ground truth.
            ignore_index: ignored value (-1 for none).
            delegate: queue a delegated operation instead of running now.

        Returns:
            the run summary dict, or the delegated operation's ExecutionResult when ``delegate``.
        """
        params: dict[str, Any] = {
            "mode": AGREEMENT if agreement_with else GROUND_TRUTH,
            "pred_field": pred_field,
            "gt_field": gt_field,
            "other_field": agreement_with or "",
            "eval_key": eval_key,
            "compare_fields": list(compare_fields or []),
            "ignore_index": ignore_index,
        }
        return common.execute_from_sdk(self, sample_collection, params, delegate=delegate)


def _failure_inputs(ctx: Any, inputs: types.Object) -> None:
    fields = common.semantic_fields(ctx)
    default_pred = next((f for f in ("baseline", "coarse") if f in fields), None)
    common.add_existing_field_input(ctx, inputs, "pred_field", "Prediction field", fields, default_pred)
    common.add_existing_field_input(ctx, inputs, "gt_field", "Ground truth field", fields, "ground_truth")
    dets = common.detections_fields(ctx)
    if dets:
        common.add_choice_input(
            inputs,
            "instances_field",
            "Ground-truth instances (optional)",
            ["", *dets],
            "",
            description="Detections with masks; else objects are the connected regions of each class",
        )
    pred = ctx.params.get("pred_field") or default_pred or "pred"
    common.add_field_input(inputs, "label_field", "Output field", f"{pred}_failures", required=False)
    defaults = FailureThresholds()
    inputs.float("missing_below", label="Missing: coverage below", default=defaults.missing_below)
    inputs.float("complete_above", label="Incomplete: coverage below", default=defaults.complete_above)
    inputs.float("spill_above", label="Overlapping: spill above", default=defaults.spill_above)
    inputs.float(
        "span_min_share",
        label="Overlapping: one region holds this share of two objects",
        default=defaults.span_min_share,
    )
    inputs.int("min_object_area", label="Minimum object area (px)", default=defaults.min_object_area)
    inputs.str("skip_classes", label="Classes that are not objects (ids)", default="0", required=False)
    inputs.int("ignore_index", label="Ignore index", default=255, description="-1 for none")
    _qa_run_inputs(inputs)


class DetectFailures(common.StageOperator):
    """Per ground-truth object: missing, incomplete, overlapping or ok, as Detections with masks."""

    NAME = "detect_failures"
    LABEL = "detect failure modes"
    DESCRIPTION = "Missing, incomplete and overlapping objects per sample"

    def build_form(self, ctx: Any, inputs: types.Object) -> None:
        _failure_inputs(ctx, inputs)

    def execute(self, ctx: Any) -> dict[str, Any]:
        params = ctx.params
        defaults = FailureThresholds()
        thresholds = FailureThresholds(
            missing_below=float(params.get("missing_below", defaults.missing_below)),
            complete_above=float(params.get("complete_above", defaults.complete_above)),
            spill_above=float(params.get("spill_above", defaults.spill_above)),
            span_min_share=float(params.get("span_min_share", defaults.span_min_share)),
            min_object_area=int(params.get("min_object_area", defaults.min_object_area)),
        )
        skip = [int(c) for c in str(params.get("skip_classes") or "").replace(" ", "").split(",") if c]
        summary = detect_failures(
            common.target_view(ctx),
            params["pred_field"],
            params.get("gt_field") or None,
            instances_field=params.get("instances_field") or None,
            label_field=params.get("label_field") or None,
            thresholds=thresholds,
            ignore_index=_ignore_index(params),
            skip_classes=skip,
            **_qa_run_kwargs(ctx),
        )
        return common.finish(ctx, summary)

    def __call__(
        self,
        sample_collection: Any,
        pred_field: str,
        gt_field: str = "ground_truth",
        instances_field: str | None = None,
        label_field: str | None = None,
        delegate: bool = False,
    ) -> Any:
        """Detects failure modes from Python through the operator.

        Args:
            sample_collection: a dataset or view.
            pred_field: the ``fo.Segmentation`` prediction.
            gt_field: the ground-truth ``fo.Segmentation``.
            instances_field: optional ground-truth ``fo.Detections`` with masks.
            label_field: output field (default ``<pred_field>_failures``).
            delegate: queue a delegated operation instead of running now.

        Returns:
            the run summary dict, or the delegated operation's ExecutionResult when ``delegate``.
        """
        params = {
            "pred_field": pred_field,
            "gt_field": gt_field,
            "instances_field": instances_field or "",
            "label_field": label_field or "",
        }
        return common.execute_from_sdk(self, sample_collection, params, delegate=delegate)


OPERATORS = [EvaluateIoU, DetectFailures]

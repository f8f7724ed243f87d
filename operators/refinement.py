"""Operators: SAM refinement of a semantic field (``refine_with_sam``) and the prompt study."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import fiftyone.operators.types as types

from samseg_core.prompts import PROMPT_TYPES
from samseg_core.refine import DEFAULT_GATE
from samseg_core.stages.refinement import DEFAULT_SAM, STUDY_CONFIGS, prompt_study, refine_with_sam

from . import common

PROMPT_LABELS = {
    "point": "Single point (centroid of the largest region)",
    "points": "Multiple points (one per connected region)",
    "box": "Tight box",
    "loose_box": "Loose box (margin below)",
    "extreme_points": "Extreme points (top, bottom, left, right)",
    "mask": "Mask prompt (the baseline mask)",
}
DEFAULT_PROMPTS = ("points", "box")


def _prompt_inputs(ctx: Any, inputs: types.Object) -> None:
    inputs.view("prompts_header", types.Header(label="Prompts from each baseline class", divider=True))
    for kind in PROMPT_TYPES:
        inputs.bool(
            f"prompt_{kind}",
            label=PROMPT_LABELS[kind],
            default=kind in DEFAULT_PROMPTS,
            view=types.CheckboxView(),
        )
    chosen = _chosen_prompts(ctx.params)
    if {"box", "loose_box"} <= set(chosen):
        inputs.view(
            "box_conflict", types.Warning(label="SAM takes one box: choose the tight or the loose box")
        )
    if not chosen:
        inputs.view("no_prompt", types.Warning(label="Choose at least one prompt type"))
    if "loose_box" in chosen:
        inputs.float(
            "loose_margin",
            label="Loose-box margin",
            default=0.2,
            description="Each side moves out by this fraction of the box's width/height",
        )


def _refinement_inputs(ctx: Any, inputs: types.Object) -> None:
    common.add_choice_input(
        inputs,
        "granularity",
        "Granularity",
        ["class", "region"],
        "class",
        description="class: one prompt set per class (the study); region: one per connected region",
    )
    common.add_choice_input(
        inputs,
        "selection",
        "Candidate selection",
        ["baseline_iou", "predicted_iou"],
        "baseline_iou",
        description="baseline_iou: candidate closest to the baseline (the study); predicted_iou: SAM's score",
    )
    inputs.float(
        "gate",
        label="No-harm gate (minimum IoU with the baseline region)",
        default=DEFAULT_GATE,
        description="Candidates below it leave the baseline untouched; 0 reproduces the study",
    )
    common.add_choice_input(
        inputs,
        "fill",
        "Pixels no accepted mask claims",
        ["baseline", "background"],
        "baseline",
        description="baseline: keep the baseline class (safe); background: the study's empty start map",
    )


def _chosen_prompts(params: dict[str, Any]) -> list[str]:
    return [kind for kind in PROMPT_TYPES if params.get(f"prompt_{kind}", kind in DEFAULT_PROMPTS)]


def _prompt_params(prompts: Sequence[str]) -> dict[str, bool]:
    return {f"prompt_{kind}": kind in prompts for kind in PROMPT_TYPES}


class RefineWithSam(common.StageOperator):
    """Refines a semantic segmentation field with SAM prompted by its own classes (with a no-harm gate)."""

    NAME = "refine_with_sam"
    LABEL = "refine with SAM"
    DESCRIPTION = "Refine a semantic segmentation with SAM prompts from its classes"

    def build_form(self, ctx: Any, inputs: types.Object) -> None:
        common.add_existing_field_input(
            ctx, inputs, "semantic_field", "Segmentation to refine", common.semantic_fields(ctx), "baseline"
        )
        common.add_field_input(inputs, "label_field", "Output field", "sam_refined")
        _prompt_inputs(ctx, inputs)
        _refinement_inputs(ctx, inputs)
        common.add_sam_inputs(inputs, default=DEFAULT_SAM)
        inputs.str(
            "instances_field",
            label="Accepted regions as detections (optional field)",
            default="",
            required=False,
            description="fo.Detections with predicted_iou, stability_score, baseline_iou",
        )
        common.add_run_inputs(inputs)

    def execute(self, ctx: Any) -> dict[str, Any]:
        params = ctx.params
        summary = refine_with_sam(
            common.target_view(ctx),
            semantic_field=params.get("semantic_field") or "baseline",
            label_field=params.get("label_field") or "sam_refined",
            prompts=_chosen_prompts(params),
            granularity=params.get("granularity") or "class",
            selection=params.get("selection") or "baseline_iou",
            gate=float(params.get("gate", DEFAULT_GATE)),
            fill=params.get("fill") or "baseline",
            loose_margin=float(params.get("loose_margin", 0.2)),
            instances_field=params.get("instances_field") or None,
            **common.sam_kwargs(params, default=DEFAULT_SAM),
            **common.run_kwargs(ctx),
        )
        return common.finish(ctx, summary)

    def __call__(
        self,
        sample_collection: Any,
        semantic_field: str = "baseline",
        label_field: str = "sam_refined",
        sam: str = DEFAULT_SAM,
        sam_checkpoint: str | None = None,
        prompts: Sequence[str] = DEFAULT_PROMPTS,
        granularity: str = "class",
        selection: str = "baseline_iou",
        gate: float = DEFAULT_GATE,
        fill: str = "baseline",
        loose_margin: float = 0.2,
        instances_field: str | None = None,
        batch_size: int = 4,
        device: str | None = None,
        skip_existing: bool = False,
        overwrite: bool = False,
        delegate: bool = False,
    ) -> Any:
        """Refines ``semantic_field`` of ``sample_collection`` with SAM from Python.

        Args:
            sample_collection: a dataset or view.
            semantic_field: the ``fo.Segmentation`` to refine.
            label_field: output ``fo.Segmentation`` field.
            sam: SAM type, checkpoint path or ``module:function`` spec.
            sam_checkpoint: explicit checkpoint file.
            prompts: prompt types: ``point``, ``points``, ``box``, ``loose_box``, ``extreme_points``,
                ``mask``.
            granularity: ``class`` or ``region``.
            selection: ``baseline_iou`` or ``predicted_iou``.
            gate: no-harm gate threshold (0 = the study).
            fill: ``baseline`` or ``background``.
            loose_margin: loose-box margin per side, as a fraction of the box size.
            instances_field: optional ``fo.Detections`` field of accepted regions.
            batch_size: images per batch.
            device: ``cuda``, ``cuda:N`` or ``cpu`` (default: auto).
            skip_existing: only process samples without ``label_field``.
            overwrite: replace existing values.
            delegate: queue a delegated operation instead of running now.

        Returns:
            the run summary dict, or the delegated operation's ExecutionResult when ``delegate``.
        """
        params = dict(
            semantic_field=semantic_field,
            label_field=label_field,
            sam=sam,
            sam_checkpoint=sam_checkpoint or "",
            granularity=granularity,
            selection=selection,
            gate=gate,
            fill=fill,
            loose_margin=loose_margin,
            instances_field=instances_field or "",
            batch_size=batch_size,
            device=device or "",
            skip_existing=skip_existing,
            overwrite=overwrite,
            **_prompt_params(prompts),
        )
        return common.execute_from_sdk(self, sample_collection, params, delegate=delegate)


def _chosen_configs(params: dict[str, Any]) -> list[str]:
    return [name for name in STUDY_CONFIGS if params.get(f"config_{name}", True)]


def _config_params(configs: Sequence[str] | None) -> dict[str, bool]:
    chosen = set(STUDY_CONFIGS if configs is None else configs)
    unknown = chosen - set(STUDY_CONFIGS)
    if unknown:
        raise ValueError(
            f"unknown study configuration(s) {sorted(unknown)}; valid: {', '.join(STUDY_CONFIGS)}"
        )
    return {f"config_{name}": name in chosen for name in STUDY_CONFIGS}


def _study_outputs() -> types.Property:
    outputs = types.Object()
    outputs.str("table", label="Prompt study (mIoU in %)", view=types.MarkdownView())
    outputs.int("num_images", label="Images scored")
    outputs.obj("rows", label="Rows", view=types.JSONView())
    return types.Property(outputs, view=types.View(label="samseg prompt study"))


class PromptStudy(common.StageOperator):
    """Runs the workshop study's prompt configurations (Table 2) on a view and compares their mIoU."""

    NAME = "prompt_study"
    LABEL = "prompt study"
    DESCRIPTION = "Compare SAM prompt types against ground truth (the study's Table 2)"

    def build_form(self, ctx: Any, inputs: types.Object) -> None:
        fields = common.semantic_fields(ctx)
        common.add_existing_field_input(
            ctx, inputs, "semantic_field", "Baseline segmentation", fields, "baseline"
        )
        common.add_existing_field_input(ctx, inputs, "gt_field", "Ground truth", fields, "ground_truth")
        common.add_field_input(inputs, "field_prefix", "Output field prefix", "study_")
        inputs.view("configs_header", types.Header(label="Configurations", divider=True))
        for name, cfg in STUDY_CONFIGS.items():
            gate, fill = cfg.get("gate", DEFAULT_GATE), cfg.get("fill", "baseline")
            inputs.bool(
                f"config_{name}",
                label=f"{name}: {' + '.join(cfg['prompts'])} (gate {gate}, fill {fill})",
                default=True,
                view=types.CheckboxView(),
            )
        if not _chosen_configs(ctx.params):
            inputs.view("no_config", types.Warning(label="Choose at least one configuration"))
        common.add_sam_inputs(inputs, default=DEFAULT_SAM)
        common.add_run_inputs(inputs)

    def execute(self, ctx: Any) -> dict[str, Any]:
        params = ctx.params
        table = prompt_study(
            common.target_view(ctx),
            configs={name: STUDY_CONFIGS[name] for name in _chosen_configs(params)},
            semantic_field=params.get("semantic_field") or "baseline",
            gt_field=params.get("gt_field") or "ground_truth",
            field_prefix=params.get("field_prefix") or "study_",
            **common.sam_kwargs(params, default=DEFAULT_SAM),
            **common.run_kwargs(ctx),
        )
        if not ctx.delegated:
            ctx.trigger("reload_dataset")
        result = table.to_dict()
        result["table"] = f"```\n{table.format_table()}\n```"
        return result

    def resolve_output(self, ctx: Any) -> types.Property:
        return _study_outputs()

    def __call__(
        self,
        sample_collection: Any,
        configs: Sequence[str] | None = None,
        semantic_field: str = "baseline",
        gt_field: str = "ground_truth",
        sam: str = DEFAULT_SAM,
        sam_checkpoint: str | None = None,
        field_prefix: str = "study_",
        batch_size: int = 4,
        device: str | None = None,
        skip_existing: bool = False,
        overwrite: bool = False,
        delegate: bool = False,
    ) -> Any:
        """Runs the prompt study on ``sample_collection`` from Python.

        Args:
            sample_collection: a dataset or view with ``semantic_field`` and ``gt_field``.
            configs: names of :data:`STUDY_CONFIGS` to run (default: all).
            semantic_field: the baseline ``fo.Segmentation``.
            gt_field: the ground-truth ``fo.Segmentation``.
            sam: SAM type, checkpoint path or ``module:function`` spec.
            sam_checkpoint: explicit checkpoint file.
            field_prefix: output fields are ``<field_prefix><config>``.
            batch_size: images per batch.
            device: ``cuda``, ``cuda:N`` or ``cpu`` (default: auto).
            skip_existing: only process samples without the first configuration's field.
            overwrite: replace existing values.
            delegate: queue a delegated operation instead of running now.

        Returns:
            the study's dict (``rows``, ``num_images``, ``table`` text), or the delegated operation's
            ExecutionResult when ``delegate``.
        """
        params = dict(
            semantic_field=semantic_field,
            gt_field=gt_field,
            sam=sam,
            sam_checkpoint=sam_checkpoint or "",
            field_prefix=field_prefix,
            batch_size=batch_size,
            device=device or "",
            skip_existing=skip_existing,
            overwrite=overwrite,
            **_config_params(configs),
        )
        return common.execute_from_sdk(self, sample_collection, params, delegate=delegate)


OPERATORS = [RefineWithSam, PromptStudy]

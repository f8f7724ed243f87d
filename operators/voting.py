"""Operator: semantic voting (SSA) of SAM's masks, stored masks or superpixels over a baseline segmentation."""

from __future__ import annotations

from typing import Any

import fiftyone.operators.types as types

from samseg_core.mask_sources import SUPERPIXEL_METHODS
from samseg_core.stages.voting import semantic_voting
from samseg_core.voting import VOTING_MODES

from . import common


def _mask_source_choices(ctx: Any) -> list[str]:
    return ["sam", *SUPERPIXEL_METHODS, *(f"field:{name}" for name in common.detections_fields(ctx))]


def _voting_inputs(ctx: Any, inputs: types.Object) -> None:
    common.add_existing_field_input(
        ctx, inputs, "semantic_field", "Baseline segmentation field", common.semantic_fields(ctx), "baseline"
    )
    common.add_choice_input(
        inputs, "masks", "Mask source", _mask_source_choices(ctx), "sam",
        description="SAM's automatic masks, weight-free superpixels, or masks stored in a Detections field",
    )  # fmt: skip
    if ctx.params.get("masks", "sam") == "sam":
        common.add_amg_inputs(ctx, inputs)
    common.add_choice_input(
        inputs, "mode", "Voting mode", list(VOTING_MODES), "plurality",
        description="plurality: SSA; no_harm: a mask relabels only when its vote share reaches the threshold",
    )  # fmt: skip
    if ctx.params.get("mode") == "no_harm":
        inputs.float("min_vote_share", label="Min vote share", default=0.5)
    inputs.int("topk", label="Class proposals per mask", default=3)
    common.add_field_input(inputs, "label_field", "Output segmentation field", "ssa")
    common.add_field_input(
        inputs, "instances_field", "Output mask detections field (empty: none)", "ssa_masks", required=False
    )
    inputs.str("json_dir", label="Also write SSA JSON per image to (optional)", default="", required=False)
    inputs.str("mask_dir", label="Write segmentation PNGs to (optional)", default="", required=False)
    common.add_run_inputs(inputs, batch_size=1)


class SemanticVoting(common.StageOperator):
    """Gives each mask proposal the baseline's plurality class (SSA), writing a segmentation and mask detections."""

    NAME = "semantic_voting"
    LABEL = "semantic voting (SSA)"
    DESCRIPTION = "Label SAM's masks with a baseline's classes (SSA voting)"

    def build_form(self, ctx: Any, inputs: types.Object) -> None:
        _voting_inputs(ctx, inputs)

    def execute(self, ctx: Any) -> dict[str, Any]:
        params = ctx.params
        masks = params.get("masks") or "sam"
        sam_kwargs = common.amg_kwargs(params) if masks == "sam" else {}
        summary = semantic_voting(
            common.target_view(ctx),
            semantic_field=params.get("semantic_field") or "baseline",
            label_field=params.get("label_field") or "ssa",
            masks=masks,
            instances_field=params.get("instances_field") or None,
            mode=params.get("mode") or "plurality",
            min_vote_share=float(params.get("min_vote_share", 0.5)),
            topk=int(params.get("topk") or 3),
            json_dir=params.get("json_dir") or None,
            mask_dir=params.get("mask_dir") or None,
            **sam_kwargs,
            **common.run_kwargs(ctx),
        )
        return common.finish(ctx, summary)

    def __call__(
        self,
        sample_collection: Any,
        semantic_field: str = "baseline",
        label_field: str = "ssa",
        masks: str = "sam",
        instances_field: str | None = "ssa_masks",
        sam: str = "vit_b",
        sam_checkpoint: str | None = None,
        preset: str | None = "ssa",
        mode: str = "plurality",
        min_vote_share: float = 0.5,
        topk: int = 3,
        json_dir: str | None = None,
        mask_dir: str | None = None,
        batch_size: int = 1,
        device: str | None = None,
        skip_existing: bool = False,
        overwrite: bool = False,
        delegate: bool = False,
        **amg_overrides: Any,
    ) -> Any:
        """Runs semantic voting on ``sample_collection`` from Python.

        Args:
            sample_collection: a dataset or view.
            semantic_field: baseline ``fo.Segmentation`` field.
            label_field: output ``fo.Segmentation`` field.
            masks: ``"sam"``, ``"felzenszwalb"``, ``"slic"`` or ``"field:<Detections field>"``.
            instances_field: output ``fo.Detections`` field (None: not written).
            sam: SAM type, checkpoint path or ``module:function`` spec.
            sam_checkpoint: checkpoint file for a SAM type.
            preset: ``"ssa"``, ``"fast"`` or None (segment_anything's defaults).
            mode: ``"plurality"`` or ``"no_harm"``.
            min_vote_share: acceptance threshold of ``no_harm``.
            topk: class proposals per mask.
            json_dir: also write SSA JSON per image there.
            mask_dir: write PNG masks there instead of into the database.
            batch_size: samples per batch.
            device: ``cuda``, ``cuda:N`` or ``cpu`` (default: auto).
            skip_existing: only process samples without ``label_field``.
            overwrite: replace existing values.
            delegate: queue a delegated operation instead of running now.
            **amg_overrides: generator settings shown in the form (``points_per_side``, ``pred_iou_thresh``,
                ``stability_score_thresh``, ``crop_n_layers``, ``min_mask_region_area``, ...).

        Returns:
            the run summary dict, or the delegated operation's ExecutionResult when ``delegate``.
        """
        unknown = sorted(set(amg_overrides) - set(common.AMG_FORM_SETTINGS))
        if unknown:
            raise TypeError(
                f"unknown settings {unknown}; the operator takes {sorted(common.AMG_FORM_SETTINGS)}"
            )
        params = dict(
            semantic_field=semantic_field,
            label_field=label_field,
            masks=masks,
            instances_field=instances_field or "",
            sam=sam,
            sam_checkpoint=sam_checkpoint or "",
            preset=preset or common.NO_AMG_PRESET,
            mode=mode,
            min_vote_share=min_vote_share,
            topk=topk,
            json_dir=json_dir or "",
            mask_dir=mask_dir or "",
            batch_size=batch_size,
            device=device or "",
            skip_existing=skip_existing,
            overwrite=overwrite,
            **amg_overrides,
        )
        return common.execute_from_sdk(self, sample_collection, params, delegate=delegate)


OPERATORS = [SemanticVoting]

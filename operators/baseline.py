"""Operator: run a baseline semantic segmenter on the target view."""

from __future__ import annotations

from typing import Any

import fiftyone.operators.types as types

from samseg_core.stages.baseline import DEFAULT_SEMANTIC_MODEL, run_baseline

from . import common


def _baseline_inputs(ctx: Any, inputs: types.Object) -> None:
    inputs.str(
        "model",
        label="Semantic segmenter",
        default=DEFAULT_SEMANTIC_MODEL,
        required=True,
        description="Hugging Face id or local directory (SegFormer, UperNet, DPT, OneFormer, Mask2Former, ...)",
    )
    common.add_field_input(inputs, "label_field", "Label field", "baseline")
    inputs.str("confidence_field", label="Confidence heatmap field (optional)", default="", required=False)
    inputs.str(
        "mask_dir",
        label="Write masks as PNGs to (optional)",
        default="",
        required=False,
        description="Recommended for large datasets: keeps masks out of the database",
    )
    common.add_run_inputs(inputs)


class RunBaseline(common.StageOperator):
    """Runs a transformers semantic segmenter and stores ``fo.Segmentation`` labels with mask targets."""

    NAME = "run_baseline"
    LABEL = "run baseline segmentation"
    DESCRIPTION = "Semantic segmentation with a transformers model"

    def build_form(self, ctx: Any, inputs: types.Object) -> None:
        _baseline_inputs(ctx, inputs)

    def execute(self, ctx: Any) -> dict[str, Any]:
        params = ctx.params
        summary = run_baseline(
            common.target_view(ctx),
            model=params["model"],
            label_field=params.get("label_field") or "baseline",
            confidence_field=params.get("confidence_field") or None,
            mask_dir=params.get("mask_dir") or None,
            **common.run_kwargs(ctx),
        )
        return common.finish(ctx, summary)

    def __call__(
        self,
        sample_collection: Any,
        model: str = DEFAULT_SEMANTIC_MODEL,
        label_field: str = "baseline",
        confidence_field: str | None = None,
        mask_dir: str | None = None,
        batch_size: int = 4,
        device: str | None = None,
        skip_existing: bool = False,
        overwrite: bool = False,
        delegate: bool = False,
    ) -> Any:
        """Runs the baseline on ``sample_collection`` from Python.

        Args:
            sample_collection: a dataset or view.
            model: a hub id, local directory or ``module:function`` spec.
            label_field: output ``fo.Segmentation`` field.
            confidence_field: optional ``fo.Heatmap`` field of max class probability.
            mask_dir: write PNG masks there instead of into the database.
            batch_size: images per forward pass.
            device: ``cuda``, ``cuda:N`` or ``cpu`` (default: auto).
            skip_existing: only process samples without ``label_field``.
            overwrite: replace existing values.
            delegate: queue a delegated operation instead of running now.

        Returns:
            the run summary dict, or the delegated operation's ExecutionResult when ``delegate``.
        """
        params = dict(
            model=model,
            label_field=label_field,
            confidence_field=confidence_field or "",
            mask_dir=mask_dir or "",
            batch_size=batch_size,
            device=device or "",
            skip_existing=skip_existing,
            overwrite=overwrite,
        )
        return common.execute_from_sdk(self, sample_collection, params, delegate=delegate)


OPERATORS = [RunBaseline]

"""Form building and parameter parsing shared by every samseg operator (no algorithm lives here)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import fiftyone.operators as foo
import fiftyone.operators.types as types

#: Views larger than this are delegated by default (long runs must not hit FIFTYONE_OPERATOR_TIMEOUT).
DELEGATE_ABOVE_SAMPLES = 25


def stage_config(name: str, label: str, description: str, *, dynamic: bool = True) -> foo.OperatorConfig:
    """Returns the config every samseg stage operator uses: immediate or delegated, delegated by default."""
    return foo.OperatorConfig(
        name=name,
        label=f"samseg: {label}",
        description=description,
        dynamic=dynamic,
        allow_immediate_execution=True,
        allow_delegated_execution=True,
        default_choice_to_delegated=True,
        icon="/assets/icon.svg",
    )


class StageOperator(foo.Operator):
    """Base of samseg's stage operators: immediate or delegated (by default for large views), a form with the
    target-view selector plus the inputs :meth:`build_form` adds, and the run summary as output.

    Subclasses set ``NAME``, ``LABEL`` and ``DESCRIPTION`` and implement ``build_form`` and ``execute``.
    """

    NAME = ""
    LABEL = ""
    DESCRIPTION = ""

    @property
    def config(self) -> foo.OperatorConfig:
        return stage_config(self.NAME, self.LABEL, self.DESCRIPTION)

    def build_form(self, ctx: Any, inputs: types.Object) -> None:
        """Adds this stage's inputs to ``inputs``."""
        raise NotImplementedError

    def resolve_input(self, ctx: Any) -> types.Property:
        inputs = types.Object()
        target_view(ctx)  # opts the form into FiftyOne's target-view selector
        self.build_form(ctx, inputs)
        return types.Property(inputs, view=types.View(label=f"samseg: {self.LABEL}"))

    def resolve_delegation(self, ctx: Any) -> bool | None:
        return resolve_delegation(ctx)

    def resolve_output(self, ctx: Any) -> types.Property:
        return summary_outputs()


def target_view(ctx: Any) -> Any:
    """Returns the collection the user targeted (dataset, current view or selected samples)."""
    return ctx.target_view()


def resolve_delegation(ctx: Any) -> bool | None:
    """Delegates when asked to, and by default when the target view is large."""
    delegate = ctx.params.get("delegate")
    if delegate is not None:
        return bool(delegate)
    try:
        large = len(target_view(ctx)) > DELEGATE_ABOVE_SAMPLES
    except Exception:  # no dataset in context yet: let the user's choice stand
        return None
    # small views: None lets the request (App choice or request_delegation) decide
    return True if large else None


def add_field_input(
    inputs: types.Object, name: str, label: str, default: str, description: str = "", required: bool = True
) -> None:
    """Adds a text input naming a sample field."""
    inputs.str(name, label=label, default=default, description=description, required=required)


def add_choice_input(
    inputs: types.Object, name: str, label: str, choices: list[str], default: str, description: str = ""
) -> None:
    """Adds a dropdown of string choices."""
    dropdown = types.Dropdown(label=label)
    for choice in choices:
        dropdown.add_choice(choice, label=choice)
    inputs.enum(name, dropdown.values(), default=default, label=label, description=description, view=dropdown)


def semantic_fields(ctx: Any) -> list[str]:
    """Returns the dataset's ``fo.Segmentation`` fields (choices for a semantic input)."""
    import fiftyone as fo

    schema = ctx.dataset.get_field_schema(embedded_doc_type=fo.Segmentation) if ctx.dataset else {}
    return sorted(schema)


def detections_fields(ctx: Any) -> list[str]:
    """Returns the dataset's ``fo.Detections`` fields."""
    import fiftyone as fo

    schema = ctx.dataset.get_field_schema(embedded_doc_type=fo.Detections) if ctx.dataset else {}
    return sorted(schema)


def add_existing_field_input(
    ctx: Any, inputs: types.Object, name: str, label: str, choices: list[str], default: str | None, **kw: Any
) -> None:
    """Adds a dropdown over existing fields when there are any, else a free text input."""
    if choices:
        add_choice_input(inputs, name, label, choices, default if default in choices else choices[0], **kw)
    else:
        add_field_input(inputs, name, label, default or "", **kw)


def add_run_inputs(inputs: types.Object, *, batch_size: int = 4) -> None:
    """Adds the execution inputs every stage shares: device, batch size, workers, skip/overwrite policy."""
    inputs.str(
        "device", label="Device", default="", required=False, description="cuda, cuda:1 or cpu; empty = auto"
    )
    inputs.int("batch_size", label="Batch size", default=batch_size)
    inputs.int(
        "num_workers",
        label="Loader workers",
        default=0,
        description="Image decoding workers (delegated runs)",
    )
    inputs.bool(
        "skip_existing",
        label="Skip samples that already have results (resume)",
        default=True,
        view=types.CheckboxView(),
    )
    inputs.bool("overwrite", label="Overwrite existing results", default=False, view=types.CheckboxView())
    inputs.bool(
        "skip_failures",
        label="Record per-sample errors and continue",
        default=True,
        view=types.CheckboxView(),
    )


def run_kwargs(ctx: Any) -> dict[str, Any]:
    """Parses the shared execution inputs into SDK keyword arguments."""
    params = ctx.params
    overwrite = bool(params.get("overwrite", False))
    return {
        "device": params.get("device") or None,
        "batch_size": int(params.get("batch_size") or 4),
        # DataLoader workers only make sense in a delegated worker process, not inside the App's server
        "num_workers": int(params.get("num_workers") or 0) if ctx.delegated else 0,
        "skip_existing": bool(params.get("skip_existing", True)) and not overwrite,
        "overwrite": overwrite,
        "skip_failures": bool(params.get("skip_failures", True)),
        "progress": progress_callback(ctx),
    }


def progress_callback(ctx: Any) -> Callable[[float], None]:
    """Returns a callable that reports the fraction done to the App (or the delegated operation)."""

    def report(fraction: float) -> None:
        ctx.set_progress(progress=fraction, label=f"{fraction:.0%}")

    return report


def finish(ctx: Any, summary: Any) -> dict[str, Any]:
    """Reloads the App's dataset after an immediate run and returns the summary for the output view."""
    if not ctx.delegated:
        ctx.trigger("reload_dataset")
    return summary.to_dict()


def summary_outputs() -> types.Property:
    """Returns the output view that shows a RunSummary."""
    outputs = types.Object()
    for key in ("processed", "skipped", "failed"):
        outputs.int(key, label=key.capitalize())
    outputs.float("seconds", label="Seconds")
    outputs.obj("errors", label="Errors (sample id -> message)", view=types.JSONView())
    return types.Property(outputs, view=types.View(label="samseg run summary"))


def execute_from_sdk(
    operator: foo.Operator, sample_collection: Any, params: dict[str, Any], *, delegate: bool = False
) -> Any:
    """Runs ``operator`` on ``sample_collection`` through ``foo.execute_operator`` (the operators' ``__call__``).

    Returns the operator's result dict when run immediately, or the ExecutionResult of the queued
    delegated operation.
    """
    ctx = {"view": sample_collection.view(), "params": {**params, "delegate": delegate}}
    result = foo.execute_operator(operator.uri, ctx, request_delegation=delegate)
    return result if delegate else result.result


def add_sam_inputs(inputs: types.Object, *, default: str = "vit_b") -> None:
    """Adds the SAM model inputs shared by the SAM stages: type / path / ``module:function`` spec, checkpoint."""
    inputs.str(
        "sam",
        label="SAM model",
        default=default,
        required=True,
        description="vit_b, vit_l, vit_h, a checkpoint path, or a module:function spec",
    )
    inputs.str(
        "sam_checkpoint",
        label="SAM checkpoint (optional)",
        default="",
        required=False,
        description="Explicit .pth file; else $SAMSEG_SAM_CHECKPOINT, FiftyOne's model zoo, then download",
    )


def sam_kwargs(params: dict[str, Any], *, default: str = "vit_b") -> dict[str, Any]:
    """Parses :func:`add_sam_inputs` into the SDK's ``sam`` / ``sam_checkpoint`` keyword arguments."""
    return {"sam": params.get("sam") or default, "sam_checkpoint": params.get("sam_checkpoint") or None}


#: SAM automatic-mask-generator settings shown in forms (any other setting works from Python): label, type, default.
AMG_FORM_SETTINGS: dict[str, tuple[str, type, Any]] = {
    "points_per_side": ("Points per side", int, 32),
    "points_per_batch": ("Points per batch", int, 64),
    "pred_iou_thresh": ("Predicted IoU threshold", float, 0.88),
    "stability_score_thresh": ("Stability score threshold", float, 0.95),
    "crop_n_layers": ("Crop layers", int, 0),
    "crop_n_points_downscale_factor": ("Crop points downscale factor", int, 1),
    "min_mask_region_area": ("Min mask region area (px)", int, 0),
}
NO_AMG_PRESET = "none"


def add_amg_inputs(ctx: Any, inputs: types.Object, *, default_preset: str = "ssa") -> None:
    """Adds SAM model inputs plus the automatic mask generator's preset and main settings (preset values as
    defaults)."""
    from samseg_core.mask_sources import AMG_PRESETS

    add_sam_inputs(inputs)
    add_choice_input(
        inputs,
        "preset",
        "Generator preset",
        [*AMG_PRESETS, NO_AMG_PRESET],
        default_preset,
        description="ssa: SSA's settings (64 points, 1 crop layer); fast: 32 points, no crops",
    )
    values = AMG_PRESETS.get(ctx.params.get("preset", default_preset), {})
    for key, (label, kind, default) in AMG_FORM_SETTINGS.items():
        value = values.get(key, default)
        if kind is int:
            inputs.int(key, label=label, default=int(value), required=False)
        else:
            inputs.float(key, label=label, default=float(value), required=False)


def amg_kwargs(params: dict[str, Any], *, default_preset: str = "ssa") -> dict[str, Any]:
    """Parses :func:`add_amg_inputs` into ``sam``, ``sam_checkpoint``, ``preset`` (None for "none") and the
    generator settings the form set."""
    preset = params.get("preset", default_preset) or default_preset
    settings = {
        key: kind(params[key])
        for key, (_, kind, _) in AMG_FORM_SETTINGS.items()
        if params.get(key) not in (None, "")
    }
    return {**sam_kwargs(params), "preset": None if preset == NO_AMG_PRESET else preset, **settings}

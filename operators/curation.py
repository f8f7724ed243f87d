"""Operator: build (or update) a relabeling queue from an IoU evaluation and/or failure labels."""

from __future__ import annotations

from typing import Any

import fiftyone.operators as foo
import fiftyone.operators.types as types

from samseg_core.curation import build_relabel_queue
from samseg_core.failures import FAILURE_MODES
from samseg_core.stages.eval_runs import AGREEMENT, FAILURES, IOU, list_samseg_runs

from . import common


def _queue_inputs(ctx: Any, inputs: types.Object) -> None:
    evals = (
        (list_samseg_runs(ctx.dataset, IOU) + list_samseg_runs(ctx.dataset, AGREEMENT)) if ctx.dataset else []
    )
    failures = list_samseg_runs(ctx.dataset, FAILURES) if ctx.dataset else []
    common.add_choice_input(
        inputs,
        "eval_key",
        "Rank by evaluation",
        ["", *evals],
        evals[0] if evals else "",
        description="A samseg evaluate_iou run; its per-sample mIoU orders the queue (worst first)",
    )
    common.add_choice_input(
        inputs,
        "failures_field",
        "Failure labels",
        ["", *failures],
        failures[0] if failures else "",
        description="A detect_failures output: samples with failures of the chosen modes are queued",
    )
    modes = types.Dropdown(label="Failure modes", multiple=True)
    for mode in FAILURE_MODES:
        modes.add_choice(mode, label=mode)
    inputs.list("modes", types.String(), default=list(FAILURE_MODES), label="Failure modes", view=modes)
    common.add_field_input(
        inputs,
        "name",
        "Queue name",
        "relabel",
        required=False,
        description="Sample/label tag and saved view names (name, name-<mode>)",
    )
    inputs.float("miou_below", label="Queue samples with mIoU below (optional)", required=False)
    inputs.int("max_samples", label="At most this many samples (optional)", required=False)
    inputs.bool(
        "overwrite",
        label="Take over an existing tag/view of this name",
        default=False,
        view=types.CheckboxView(),
    )
    inputs.bool("annotate", label="Send to an annotation backend", default=False, view=types.CheckboxView())
    if ctx.params.get("annotate"):
        inputs.str(
            "backend",
            label="Annotation backend",
            default="cvat",
            required=True,
            description="cvat, labelstudio, ... (configured in your FiftyOne annotation config)",
        )
        inputs.str("anno_key", label="Annotation run key (optional)", default="", required=False)
        inputs.str(
            "label_field",
            label="Field to correct (default: the evaluation's ground truth)",
            default="",
            required=False,
        )


class BuildRelabelQueue(foo.Operator):
    """Tags the worst samples and their failure labels and saves views (optionally sends them to annotators)."""

    @property
    def config(self) -> foo.OperatorConfig:
        return foo.OperatorConfig(
            name="build_relabel_queue",
            label="samseg: build relabel queue",
            description="Tag worst samples and failure labels, save views, optionally send to CVAT/Label Studio",
            dynamic=True,
            icon="/assets/icon.svg",
        )

    def resolve_input(self, ctx: Any) -> types.Property:
        inputs = types.Object()
        _queue_inputs(ctx, inputs)
        return types.Property(inputs, view=types.View(label="samseg: relabel queue"))

    def execute(self, ctx: Any) -> dict[str, Any]:
        params = ctx.params
        annotate: dict[str, Any] = {}
        if params.get("annotate"):
            annotate = {"backend": params.get("backend") or None, "anno_key": params.get("anno_key") or None}
            if params.get("label_field"):
                annotate["label_field"] = params["label_field"]
        queue = build_relabel_queue(
            common.target_view(ctx),
            eval_key=params.get("eval_key") or None,
            name=params.get("name") or "relabel",
            max_samples=params.get("max_samples"),
            miou_below=params.get("miou_below"),
            modes=params.get("modes") or FAILURE_MODES,
            failures_field=params.get("failures_field") or None,
            overwrite=bool(params.get("overwrite", False)),
            **annotate,
        )
        ctx.trigger("reload_dataset")
        return queue.to_dict()

    def resolve_output(self, ctx: Any) -> types.Property:
        outputs = types.Object()
        outputs.int("samples", label="Samples in the queue")
        outputs.int("added", label="Added")
        outputs.int("removed", label="Removed")
        outputs.int("tagged_labels", label="Failure labels tagged")
        outputs.list("views", types.String(), label="Saved views")
        return types.Property(outputs, view=types.View(label="samseg relabel queue"))

    def __call__(
        self,
        sample_collection: Any,
        eval_key: str | None = "samseg_iou",
        name: str = "relabel",
        failures_field: str | None = None,
        max_samples: int | None = None,
        miou_below: float | None = None,
        overwrite: bool = False,
    ) -> Any:
        """Builds the queue from Python through the operator.

        Args:
            sample_collection: a dataset or view.
            eval_key: the samseg IoU run that ranks the queue.
            name: queue name (tags and saved views).
            failures_field: a detect_failures output field.
            max_samples: at most this many samples.
            miou_below: queue samples whose mIoU is below this.
            overwrite: take over an existing tag/view of this name.

        Returns:
            the queue summary dict.
        """
        params = {
            "eval_key": eval_key or "",
            "name": name,
            "failures_field": failures_field or "",
            "max_samples": max_samples,
            "miou_below": miou_below,
            "overwrite": overwrite,
        }
        return common.execute_from_sdk(self, sample_collection, params)


OPERATORS = [BuildRelabelQueue]

"""Baseline semantic segmentation of a sample collection with a transformers segmenter."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from samseg_core.models.resolve import SEMANTIC, resolve_model
from samseg_core.runner import RunSummary, SampleItem, StageResult, run_stage
from samseg_core.stages.options import (
    HEATMAP,
    SEGMENTATION,
    StageOptions,
    mask_dir_option,
    option,
    output_field,
)
from samseg_core.stages.plan import StagePlan
from samseg_core.stages.registry import StageSpec, stage

DEFAULT_SEMANTIC_MODEL = "nvidia/segformer-b0-finetuned-ade-512-512"


@dataclass(frozen=True)
class BaselineOptions(StageOptions):
    """Options of :func:`run_baseline`."""

    model: Any = option(
        DEFAULT_SEMANTIC_MODEL,
        "Hugging Face id or local directory (SegFormer, UperNet, DPT, OneFormer, Mask2Former), a "
        "module:function spec, or a built model",
        label="Semantic segmenter",
    )
    label_field: str = output_field(
        "baseline", SEGMENTATION, "Output segmentation field; its mask targets get the model's classes",
        label="Output segmentation field",
    )  # fmt: skip
    confidence_field: str | None = output_field(
        None, HEATMAP, "Optional heatmap field of the per-pixel top class probability",
        label="Confidence heatmap field (optional)",
    )  # fmt: skip
    mask_dir: str | None = mask_dir_option()


BASELINE = StageSpec(
    name="run_baseline",
    label="run baseline segmentation",
    description="Semantic segmentation with a transformers model",
    options=BaselineOptions,
    batch_size=4,
    next_step="samseg: SAM refinement or samseg: semantic voting on this field, or samseg: evaluate IoU against your ground truth",
)


@stage(BASELINE)
def run_baseline(plan: StagePlan, options: BaselineOptions) -> RunSummary:
    """Runs a semantic segmenter on every sample and stores ``fo.Segmentation`` labels plus mask targets.

    ``dataset.mask_targets[label_field]`` gets the model's ``config.id2label``, merged entry by entry: existing
    entries are kept, and an id already named differently is refused unless ``overwrite=True``.

    Returns:
        a :class:`~samseg_core.runner.RunSummary`; ``extra["classes"]`` is the number of classes of the model.
    """
    import fiftyone as fo

    segmenter = resolve_model(SEMANTIC, options.model, device=plan.run.device, param="model")
    plan.add_mask_targets(options.label_field, segmenter.id2label)
    confidence_field = options.confidence_field

    def process(items: list[SampleItem]) -> list[StageResult]:
        predictions = segmenter.predict(
            [item.image for item in items], return_confidence=bool(confidence_field)
        )
        results: list[StageResult] = []
        for item, pred in zip(items, predictions):
            result: dict[str, Any] = {
                options.label_field: plan.segmentation(options.label_field, pred.labels, item.id),
            }
            if confidence_field:
                result[confidence_field] = fo.Heatmap(map=pred.confidence.astype("float32"), range=[0, 1])
            results.append(result)
        return results

    summary = run_stage(plan, process=process)
    summary.extra["classes"] = segmenter.num_classes
    return summary

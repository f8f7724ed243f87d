"""Baseline semantic segmentation of a sample collection with a transformers segmenter."""

from __future__ import annotations

import os
from typing import Any

from samseg_core.labels import merge_mask_targets, segmentation_from_array
from samseg_core.models.factory import build_from_spec, is_factory_spec
from samseg_core.models.semantic import SemanticSegmenter, load_semantic_model
from samseg_core.runner import ProgressArg, RunSummary, SampleItem, StageResult, run_stage

DEFAULT_SEMANTIC_MODEL = "nvidia/segformer-b0-finetuned-ade-512-512"


def resolve_segmenter(model: Any, *, device: str | None = None) -> SemanticSegmenter:
    """Returns a :class:`SemanticSegmenter` from a hub id, local dir, ``module:function`` spec or model object."""
    if is_factory_spec(model):
        model = build_from_spec(model)
    return load_semantic_model(model, device=device)


def run_baseline(
    samples: Any,
    model: Any = DEFAULT_SEMANTIC_MODEL,
    label_field: str = "baseline",
    *,
    confidence_field: str | None = None,
    mask_dir: str | os.PathLike | None = None,
    batch_size: int = 4,
    num_workers: int = 0,
    device: str | None = None,
    skip_existing: bool = False,
    skip_failures: bool = True,
    overwrite: bool = False,
    progress: ProgressArg = None,
) -> RunSummary:
    """Runs a semantic segmenter on every sample and stores ``fo.Segmentation`` labels plus mask targets.

    Args:
        samples: a FiftyOne dataset or view.
        model: a hub id, a local directory saved with ``save_pretrained``, a ``"module:function"`` factory
            spec, or a built model / :class:`SemanticSegmenter`.
        label_field: where the segmentation goes; ``dataset.mask_targets[label_field]`` gets the model's
            ``config.id2label`` (merged: existing entries are kept, a renamed id raises unless ``overwrite``).
        confidence_field: optional ``fo.Heatmap`` field with the per-pixel max class probability.
        mask_dir: write masks as PNGs there instead of into the database (large datasets).
        batch_size: images per forward pass.
        num_workers: image-decoding workers.
        device: ``"cuda"``, ``"cuda:1"``, ``"cpu"``; default CUDA when available (bf16 autocast there).
        skip_existing: skip samples that already have ``label_field`` (resume).
        skip_failures: record per-sample errors in ``<label_field>_error`` and continue.
        overwrite: replace existing values and conflicting mask targets.
        progress: True to print progress, or a callable taking the fraction done.

    Returns:
        a :class:`RunSummary`; ``extra["classes"]`` is the number of classes of the model.
    """
    import fiftyone as fo

    segmenter = resolve_segmenter(model, device=device)
    merge_mask_targets(samples, label_field, segmenter.id2label, overwrite=overwrite)
    outputs = [label_field] + ([confidence_field] if confidence_field else [])

    def process(items: list[SampleItem]) -> list[StageResult]:
        predictions = segmenter.predict(
            [item.image for item in items], return_confidence=bool(confidence_field)
        )
        results: list[StageResult] = []
        for item, pred in zip(items, predictions):
            result: dict[str, Any] = {
                label_field: segmentation_from_array(pred.labels, mask_dir=mask_dir, name=item.id)
            }
            if confidence_field:
                result[confidence_field] = fo.Heatmap(map=pred.confidence.astype("float32"), range=[0, 1])
            results.append(result)
        return results

    summary = run_stage(
        samples,
        stage="baseline",
        output_fields=outputs,
        process=process,
        batch_size=batch_size,
        num_workers=num_workers,
        skip_existing=skip_existing,
        overwrite=overwrite,
        skip_failures=skip_failures,
        progress=progress,
    )
    summary.extra["classes"] = segmenter.num_classes
    return summary

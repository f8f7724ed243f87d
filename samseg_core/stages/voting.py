"""Semantic voting (SSA) over a sample collection: SAM's masks (or stored masks, or superpixels) take classes
from a baseline segmentation; writes ``fo.Segmentation`` + one ``fo.Detection`` per mask."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import numpy as np

from samseg_core.labels import (
    detections_from_masks,
    mask_targets_of,
    merge_mask_targets,
    read_segmentation,
    segmentation_from_array,
)
from samseg_core.mask_sources import DetectionsSource, MaskSource, resolve_mask_source
from samseg_core.masks import resize_mask_nearest
from samseg_core.runner import ProgressArg, RunSummary, SampleItem, StageResult, check_writable, run_stage
from samseg_core.ssa_format import write_ssa_json
from samseg_core.voting import VotingResult, check_voting_options, vote_masks


def _check_detections_field(samples: Any, field: str) -> None:
    import fiftyone as fo

    schema_field = samples.get_field(field)
    if schema_field is None:
        raise ValueError(
            f"mask source '{field}' is neither 'sam', 'superpixels', 'felzenszwalb', 'slic' nor a field of "
            "this collection; name a Detections field holding instance masks (e.g. 'field:sa1b')"
        )
    if getattr(schema_field, "document_type", None) is not fo.Detections:
        raise ValueError(f"mask source field '{field}' is not a Detections field")


def _confidence_map(label: Any, shape: tuple[int, int]) -> np.ndarray | None:
    """A stored ``fo.Heatmap`` as confidences in [0, 1] at image size (None when absent)."""
    if label is None:
        return None
    values = label.get_map() if hasattr(label, "get_map") else None
    if values is None:
        return None
    values = np.asarray(values, np.float64)
    low, high = label.range or ((0.0, 1.0) if np.issubdtype(values.dtype, np.floating) else (0.0, 255.0))
    values = (values - low) / max(high - low, 1e-12)
    return resize_mask_nearest(values, shape) if values.shape != shape else values


def _nan_to_none(values: np.ndarray) -> list[float | None]:
    return [None if np.isnan(v) else float(v) for v in np.asarray(values, np.float64)]


def _instance_attributes(
    result: VotingResult, proposals: Any, names: Mapping[int, str]
) -> dict[str, list[Any]]:
    """Per-mask attributes of the ``fo.Detection`` objects (FiftyOne-storable plain values)."""
    proposals_names = [[names.get(int(c), str(c)) for c in row if c >= 0] for row in result.topk_classes]
    shares = [
        [float(s) for s, c in zip(srow, crow) if c >= 0]
        for srow, crow in zip(result.topk_shares, result.topk_classes)
    ]
    return {
        "predicted_iou": _nan_to_none(proposals.predicted_iou),
        "stability_score": _nan_to_none(proposals.stability_score),
        "area": [int(a) for a in result.areas],
        "vote_share": _nan_to_none(result.vote_share),
        "class_proposals": proposals_names,
        "class_proposal_shares": shares,
        "accepted": [bool(a) for a in result.accepted],
    }


def semantic_voting(
    samples: Any,
    semantic_field: str = "baseline",
    label_field: str = "ssa",
    masks: str | MaskSource = "sam",
    instances_field: str | None = "ssa_masks",
    *,
    sam: Any = "vit_b",
    sam_checkpoint: str | None = None,
    preset: str | None = "ssa",
    semantic_model: Any = None,
    confidence_field: str | None = None,
    mode: str = "plurality",
    min_vote_share: float = 0.5,
    topk: int = 3,
    json_dir: str | os.PathLike | None = None,
    mask_dir: str | os.PathLike | None = None,
    cache: Any = None,
    batch_size: int = 1,
    num_workers: int = 0,
    device: str | None = None,
    skip_existing: bool = False,
    skip_failures: bool = True,
    overwrite: bool = False,
    progress: ProgressArg = None,
    **amg_overrides: Any,
) -> RunSummary:
    """Labels each mask proposal with the baseline's plurality class and paints the masks over the baseline.

    Args:
        samples: a FiftyOne dataset or view.
        semantic_field: the baseline ``fo.Segmentation`` field (ignored with ``semantic_model``); its mask targets
            name the classes.
        label_field: output ``fo.Segmentation`` (mask targets copied from the baseline, merged).
        masks: ``"sam"`` (automatic mask generator), ``"superpixels"`` / ``"felzenszwalb"`` / ``"slic"``
            (weight-free), ``"field:<name>"`` or the name of a ``Detections`` field with stored masks, or a
            :class:`~samseg_core.mask_sources.MaskSource`.
        instances_field: output ``fo.Detections``, one per non-empty mask: ``label`` its class, ``confidence`` its
            vote share, attributes ``predicted_iou``, ``stability_score``, ``area``, ``vote_share``,
            ``class_proposals`` (top-k names), ``class_proposal_shares``, ``accepted``. None: not written.
        sam: SAM for ``masks="sam"``: a type (``vit_b``/``vit_l``/``vit_h``), checkpoint path,
            ``"module:function"`` spec or ``Sam`` object.
        sam_checkpoint: checkpoint file for a SAM type (else ``$SAMSEG_SAM_CHECKPOINT``, the zoo dir, download).
        preset: generator settings: ``"ssa"`` (SSA's), ``"fast"``, or None (segment_anything's defaults).
        semantic_model: run this segmenter (hub id, local dir, ``module:function``, model) instead of reading
            ``semantic_field``; its probabilities then drive tie-breaks and ``no_harm`` soft voting.
        confidence_field: optional ``fo.Heatmap`` of baseline confidence (tie-breaks) for a stored baseline.
        mode: ``"plurality"`` (SSA) or ``"no_harm"`` (masks below ``min_vote_share`` keep the baseline).
        min_vote_share: acceptance threshold of ``no_harm``.
        topk: class proposals recorded per mask.
        json_dir: also write SSA / SA-1B JSON per image there (``<sample id>.json``).
        mask_dir: write the segmentations as PNGs there instead of into the database.
        cache: an :class:`~samseg_core.sam_embedding.EmbeddingCache` shared with other stages.
        batch_size: samples per batch (and per bulk write).
        num_workers: image-decoding workers.
        device: ``cuda``, ``cuda:N`` or ``cpu``; default CUDA when available.
        skip_existing: skip samples that already have ``label_field`` (resume).
        skip_failures: record per-sample errors in ``<label_field>_error`` and continue.
        overwrite: replace existing values.
        progress: True to print progress, or a callable taking the fraction done.
        **amg_overrides: ``SamAutomaticMaskGenerator`` settings (``points_per_side``, ``pred_iou_thresh``, ...)
            for ``masks="sam"``, or superpixel parameters.

    Returns:
        a :class:`RunSummary`; ``extra`` holds ``mask_source``, ``mode``, ``masks`` and ``accepted_masks``.
    """
    check_voting_options(mode, min_vote_share, topk)
    outputs = [label_field] + ([instances_field] if instances_field else [])
    check_writable(samples, outputs, skip_existing, overwrite)

    segmenter = None
    if semantic_model is not None:
        from samseg_core.stages.baseline import resolve_segmenter

        segmenter = resolve_segmenter(semantic_model, device=device)
        class_names = dict(segmenter.id2label)
        semantic_inputs: list[str] = []
    else:
        if samples.get_field(semantic_field) is None:
            raise ValueError(
                f"no field '{semantic_field}': run run_baseline first, name your Segmentation field, or pass "
                "semantic_model="
            )
        class_names = mask_targets_of(samples, semantic_field)
        semantic_inputs = [semantic_field] + ([confidence_field] if confidence_field else [])

    source = resolve_mask_source(
        masks,
        sam=sam,
        sam_checkpoint=sam_checkpoint,
        device=device,
        cache=cache,
        preset=preset,
        **amg_overrides,
    )
    if isinstance(source, DetectionsSource):
        _check_detections_field(samples, source.field)
        if source.field in outputs:
            raise ValueError(f"the mask source field '{source.field}' cannot also be an output field")
    if class_names:
        merge_mask_targets(samples, label_field, class_names, overwrite=overwrite)
    counts = {"masks": 0, "accepted_masks": 0}

    def baseline_of(item: SampleItem, prediction: Any) -> tuple[np.ndarray, Any, Any]:
        height, width = item.image.shape[:2]
        if prediction is not None:
            probs = prediction.probs_lowres.numpy() if prediction.probs_lowres is not None else None
            return prediction.labels, prediction.confidence, probs
        labels = read_segmentation(item.inputs.get(semantic_field))
        if labels is None:
            raise ValueError(f"sample has no '{semantic_field}' segmentation")
        if labels.shape != (height, width):
            labels = resize_mask_nearest(labels, (height, width))
        confidence = (
            _confidence_map(item.inputs.get(confidence_field), (height, width)) if confidence_field else None
        )
        return labels, confidence, None

    def process(items: list[SampleItem]) -> list[StageResult]:
        predictions: list[Any] = [None] * len(items)
        if segmenter is not None:
            predictions = segmenter.predict([item.image for item in items], return_confidence=True)
        results: list[StageResult] = []
        for item, prediction in zip(items, predictions):
            labels, confidence, probs = baseline_of(item, prediction)
            proposals = source.proposals(item)
            result = vote_masks(
                proposals.masks, labels, mode=mode, min_vote_share=min_vote_share, confidence=confidence,
                probabilities=probs, topk=topk,
            )  # fmt: skip
            names = [class_names.get(int(c), str(c)) if c >= 0 else "" for c in result.mask_classes]
            attributes = _instance_attributes(result, proposals, class_names)
            output: dict[str, Any] = {
                label_field: segmentation_from_array(result.semantic, mask_dir=mask_dir, name=item.id)
            }
            if instances_field:
                confidences = np.nan_to_num(result.vote_share, nan=0.0)
                output[instances_field] = detections_from_masks(
                    proposals.masks, names, confidences=confidences, attributes=attributes
                )
            if json_dir is not None:
                write_ssa_json(
                    os.path.join(os.fspath(json_dir), f"{item.id}.json"),
                    proposals,
                    image={"image_id": item.id, "file_name": os.path.basename(item.filepath)},
                    class_names=[n or None for n in names],
                    class_proposals=attributes["class_proposals"],
                )
            counts["masks"] += int((result.areas > 0).sum())
            counts["accepted_masks"] += int(result.accepted.sum())
            results.append(output)
        return results

    summary = run_stage(
        samples,
        stage="semantic_voting",
        output_fields=outputs,
        process=process,
        input_fields=[*semantic_inputs, *source.input_fields],
        batch_size=batch_size,
        num_workers=num_workers,
        skip_existing=skip_existing,
        overwrite=overwrite,
        skip_failures=skip_failures,
        progress=progress,
    )
    summary.extra.update({"mask_source": source.name, "mode": mode, **counts})
    return summary

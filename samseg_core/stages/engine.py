"""Open-vocabulary labels for masks on a FiftyOne collection (SSA-engine), batched across masks and images."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from samseg_core.engine import (
    MaskLabel,
    OpenVocabEngine,
    SemanticBranch,
    assign_class_ids,
    engine_preset,
    paint_class_map,
)
from samseg_core.labels import (
    detections_from_masks,
    mask_targets_of,
    merge_mask_targets,
    read_segmentation,
    segmentation_from_array,
)
from samseg_core.masks import resize_mask_nearest
from samseg_core.models.caption import load_captioner
from samseg_core.models.clip import load_clip
from samseg_core.models.clipseg import load_clipseg
from samseg_core.models.factory import build_from_spec, is_factory_spec
from samseg_core.runner import ProgressArg, RunSummary, SampleItem, StageResult, run_stage

DEFAULT_LABEL_FIELD = "ssa_engine"


def _built(model: Any) -> Any:
    """A ``module:function`` spec becomes what the function returns; anything else is passed through."""
    return build_from_spec(model) if is_factory_spec(model) else model


def build_engine(
    *,
    preset: str = "light",
    clip: Any = None,
    clip_pretrained: str | None = None,
    captioner: Any = None,
    clipseg: Any = None,
    vocabulary: Sequence[str] | None = None,
    device: str | None = None,
    mask_batch_size: int = 32,
    **engine_options: Any,
) -> OpenVocabEngine:
    """Returns an :class:`~samseg_core.engine.OpenVocabEngine` with the preset's models, each overridable.

    Args:
        preset: "light" (CLIP ViT-B/32, BLIP base) or "full" (CLIP ViT-L/14, BLIP large); CLIPSeg rd64-refined.
        clip: an open_clip model name, directory, ``module:function`` spec, built model or ClipClassifier.
        clip_pretrained: the pretrained tag or checkpoint file for a CLIP model name (default: the preset's).
        captioner: a BLIP hub id, directory, spec, ``(model, processor)`` or Captioner; not loaded in
            fixed-vocabulary mode.
        clipseg: a CLIPSeg hub id, directory, spec, ``(model, processor)`` or ClipSegScorer.
        vocabulary: fixed-vocabulary mode (no captioning).
        device: where the models run.
        mask_batch_size: crops (and CLIPSeg pairs) per model call.
        engine_options: further :class:`OpenVocabEngine` arguments (topk, crop scales, min_area, ...).
    """
    defaults = engine_preset(preset)
    if clip is None:
        clip, clip_pretrained = defaults.clip, clip_pretrained or defaults.clip_pretrained
    clip_model = load_clip(_built(clip), pretrained=clip_pretrained or "openai", device=device)
    clipseg_model = load_clipseg(_built(clipseg if clipseg is not None else defaults.clipseg), device=device)
    captioner_model = None
    if vocabulary is None:
        captioner_model = load_captioner(
            _built(captioner if captioner is not None else defaults.captioner), device=device
        )
    return OpenVocabEngine(
        clip_model,
        clipseg_model,
        captioner_model,
        vocabulary=vocabulary,
        batch_size=mask_batch_size,
        **engine_options,
    )


def _segmenters(models: Sequence[Any], device: str | None) -> list[tuple[str, Any]]:
    from samseg_core.stages.baseline import resolve_segmenter

    named = []
    for model in models:
        name = model if isinstance(model, str) else type(getattr(model, "model", model)).__name__
        named.append((str(name), resolve_segmenter(model, device=device)))
    return named


def _stored_branch(item: SampleItem, field_name: str, targets: Mapping[int, str]) -> SemanticBranch | None:
    labels = read_segmentation(item.inputs.get(field_name))
    if labels is None:
        return None
    shape = item.image.shape[:2]
    if labels.shape != shape:
        labels = resize_mask_nearest(labels, shape)
    return SemanticBranch(field_name, labels, targets)


class _ClassIds:
    """Class name -> id of the merged segmentation, consistent across the dataset and across runs.

    Ids live in ``dataset.mask_targets[field]``: a name seen before keeps its id, a new name gets the next free
    id (0 = unlabeled). The targets are re-read before each batch, so runs on other shards of the same dataset
    extend them rather than collide (a collision raises MaskTargetConflict for that batch's samples).
    """

    def __init__(self, samples: Any, field_name: str) -> None:
        self.samples = samples
        self.field_name = field_name

    def ids_for(self, names: Sequence[str]) -> dict[str, int]:
        dataset = self.samples._dataset
        dataset.reload()
        current = {int(k): str(v) for k, v in (dataset.mask_targets.get(self.field_name) or {}).items()}
        targets = assign_class_ids(names, current)
        if targets != current:
            targets = merge_mask_targets(self.samples, self.field_name, targets)
        return {name: class_id for class_id, name in targets.items()}


def _detections(proposals: Any, labels: list[MaskLabel], keep_skipped: bool) -> Any:
    keep = np.array([keep_skipped or label.skipped_reason is None for label in labels], dtype=bool)
    index = np.flatnonzero(keep)
    chosen = [labels[i] for i in index]
    attributes = {
        "class_proposals": [label.class_proposals for label in chosen],
        "proposal_scores": [[round(s, 6) for s in label.proposal_scores] for label in chosen],
        "caption": [label.caption for label in chosen],
        "skipped_reason": [label.skipped_reason for label in chosen],
        "area": [label.area for label in chosen],
    }
    for name in ("predicted_iou", "stability_score"):
        values = getattr(proposals, name, None)
        if values is not None and len(values) == len(labels):
            attributes[name] = [float(v) for v in np.asarray(values)[index]]
    return detections_from_masks(
        np.asarray(proposals.masks, dtype=bool)[index],
        [label.class_name for label in chosen],
        confidences=[label.confidence for label in chosen],
        attributes=attributes,
    )


def _export_json(
    json_dir: str | os.PathLike, item: SampleItem, proposals: Any, labels: list[MaskLabel]
) -> None:
    """Writes ``<json_dir>/<file stem>_<sample id>.json``; masks that got no class have ``class_name`` null."""
    from samseg_core.ssa_format import write_ssa_json

    file_name = os.path.basename(item.filepath)
    write_ssa_json(
        os.path.join(os.fspath(json_dir), f"{os.path.splitext(file_name)[0]}_{item.id}.json"),
        proposals,
        image={"image_id": item.id, "file_name": file_name},
        class_names=[None if label.skipped_reason else label.class_name for label in labels],
        class_proposals=[label.class_proposals for label in labels],
    )


def open_vocab_labels(
    samples: Any,
    label_field: str = DEFAULT_LABEL_FIELD,
    masks: Any = "sam",
    *,
    semantic_fields: Sequence[str] = (),
    semantic_models: Sequence[Any] | None = None,
    preset: str = "light",
    clip: Any = None,
    clip_pretrained: str | None = None,
    captioner: Any = None,
    clipseg: Any = None,
    vocabulary: Sequence[str] | None = None,
    topk: int = 3,
    crop_scale_caption: float = 1.6,
    crop_scale_clip: float = 1.2,
    crop_scale_clipseg: float = 1.6,
    min_area: int = 100,
    keep_skipped: bool = True,
    semantic_field: str | None = None,
    json_dir: str | os.PathLike | None = None,
    sam: Any = None,
    sam_checkpoint: str | None = None,
    mask_preset: str | None = "ssa",
    cache: Any = None,
    mask_options: Mapping[str, Any] | None = None,
    batch_size: int = 2,
    mask_batch_size: int = 32,
    num_workers: int = 0,
    device: str | None = None,
    skip_existing: bool = False,
    skip_failures: bool = True,
    overwrite: bool = False,
    progress: ProgressArg = None,
) -> RunSummary:
    """Gives every mask of every sample an open-vocabulary class name (SSA-engine) and stores ``fo.Detections``.

    Per mask: close-set proposals (plurality class of each semantic branch inside the mask), noun phrases of a
    BLIP caption of the enlarged crop, CLIP keeps the top-k of their union, CLIPSeg picks one inside the mask.
    All crops of a batch of images go through each model in batches of ``mask_batch_size``.

    Args:
        samples: a FiftyOne dataset or view.
        label_field: the ``fo.Detections`` field written: one detection per mask, ``label`` = class name,
            ``confidence`` = CLIPSeg score, attributes ``class_proposals``, ``proposal_scores``, ``caption``,
            ``predicted_iou``, ``stability_score``, ``area``, ``skipped_reason``.
        masks: the mask source: ``"sam"`` (SAM automatic masks), ``"superpixels"``, ``"field:<name>"`` (masks
            of a stored ``fo.Detections`` field, e.g. ``"field:ssa_masks"`` from semantic voting), or a MaskSource.
        semantic_fields: stored ``fo.Segmentation`` fields used as close-set branches (with their mask targets).
        semantic_models: segmenters run on the fly as close-set branches (hub ids, directories, specs, models);
            None means the preset's segmenters when no ``semantic_fields`` are given, else none; ``()`` none.
        preset: "light" or "full" (see :data:`samseg_core.engine.ENGINE_PRESETS`); every model is overridable.
        clip: CLIP override (open_clip name, directory, spec or built model).
        clip_pretrained: pretrained tag or checkpoint file for a CLIP model name.
        captioner: BLIP override (hub id, directory, spec, built).
        clipseg: CLIPSeg override (hub id, directory, spec, built).
        vocabulary: fixed-vocabulary mode: these class names (plus close-set proposals) are the candidates and
            no caption is generated.
        topk: candidates CLIP keeps for CLIPSeg.
        crop_scale_caption: crop enlargement for BLIP (SSA: 1.6).
        crop_scale_clip: crop enlargement for CLIP (SSA: 1.2).
        crop_scale_clipseg: crop enlargement for CLIPSeg (SSA: 1.6).
        min_area: masks with fewer pixels are not labelled (kept as ``unknown`` with ``skipped_reason``).
        keep_skipped: also store masks that got no class (label ``unknown``, ``skipped_reason`` set).
        semantic_field: optional merged ``fo.Segmentation`` of the labelled masks (smaller masks on top); its
            ``mask_targets`` grow across the dataset and runs, the same name always keeping the same id.
        json_dir: optional directory for SSA-format JSON per image (SA-1B fields + ``class_name``,
            ``class_proposals``).
        sam: SAM for ``masks="sam"`` (type, checkpoint, spec or model; default vit_b).
        sam_checkpoint: checkpoint file for a SAM type.
        mask_preset: SAM automatic mask generator preset: ``"ssa"`` (SSA's settings), ``"fast"``, or None.
        cache: a shared :class:`~samseg_core.sam_embedding.EmbeddingCache` for ``masks="sam"``.
        mask_options: further keyword arguments of the mask source (SAM generator settings, superpixel
            parameters).
        batch_size: images per batch (and per bulk write).
        mask_batch_size: crops (and CLIPSeg pairs) per model call.
        num_workers: image-decoding workers.
        device: ``cuda``, ``cuda:N`` or ``cpu``; default CUDA when available (bf16 autocast there).
        skip_existing: skip samples that already have ``label_field`` (resume).
        skip_failures: record per-sample errors in ``<label_field>_error`` and continue.
        overwrite: replace existing values.
        progress: True to print progress, or a callable taking the fraction done.

    Returns:
        a :class:`RunSummary`; ``extra`` holds ``masks``, ``labelled``, ``skipped``, ``classes`` and
        ``model_calls``.
    """
    from samseg_core.mask_sources import resolve_mask_source

    engine = build_engine(
        preset=preset,
        clip=clip,
        clip_pretrained=clip_pretrained,
        captioner=captioner,
        clipseg=clipseg,
        vocabulary=vocabulary,
        device=device,
        mask_batch_size=mask_batch_size,
        topk=topk,
        crop_scale_caption=crop_scale_caption,
        crop_scale_clip=crop_scale_clip,
        crop_scale_clipseg=crop_scale_clipseg,
        min_area=min_area,
    )
    if semantic_models is None:
        semantic_models = () if semantic_fields else engine_preset(preset).semantic_models
    segmenters = _segmenters(semantic_models, device)
    source = resolve_mask_source(
        masks,
        sam=sam,
        sam_checkpoint=sam_checkpoint,
        device=device,
        cache=cache,
        preset=mask_preset,
        **dict(mask_options or {}),
    )
    field_targets = {name: mask_targets_of(samples, name) for name in semantic_fields}
    class_ids = _ClassIds(samples, semantic_field) if semantic_field else None
    if json_dir is not None:
        os.makedirs(json_dir, exist_ok=True)
    stats = {"masks": 0, "labelled": 0, "skipped": 0}
    names_seen: set[str] = set()

    def process(items: list[SampleItem]) -> list[StageResult]:
        images = [item.image for item in items]
        proposals = [source.proposals(item) for item in items]
        branches = [
            [b for b in (_stored_branch(item, f, field_targets[f]) for f in semantic_fields) if b is not None]
            for item in items
        ]
        for _, segmenter in segmenters:
            for item_branches, prediction in zip(branches, segmenter.predict(images)):
                item_branches.append(SemanticBranch("model", prediction.labels, segmenter.id2label))
        labels = engine.label_masks(images, [p.masks for p in proposals], branches)
        named = [
            label.class_name for image_labels in labels for label in image_labels if not label.skipped_reason
        ]
        ids = class_ids.ids_for(sorted(set(named))) if class_ids else {}
        results: list[StageResult] = []
        for item, item_proposals, item_labels in zip(items, proposals, labels):
            result: dict[str, Any] = {label_field: _detections(item_proposals, item_labels, keep_skipped)}
            if class_ids:
                painted = [0 if label.skipped_reason else ids[label.class_name] for label in item_labels]
                stack = np.asarray(item_proposals.masks, dtype=bool).reshape(-1, *item.image.shape[:2])
                result[semantic_field] = segmentation_from_array(paint_class_map(stack, painted))
            if json_dir is not None:
                _export_json(json_dir, item, item_proposals, item_labels)
            stats["masks"] += len(item_labels)
            stats["skipped"] += sum(label.skipped_reason is not None for label in item_labels)
            names_seen.update(label.class_name for label in item_labels if not label.skipped_reason)
            results.append(result)
        stats["labelled"] = stats["masks"] - stats["skipped"]
        return results

    outputs = [label_field] + ([semantic_field] if semantic_field else [])
    summary = run_stage(
        samples,
        stage="open_vocab_labels",
        output_fields=outputs,
        process=process,
        input_fields=[*getattr(source, "input_fields", ()), *semantic_fields],
        batch_size=batch_size,
        num_workers=num_workers,
        skip_existing=skip_existing,
        overwrite=overwrite,
        skip_failures=skip_failures,
        progress=progress,
    )
    summary.extra.update(stats)
    summary.extra["classes"] = len(names_seen)
    summary.extra["model_calls"] = engine.model_calls()
    return summary

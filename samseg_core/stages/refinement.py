"""SAM refinement of a stored semantic segmentation, and the prompt study (the workshop study's Table 2).

``refine_with_sam`` prompts SAM with a baseline field's own classes and writes the refined ``fo.Segmentation``
(optionally the accepted regions as ``fo.Detections``). ``prompt_study`` runs several prompt configurations on
a view, writes one field per configuration and returns a table of mIoU against ground truth. Both compute each
image's SAM embedding once (:class:`~samseg_core.sam_embedding.EmbeddingCache`), shared by every prompt set,
every configuration, and any other stage given the same ``cache``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from samseg_core.labels import (
    detections_from_masks,
    mask_targets_of,
    merge_mask_targets,
    read_segmentation,
    segmentation_from_array,
)
from samseg_core.masks import resize_mask_nearest
from samseg_core.metrics import confusion_and_missed, scores_from_confusion
from samseg_core.models.factory import build_from_spec, is_factory_spec
from samseg_core.models.sam import load_sam
from samseg_core.prompts import DEFAULT_MIN_REGION_AREA, normalize_prompts
from samseg_core.refine import DEFAULT_GATE, RefinementResult, refine_semantic
from samseg_core.runner import ProgressArg, RunSummary, SampleItem, StageResult, run_stage
from samseg_core.sam_embedding import EmbeddingCache, predictor_from_embedding

DEFAULT_SAM = "vit_b"

#: Options a refinement configuration may set (keywords of :func:`samseg_core.refine.refine_semantic`).
REFINE_OPTIONS = (
    "prompts",
    "granularity",
    "selection",
    "gate",
    "fill",
    "overlap",
    "loose_margin",
    "min_region_area",
    "ignore_classes",
    "background_id",
    "mask_logit",
)

#: The study's setting: one prompt set per class, best candidate by baseline IoU, no gate, empty start map.
STUDY_SETTINGS: dict[str, Any] = {
    "granularity": "class",
    "selection": "baseline_iou",
    "gate": 0.0,
    "fill": "background",
}

#: Table 2 of the workshop study (plus the annotation study's loose box and extreme points), in the study's
#: setting, and samseg's gated default for comparison.
STUDY_CONFIGS: dict[str, dict[str, Any]] = {
    "single_point": {**STUDY_SETTINGS, "prompts": ("point",)},
    "multiple_points": {**STUDY_SETTINGS, "prompts": ("points",)},
    "box": {**STUDY_SETTINGS, "prompts": ("box",)},
    "points_box": {**STUDY_SETTINGS, "prompts": ("points", "box")},
    "points_box_mask": {**STUDY_SETTINGS, "prompts": ("points", "box", "mask")},
    "loose_box": {**STUDY_SETTINGS, "prompts": ("loose_box",)},
    "extreme_points": {**STUDY_SETTINGS, "prompts": ("extreme_points",)},
    "points_box_gated": {"prompts": ("points", "box"), "gate": DEFAULT_GATE, "fill": "baseline"},
}


def resolve_sam(
    sam: Any = DEFAULT_SAM, checkpoint: str | os.PathLike | None = None, device: str | None = None
):
    """Returns a SAM model in eval mode from a type, checkpoint path, ``module:function`` spec or ``Sam``."""
    if is_factory_spec(sam):
        sam = build_from_spec(sam)
    return load_sam(sam, checkpoint=checkpoint, device=device).eval()


def refine_options(**options: Any) -> dict[str, Any]:
    """Returns validated refinement options (unknown names raise, prompt types are normalised)."""
    unknown = set(options) - set(REFINE_OPTIONS)
    if unknown:
        raise ValueError(
            f"unknown refinement option(s) {sorted(unknown)}; valid: {', '.join(REFINE_OPTIONS)}"
        )
    out = dict(options)
    if "prompts" in out:
        out["prompts"] = normalize_prompts(out["prompts"])
    if "ignore_classes" in out:
        out["ignore_classes"] = tuple(int(c) for c in out["ignore_classes"])
    checks = {
        "granularity": ("class", "region"),
        "selection": ("baseline_iou", "predicted_iou"),
        "fill": ("baseline", "background"),
        "overlap": ("area", "score"),
    }
    for name, allowed in checks.items():
        if name in out and out[name] not in allowed:
            raise ValueError(f"{name} must be one of {allowed}, got {out[name]!r}")
    if "gate" in out and not 0.0 <= float(out["gate"]) <= 1.0:
        raise ValueError(f"gate must lie in [0, 1], got {out['gate']}")
    return out


def _baseline_of(item: SampleItem, semantic_field: str) -> np.ndarray:
    baseline = read_segmentation(item.inputs.get(semantic_field))
    if baseline is None:
        raise ValueError(f"sample has no '{semantic_field}' segmentation to refine")
    return baseline


def _refine_image(
    cache: EmbeddingCache, embedding: Any, baseline: np.ndarray, image_hw: tuple[int, int], options: dict
) -> tuple[np.ndarray, RefinementResult]:
    """Refines one image; a baseline stored at another resolution is resized to the image and back."""
    predictor = predictor_from_embedding(cache.sam, embedding)
    at_image = baseline if baseline.shape == image_hw else resize_mask_nearest(baseline, image_hw)
    result = refine_semantic(predictor, at_image, **options)
    refined = (
        result.semantic
        if baseline.shape == image_hw
        else resize_mask_nearest(result.semantic, baseline.shape)
    )
    return refined, result


def _instances(result: RefinementResult, targets: Mapping[int, str]) -> Any:
    regions = result.regions.only_accepted()
    return detections_from_masks(
        regions.masks,
        [targets.get(int(c), str(int(c))) for c in regions.class_ids],
        confidences=regions.predicted_iou,
        attributes={
            "class_id": regions.class_ids,
            "predicted_iou": regions.predicted_iou,
            "stability_score": regions.stability,
            "baseline_iou": regions.baseline_iou,
        },
    )


def refine_with_sam(
    samples: Any,
    semantic_field: str = "baseline",
    label_field: str = "sam_refined",
    sam: Any = DEFAULT_SAM,
    *,
    sam_checkpoint: str | os.PathLike | None = None,
    prompts: str | Sequence[str] = ("points", "box"),
    granularity: str = "class",
    selection: str = "baseline_iou",
    gate: float = DEFAULT_GATE,
    fill: str = "baseline",
    overlap: str = "area",
    loose_margin: float = 0.2,
    min_region_area: int = DEFAULT_MIN_REGION_AREA,
    ignore_classes: Sequence[int] = (255,),
    background_id: int = 0,
    instances_field: str | None = None,
    mask_dir: str | os.PathLike | None = None,
    cache: EmbeddingCache | None = None,
    batch_size: int = 4,
    num_workers: int = 0,
    device: str | None = None,
    skip_existing: bool = False,
    skip_failures: bool = True,
    overwrite: bool = False,
    progress: ProgressArg = None,
) -> RunSummary:
    """Refines ``semantic_field`` with SAM prompted by its own classes and writes ``label_field``.

    Args:
        samples: a FiftyOne dataset or view.
        semantic_field: the ``fo.Segmentation`` to refine (its mask targets are merged into the output's).
        label_field: output ``fo.Segmentation`` field.
        sam: ``vit_b`` / ``vit_l`` / ``vit_h``, a checkpoint path, a ``module:function`` spec
            (``samseg_core.testing:tiny_sam``) or a built ``Sam``; ignored when ``cache`` is given.
        sam_checkpoint: explicit checkpoint file for a SAM type.
        prompts: combination of ``point``, ``points``, ``box``, ``loose_box``, ``extreme_points``, ``mask``.
        granularity: ``class`` (one prompt set per class, the study) or ``region`` (per connected region).
        selection: ``baseline_iou`` (the study) or ``predicted_iou`` (SAM's own score).
        gate: no-harm gate: a candidate is painted only when its IoU with its baseline region is at least
            this; 0 reproduces the study.
        fill: ``baseline`` (unclaimed pixels keep the baseline) or ``background`` (the study's empty start).
        overlap: ``area`` (smaller accepted mask wins) or ``score`` (higher predicted IoU wins).
        loose_margin: per-side loose-box margin as a fraction of the box's width/height.
        min_region_area: smallest connected region that gets a point / its own prompt set.
        ignore_classes: class ids never prompted (e.g. 255 = unlabeled).
        background_id: class released pixels get with ``fill="background"``.
        instances_field: optional ``fo.Detections`` field of the accepted regions, each with ``class_id``,
            ``predicted_iou``, ``stability_score`` and ``baseline_iou`` attributes.
        mask_dir: write masks as PNGs there instead of into the database.
        cache: an :class:`EmbeddingCache` to share SAM embeddings with other stages of the run.
        batch_size: images per batch (their embeddings are encoded together).
        num_workers: image-decoding workers.
        device: ``cuda``, ``cuda:1``, ``cpu``; default CUDA when available.
        skip_existing: skip samples that already have ``label_field`` (resume).
        skip_failures: record per-sample errors in ``<label_field>_error`` and continue.
        overwrite: replace existing values.
        progress: True to print progress, or a callable taking the fraction done.

    Returns:
        a :class:`RunSummary`; ``extra`` holds ``prompt_sets``, ``accepted`` and ``encoder_calls``.
    """
    options = refine_options(
        prompts=prompts,
        granularity=granularity,
        selection=selection,
        gate=gate,
        fill=fill,
        overlap=overlap,
        loose_margin=loose_margin,
        min_region_area=min_region_area,
        ignore_classes=ignore_classes,
        background_id=background_id,
    )
    cache = cache if cache is not None else EmbeddingCache(resolve_sam(sam, sam_checkpoint, device))
    encoder_calls_before = cache.encoder_calls
    targets = mask_targets_of(samples, semantic_field)
    merge_mask_targets(samples, label_field, targets, overwrite=overwrite)
    outputs = [label_field] + ([instances_field] if instances_field else [])
    counts = {"prompt_sets": 0, "accepted": 0}

    def process(items: list[SampleItem]) -> list[StageResult]:
        embeddings = cache.get_many([item.id for item in items], [item.image for item in items])
        results: list[StageResult] = []
        for item, embedding in zip(items, embeddings):
            try:
                baseline = _baseline_of(item, semantic_field)
                refined, result = _refine_image(cache, embedding, baseline, item.image.shape[:2], options)
            except Exception as err:  # one bad sample must not fail its batch
                results.append(err)
                continue
            counts["prompt_sets"] += len(result.regions)
            counts["accepted"] += int(result.regions.accepted.sum())
            out: dict[str, Any] = {
                label_field: segmentation_from_array(refined, mask_dir=mask_dir, name=item.id)
            }
            if instances_field:
                out[instances_field] = _instances(result, targets)
            results.append(out)
        return results

    summary = run_stage(
        samples,
        stage="refine_with_sam",
        output_fields=outputs,
        process=process,
        input_fields=[semantic_field],
        batch_size=batch_size,
        num_workers=num_workers,
        skip_existing=skip_existing,
        overwrite=overwrite,
        skip_failures=skip_failures,
        progress=progress,
    )
    summary.extra.update(counts, encoder_calls=cache.encoder_calls - encoder_calls_before)
    return summary


@dataclass
class PromptStudyTable:
    """The prompt study's comparison: one row for the baseline, one per configuration.

    Each row: ``config``, ``field``, ``settings`` (prompts and options), ``miou`` (from the summed confusion
    matrix over all images, the mmseg / SSA reduction), ``mean_image_miou`` (mean of per-image mIoUs),
    ``pixel_accuracy``, ``delta_miou`` (``miou`` minus the baseline's) and ``accepted`` (share of prompt sets
    that passed the gate in this run, None for the baseline or when nothing ran). mIoU values are in [0, 1].
    """

    rows: list[dict[str, Any]]
    num_images: int
    summary: RunSummary | None = None
    fields: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Returns a JSON-serialisable dict (operators return this to the App)."""
        return {
            "rows": [{key: _plain(value) for key, value in row.items()} for row in self.rows],
            "num_images": self.num_images,
            "fields": dict(self.fields),
            **({"run": self.summary.to_dict()} if self.summary else {}),
        }

    def format_table(self) -> str:
        """Returns the table as aligned text (mIoU in percent, as the study reports it)."""
        return format_table(self)

    def __str__(self) -> str:
        return self.format_table()


def _plain(value: Any) -> Any:
    return None if isinstance(value, float) and math.isnan(value) else value


def _percent(value: float | None) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{100 * value:.2f}"


def format_table(table: PromptStudyTable | Sequence[Mapping[str, Any]]) -> str:
    """Returns a prompt study table (or its rows) as aligned text for printing."""
    rows = table.rows if isinstance(table, PromptStudyTable) else list(table)
    header = ["config", "mIoU", "mean img mIoU", "pixel acc", "delta mIoU", "accepted", "settings"]
    lines = [header]
    for row in rows:
        delta = row.get("delta_miou")
        lines.append(
            [
                str(row["config"]),
                _percent(row.get("miou")),
                _percent(row.get("mean_image_miou")),
                _percent(row.get("pixel_accuracy")),
                "-" if delta is None or math.isnan(delta) else f"{100 * delta:+.2f}",
                _percent(row.get("accepted")),
                str(row.get("settings", "")),
            ]
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    text = [
        "  ".join(
            cell.ljust(w) if i in (0, 6) else cell.rjust(w) for i, (cell, w) in enumerate(zip(line, widths))
        ).rstrip()
        for line in lines
    ]
    text.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(text)


class _GrowingConfusion:
    """Sums per-image confusion matrices whose class count grows with the largest class id seen."""

    def __init__(self, num_classes: int, ignore_index: int | None) -> None:
        self.k = max(int(num_classes), 1)
        self.ignore_index = ignore_index
        self.confusion = np.zeros((self.k, self.k), dtype=np.int64)
        self.missed = np.zeros(self.k, dtype=np.int64)
        self.image_mious: list[float] = []

    def _grow(self, k: int) -> None:
        if k > self.k:
            self.confusion = np.pad(self.confusion, ((0, k - self.k), (0, k - self.k)))
            self.missed = np.pad(self.missed, (0, k - self.k))
            self.k = k

    def add(self, gt: np.ndarray, pred: np.ndarray, needed: int) -> None:
        self._grow(needed)
        cm, missed = confusion_and_missed(gt, pred, self.k, self.ignore_index)
        self.confusion += cm
        self.missed += missed
        self.image_mious.append(scores_from_confusion(cm, missed).miou)

    def row(self) -> dict[str, float]:
        scores = scores_from_confusion(self.confusion, self.missed)
        mious = np.asarray(self.image_mious, dtype=np.float64)
        mious = mious[~np.isnan(mious)]
        return {
            "miou": scores.miou,
            "mean_image_miou": float(mious.mean()) if mious.size else math.nan,
            "pixel_accuracy": scores.pixel_accuracy,
        }


def _chunks(seq: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(seq), size):
        yield seq[start : start + size]


def _largest_id(arrays: Sequence[np.ndarray], ignore_index: int | None) -> int:
    largest = -1
    for arr in arrays:
        values = arr if ignore_index is None else arr[arr != ignore_index]
        if values.size:
            largest = max(largest, int(values.max()))
    return largest


def study_scores(
    samples: Any,
    gt_field: str,
    pred_fields: Mapping[str, str],
    *,
    num_classes: int | None = None,
    ignore_index: int | None = 255,
    chunk_size: int = 32,
) -> tuple[dict[str, dict[str, float]], int]:
    """Returns ``{name: {miou, mean_image_miou, pixel_accuracy}}`` of each prediction field against
    ``gt_field``, and the number of images scored (those with ground truth and every prediction).

    Args:
        samples: a dataset or view.
        gt_field: ground-truth ``fo.Segmentation`` field.
        pred_fields: row name -> prediction field.
        num_classes: class count; by default the largest id in the mask targets or data (except
            ``ignore_index``) plus one.
        ignore_index: ground-truth id that is not scored.
        chunk_size: samples whose masks are read at a time.
    """
    known = [
        *mask_targets_of(samples, gt_field),
        *(k for f in pred_fields.values() for k in mask_targets_of(samples, f)),
    ]
    k = num_classes or (max(known) + 1 if known else 1)
    accumulators = {name: _GrowingConfusion(k, ignore_index) for name in pred_fields}
    fields = [gt_field, *pred_fields.values()]
    scored = 0
    ids = samples.values("id")
    for chunk in _chunks(ids, chunk_size):
        columns = samples.select(list(chunk), ordered=True).values(fields)
        for labels in zip(*columns):
            maps = [read_segmentation(label) for label in labels]
            if any(m is None for m in maps):
                continue
            gt, preds = maps[0], maps[1:]
            preds = [p if p.shape == gt.shape else resize_mask_nearest(p, gt.shape) for p in preds]
            needed = num_classes or _largest_id([gt, *preds], ignore_index) + 1
            for name, pred in zip(pred_fields, preds):
                accumulators[name].add(gt, pred, needed)
            scored += 1
    return {name: acc.row() for name, acc in accumulators.items()}, scored


def _settings_text(options: Mapping[str, Any]) -> str:
    parts = ["+".join(options.get("prompts", ()))]
    parts += [
        f"{key}={options[key]}" for key in ("granularity", "selection", "gate", "fill") if key in options
    ]
    return " ".join(parts)


def prompt_study(
    samples: Any,
    configs: Mapping[str, Mapping[str, Any]] | None = None,
    semantic_field: str = "baseline",
    gt_field: str = "ground_truth",
    sam: Any = DEFAULT_SAM,
    *,
    sam_checkpoint: str | os.PathLike | None = None,
    field_prefix: str = "study_",
    common: Mapping[str, Any] | None = None,
    cache: EmbeddingCache | None = None,
    num_classes: int | None = None,
    ignore_index: int | None = 255,
    batch_size: int = 4,
    num_workers: int = 0,
    device: str | None = None,
    skip_existing: bool = False,
    skip_failures: bool = True,
    overwrite: bool = False,
    progress: ProgressArg = None,
) -> PromptStudyTable:
    """Runs several prompt configurations, writes one field each and compares their mIoU with the baseline's.

    Every image is encoded once for all configurations (one pass over the samples, all configurations per
    image), so the study costs one SAM encoder pass plus one decoder call per configuration and image.

    Args:
        samples: a dataset or view with ``semantic_field`` and ``gt_field``.
        configs: name -> refinement options (keys of :data:`REFINE_OPTIONS`); default :data:`STUDY_CONFIGS`,
            the study's Table 2 rows in the study's setting plus loose box, extreme points and samseg's gated
            points+box. Each name becomes the field ``<field_prefix><name>``.
        semantic_field: the baseline ``fo.Segmentation``.
        gt_field: the ground-truth ``fo.Segmentation``.
        sam: SAM type, checkpoint path, ``module:function`` spec or ``Sam``; ignored when ``cache`` is given.
        sam_checkpoint: explicit checkpoint file for a SAM type.
        field_prefix: prefix of the output fields.
        common: refinement options applied to every configuration that does not set them.
        cache: an :class:`EmbeddingCache` to share embeddings with other stages.
        num_classes: class count for the metrics (default: from mask targets and data).
        ignore_index: ground-truth id not scored.
        batch_size, num_workers, device, skip_existing, skip_failures, overwrite, progress: as in
            :func:`refine_with_sam` (``skip_existing`` looks at the first configuration's field).

    Returns:
        a :class:`PromptStudyTable`; print it with ``print(table.format_table())``.
    """
    configs = dict(STUDY_CONFIGS if configs is None else configs)
    if not configs:
        raise ValueError("prompt_study needs at least one configuration")
    shared = refine_options(**(common or {}))
    options = {name: {**shared, **refine_options(**dict(cfg))} for name, cfg in configs.items()}
    for opts in options.values():
        opts.setdefault("prompts", ("points", "box"))
    fields = {name: f"{field_prefix}{name}" for name in configs}
    cache = cache if cache is not None else EmbeddingCache(resolve_sam(sam, sam_checkpoint, device))
    targets = mask_targets_of(samples, semantic_field)
    for field_name in fields.values():
        merge_mask_targets(samples, field_name, targets, overwrite=overwrite)
    counts = {name: [0, 0] for name in configs}  # prompt sets, accepted
    encoder_calls_before = cache.encoder_calls

    def process(items: list[SampleItem]) -> list[StageResult]:
        embeddings = cache.get_many([item.id for item in items], [item.image for item in items])
        results: list[StageResult] = []
        for item, embedding in zip(items, embeddings):
            try:
                baseline = _baseline_of(item, semantic_field)
                out: dict[str, Any] = {}
                for name, opts in options.items():
                    refined, result = _refine_image(cache, embedding, baseline, item.image.shape[:2], opts)
                    counts[name][0] += len(result.regions)
                    counts[name][1] += int(result.regions.accepted.sum())
                    out[fields[name]] = segmentation_from_array(refined)
            except Exception as err:  # one bad sample must not fail its batch
                results.append(err)
                continue
            results.append(out)
        return results

    summary = run_stage(
        samples,
        stage="prompt_study",
        output_fields=list(fields.values()),
        process=process,
        input_fields=[semantic_field],
        batch_size=batch_size,
        num_workers=num_workers,
        skip_existing=skip_existing,
        overwrite=overwrite,
        skip_failures=skip_failures,
        progress=progress,
    )
    summary.extra["encoder_calls"] = cache.encoder_calls - encoder_calls_before

    scores, num_images = study_scores(
        samples,
        gt_field,
        {"baseline": semantic_field, **fields},
        num_classes=num_classes,
        ignore_index=ignore_index,
    )
    base = scores["baseline"]["miou"]
    rows = [
        {
            "config": "baseline",
            "field": semantic_field,
            "settings": "",
            **scores["baseline"],
            "delta_miou": 0.0,
            "accepted": None,
        }
    ]
    for name, field_name in fields.items():
        total, accepted = counts[name]
        rows.append(
            {
                "config": name,
                "field": field_name,
                "settings": _settings_text(options[name]),
                **scores[name],
                "delta_miou": scores[name]["miou"] - base,
                "accepted": accepted / total if total else None,
            }
        )
    return PromptStudyTable(rows=rows, num_images=num_images, summary=summary, fields=fields)

"""Semantic voting (SSA) over a sample collection: SAM's masks (or stored masks, or superpixels) take classes
from a baseline segmentation; writes ``fo.Segmentation`` + one ``fo.Detection`` per mask."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from samseg_core.errors import StageParameterError
from samseg_core.labels import detections_from_box_masks, mask_targets_of, read_segmentation
from samseg_core.mask_sources import MaskProposals, MaskSource
from samseg_core.masks import resize_mask_nearest
from samseg_core.models.resolve import SEMANTIC, resolve_model
from samseg_core.runner import STATS, RunSummary, SampleItem, StageResult, run_stage
from samseg_core.ssa_format import write_ssa_json
from samseg_core.stages.options import (
    DETECTIONS,
    HEATMAP,
    SEGMENTATION,
    input_field,
    mask_dir_option,
    option,
    output_field,
)
from samseg_core.stages.plan import StagePlan
from samseg_core.stages.registry import StageSpec, stage
from samseg_core.stages.sam_options import (
    MaskSourceName,
    MaskSourceOptions,
    mask_source_for,
    mask_source_summary,
)
from samseg_core.voting import VotingResult, vote_masks

_NO_HARM = {"mode": ("no_harm",)}


@dataclass(frozen=True)
class VotingOptions(MaskSourceOptions):
    """Options of :func:`semantic_voting`."""

    baseline_field: str | None = input_field(
        "baseline", SEGMENTATION, "The baseline segmentation whose classes the masks take (any resolution); "
        "its mask targets name the classes. Not used with semantic_model", required=False,
        label="Baseline field",
    )  # fmt: skip
    label_field: str = output_field(
        "ssa", SEGMENTATION, "Output segmentation field; its mask targets get the baseline's classes",
        label="Output segmentation field",
    )  # fmt: skip
    instances_field: str | None = output_field(
        "ssa_masks", DETECTIONS, "Optional Detections, one per mask: voted class, vote share, SAM scores, "
        "class proposals, accepted", label="Per-mask Detections field (optional)",
    )  # fmt: skip
    semantic_model: Any = option(
        None, "Run this segmenter (hub id, local directory, module:function spec or model) instead of "
        "reading baseline_field; its probabilities drive ties and no_harm's soft vote",
        label="Semantic segmenter (optional)",
    )  # fmt: skip
    confidence_field: str | None = input_field(
        None, HEATMAP, "Optional heatmap of the stored baseline's confidence, for tie-breaks", required=False,
        label="Baseline confidence field (optional)",
    )  # fmt: skip
    mode: Literal["plurality", "no_harm"] = option(
        "plurality", "plurality: every mask takes its majority class (SSA); no_harm: only masks whose vote "
        "share reaches min_vote_share relabel", label="Voting mode",
    )  # fmt: skip
    min_vote_share: float = option(
        0.5, "no_harm: share of a mask's voting pixels its class must reach", ge=0.0, le=1.0, show_if=_NO_HARM
    )
    topk: int = option(3, "Class proposals recorded per mask", ge=1, le=20, label="Class proposals per mask")
    ignore_index: int | None = option(
        255, "'No class' baseline value: such pixels do not vote and stay where no accepted mask owns them "
        "(empty: every value is a class)", ge=0, le=65535,
    )  # fmt: skip
    json_dir: str | None = option(
        None,
        "Also write one SSA / SA-1B JSON per image there (<sample id>.json)",
        label="JSON directory (optional)",
    )
    mask_dir: str | None = mask_dir_option()

    @classmethod
    def normalize(cls, values: dict[str, Any]) -> dict[str, Any]:
        """The mask source's normalisation, plus: with ``semantic_model`` the baseline field defaults to none."""
        values = super().normalize(values)
        if values.get("semantic_model") is not None and "baseline_field" not in values:
            values["baseline_field"] = None
        masks = values.get("masks")
        if isinstance(masks, str) and masks not in MaskSourceName.__args__:
            raise StageParameterError(
                "masks",
                f"unknown mask source {masks!r}",
                f"pass sam, superpixels, felzenszwalb or slic; for masks stored in a Detections field pass "
                f"masks='field:{masks}' (or masks='field', masks_field='{masks}')",
            )
        return values

    def check(self, samples: Any) -> None:
        """The mask source's checks, plus: exactly one baseline (a field or a model); a confidence heatmap
        only with a stored baseline."""
        super().check(samples)
        if self.semantic_model is None and not self.baseline_field:
            raise StageParameterError(
                "baseline_field",
                "no baseline: neither baseline_field nor semantic_model is given",
                "pass baseline_field=<Segmentation field> (e.g. from run_baseline) or semantic_model=",
            )
        if self.semantic_model is not None and self.baseline_field:
            raise StageParameterError(
                "baseline_field",
                f"both baseline_field='{self.baseline_field}' and semantic_model are given",
                "leave baseline_field empty to vote with semantic_model, or drop semantic_model",
            )
        if self.semantic_model is not None and self.confidence_field:
            raise StageParameterError(
                "confidence_field",
                "a confidence heatmap belongs to a stored baseline; semantic_model brings its own "
                "probabilities",
                "drop confidence_field, or vote with baseline_field",
            )


SEMANTIC_VOTING = StageSpec(
    name="semantic_voting",
    label="semantic voting (SSA)",
    description="SAM masks, stored masks or superpixels take the baseline's majority class (Semantic Segment "
    "Anything)",
    options=VotingOptions,
    batch_size=1,
    positional=("baseline_field", "label_field", "masks", "instances_field"),
    aliases={"semantic_field": "baseline_field", "preset": "amg_preset"},
    next_step="samseg: evaluate IoU of the voted field against ground truth (or samseg: agreement IoU with the baseline)",
)


def _confidence_map(label: Any, shape: tuple[int, int]) -> np.ndarray | None:
    """A stored ``fo.Heatmap`` as confidences in [0, 1] at image size (None when absent)."""
    if label is None:
        return None
    values = label.get_map() if hasattr(label, "get_map") else None
    if values is None:
        return None
    values = np.asarray(values)
    low, high = label.range or ((0.0, 1.0) if np.issubdtype(values.dtype, np.floating) else (0.0, 255.0))
    values = (values.astype(np.float32) - np.float32(low)) / np.float32(max(high - low, 1e-12))
    return resize_mask_nearest(values, shape) if values.shape != shape else values


def _nan_to_none(values: np.ndarray) -> list[float | None]:
    return [None if np.isnan(v) else float(v) for v in np.asarray(values, np.float64)]


def _instance_attributes(
    result: VotingResult, proposals: MaskProposals, names: Mapping[int, str]
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


@dataclass
class _Voter:
    """What one run needs per sample: the plan, options, mask source, class names and optional segmenter."""

    plan: StagePlan
    options: VotingOptions
    source: MaskSource
    class_names: dict[int, str]
    segmenter: Any = None

    def process(self, items: list[SampleItem]) -> list[StageResult]:
        """Votes each sample of a batch (the segmenter, if any, runs on the whole batch)."""
        predictions: list[Any] = [None] * len(items)
        if self.segmenter is not None:
            predictions = self.segmenter.predict([item.image for item in items], return_confidence=True)
        return [self.vote(item, prediction) for item, prediction in zip(items, predictions)]

    def baseline_of(self, item: SampleItem, prediction: Any) -> tuple[np.ndarray, Any, Any]:
        """The baseline class map at image size, its confidence map and class probabilities (or None)."""
        if prediction is not None:
            probs = prediction.probs_lowres.numpy() if prediction.probs_lowres is not None else None
            return prediction.labels, prediction.confidence, probs
        field = self.options.baseline_field
        height, width = item.image.shape[:2]
        labels = read_segmentation(item.inputs.get(field))
        if labels is None:
            raise ValueError(f"sample has no '{field}' segmentation")
        if labels.shape != (height, width):
            labels = resize_mask_nearest(labels, (height, width))
        heatmap = item.inputs.get(self.options.confidence_field) if self.options.confidence_field else None
        return labels, _confidence_map(heatmap, (height, width)), None

    def vote(self, item: SampleItem, prediction: Any) -> dict[str, Any]:
        """The outputs of one sample (and its statistics under ``STATS``)."""
        opts = self.options
        labels, confidence, probs = self.baseline_of(item, prediction)
        proposals = self.source.proposals(item)
        result = vote_masks(
            proposals, labels, mode=opts.mode, min_vote_share=opts.min_vote_share, confidence=confidence,
            probabilities=probs, topk=opts.topk, ignore_index=opts.ignore_index,
        )  # fmt: skip
        del labels, confidence, probs
        names = [self.class_names.get(int(c), str(c)) if c >= 0 else "" for c in result.mask_classes]
        attributes = _instance_attributes(result, proposals, self.class_names)
        output: dict[str, Any] = {
            opts.label_field: self.plan.segmentation(opts.label_field, result.semantic, item.id),
            STATS: {"masks": int((result.areas > 0).sum()), "accepted_masks": int(result.accepted.sum())},
        }
        if opts.instances_field:
            output[opts.instances_field] = detections_from_box_masks(
                proposals.box_masks(), names, proposals.image_size,
                confidences=np.nan_to_num(result.vote_share, nan=0.0), attributes=attributes,
            )  # fmt: skip
        if opts.json_dir is not None:
            write_ssa_json(
                os.path.join(opts.json_dir, f"{item.id}.json"), proposals,
                image={"image_id": item.id, "file_name": os.path.basename(item.filepath)},
                class_names=[n or None for n in names], class_proposals=attributes["class_proposals"],
            )  # fmt: skip
        return output


@stage(SEMANTIC_VOTING)
def semantic_voting(plan: StagePlan, options: VotingOptions) -> RunSummary:
    """Labels each mask proposal with the baseline's plurality class and paints the masks over the baseline.

    The masks come from SAM's automatic mask generator (``masks="sam"``), from a ``Detections`` field
    (``masks="field:<name>"``) or from superpixels (``"superpixels"`` / ``"felzenszwalb"`` / ``"slic"``, no
    weights; held as a label map, so 64-megapixel images need no per-region mask). Baseline pixels equal to
    ``ignore_index`` do not vote and keep their value where no accepted mask owns them.
    ``dataset.mask_targets[label_field]`` gets the baseline's (or the segmenter's) classes, merged entry by
    entry.

    Returns:
        a :class:`~samseg_core.runner.RunSummary`; ``extra`` holds ``mask_source``, ``mode``, ``masks``
        (non-empty masks voted) and ``accepted_masks``.
    """
    device = plan.run.device
    segmenter = None
    if options.semantic_model is not None:
        segmenter = resolve_model(SEMANTIC, options.semantic_model, device=device, param="semantic_model")
        class_names = {int(k): str(v) for k, v in segmenter.id2label.items()}
    else:
        class_names = mask_targets_of(plan.samples, options.baseline_field)
    source = mask_source_for(options, device)
    if class_names:
        plan.add_mask_targets(options.label_field, class_names)
    voter = _Voter(plan, options, source, class_names, segmenter)

    summary = run_stage(plan, process=voter.process)
    summary.extra.update(mask_source=source.name, mode=options.mode)
    summary.extra.update(mask_source_summary(source))
    for key in ("masks", "accepted_masks"):
        summary.extra.setdefault(key, 0)
    return summary

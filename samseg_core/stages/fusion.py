"""Calibrated fusion on a dataset: ``calibrate_fusion`` decides on labelled samples which SAM method (and
threshold) to trust for which class, stored as a run; ``apply_fusion`` writes the fused segmentation on any view.

The algorithm is :mod:`samseg_core.fusion`; the candidates' maps come from :mod:`samseg_core.fusion_methods`
(samseg's gated refinement at several no-harm gates, no-harm voting at several vote shares). Calibration splits
the labelled samples by a hash of their ids into a calibration part and a held-out part (``<key>_split`` says
which), chooses per class on the first, and checks on the second.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from samseg_core.errors import StageParameterError
from samseg_core.fusion import (
    DEFAULT_HOLDOUT,
    DEFAULT_MIN_SUPPORT,
    FUSION_METHODS,
    FusionCalibration,
    FusionTally,
    calibrate,
    fuse,
    fusion_candidates,
    split_of,
)
from samseg_core.fusion_methods import candidate_maps
from samseg_core.labels import mask_targets_of
from samseg_core.masks import resize_mask_nearest
from samseg_core.runner import STATS, RunSummary, SampleItem, run_stage
from samseg_core.stages.eval_runs import (
    FUSION,
    load_samseg_results,
    run_record_config,
    save_samseg_results,
)
from samseg_core.stages.options import (
    SEGMENTATION,
    STRING,
    OutputField,
    input_field,
    input_run,
    mask_dir_option,
    option,
    output_field,
    output_run,
)
from samseg_core.stages.plan import RunRecord, StagePlan
from samseg_core.stages.qa_common import per_item_process, require_mask
from samseg_core.stages.refinement import baseline_of, embedded_process
from samseg_core.stages.registry import StageSpec, stage
from samseg_core.stages.sam_options import MaskSourceOptions, embedding_cache_for, mask_source_for

FusionMethod = Literal["refine", "vote"]


def fusion_methods_here() -> tuple[tuple[str, ...], str]:
    """Both methods when SAM's default model has a checkpoint on this machine, else only ``vote`` (over the
    weight-free mask source the form then starts with), and why: the methods a form should start with here."""
    from samseg_core.stages.sam_options import mask_source_here

    source, _ = mask_source_here()
    if source == "sam":
        return FUSION_METHODS, ""
    return ("vote",), (
        "No SAM checkpoint on this machine, so Methods starts as 'vote' over weight-free superpixels; add 'refine' "
        "once 'SAM model' names a model you have."
    )


@dataclass(frozen=True)
class CalibrationOptions(MaskSourceOptions):
    """Options of :func:`calibrate_fusion`."""

    gt_field: str = input_field(
        "ground_truth",
        SEGMENTATION,
        "The ground-truth segmentation of the labelled samples",
        label="Ground truth",
    )
    baseline_field: str = input_field(
        "baseline", SEGMENTATION, "The baseline segmentation SAM's methods start from", label="Baseline field"
    )
    eval_key: str = output_run(
        "samseg_fusion", FUSION, "Run key of the calibration, and prefix of the per-sample <key>_split field",
        label="Calibration key",
    )  # fmt: skip
    methods: tuple[FusionMethod, ...] = option(
        FUSION_METHODS, "Methods tried per class: refine (samseg's gated refinement at gates 0.5 / 0.7 / 0.9; "
        "needs SAM) and vote (no-harm voting over the mask source at shares 0.5 / 0.7 / 0.9)", label="Methods",
        form_default=fusion_methods_here,
    )  # fmt: skip
    holdout: float = option(
        DEFAULT_HOLDOUT, "Share of the labelled samples held out to check each class's choice", ge=0.05, le=0.8,
        label="Held-out share",
    )  # fmt: skip
    min_support: int = option(
        DEFAULT_MIN_SUPPORT, "A class takes a method only if that method changes at least this many of its "
        "pixels on the calibration split; otherwise it keeps the baseline", ge=1, label="Minimum support (px)",
    )  # fmt: skip
    ignore_index: int | None = option(
        255, "Ground-truth value left out of the scores (None: none)", ge=0, le=65535
    )

    def split_field(self) -> str:
        """The per-sample field saying which split a sample was in."""
        return f"{self.eval_key}_split"

    def output_fields(self) -> list[OutputField]:
        return [OutputField(self.split_field(), STRING, "eval_key")]

    def run_record(self) -> RunRecord:
        params = {
            "gt_field": self.gt_field,
            "baseline_field": self.baseline_field,
            "methods": list(self.methods),
            "holdout": self.holdout,
            "min_support": self.min_support,
            "ignore_index": self.ignore_index,
        }
        fields = [self.split_field(), f"{self.split_field()}_error"]
        return RunRecord(self.eval_key, FUSION, run_record_config(self.eval_key, fields, params))

    def check(self, samples: Any) -> None:
        """At least one method."""
        if not self.methods:
            raise StageParameterError("methods", "no method chosen", "choose refine, vote or both")


CALIBRATE_FUSION = StageSpec(
    name="calibrate_fusion",
    label="calibrate fusion",
    description="On labelled samples, choose per class which SAM method and threshold to trust (or the "
    "baseline), checked on a held-out split",
    options=CalibrationOptions,
    batch_size=4,
    next_step="open the QA panel (per-class fusion table); samseg: apply fusion with this calibration on any view",
)


@dataclass(frozen=True)
class ApplyFusionOptions(MaskSourceOptions):
    """Options of :func:`apply_fusion`."""

    calibration: str = input_run(
        "samseg_fusion", (FUSION,), "The calibrate_fusion run whose per-class choice is applied", required=True,
        label="Calibration",
    )  # fmt: skip
    label_field: str = output_field(
        "fused", SEGMENTATION, "Output segmentation field", label="Output segmentation field"
    )
    baseline_field: str = input_field(
        "baseline", SEGMENTATION, "The baseline to fuse: the field the calibration was made with, or one from "
        "the same model on other samples", label="Baseline field",
    )  # fmt: skip
    mask_dir: str | None = mask_dir_option()


APPLY_FUSION = StageSpec(
    name="apply_fusion",
    label="apply fusion",
    description="Write the fused segmentation of a calibration on any view, labelled or not",
    options=ApplyFusionOptions,
    batch_size=4,
    positional=("calibration", "label_field"),
    next_step="samseg: evaluate IoU of the fused field (with ground truth), or samseg: agreement IoU with the baseline",
)


def _image_maps(item: SampleItem, baseline: np.ndarray, candidates, embedding, cache, source, ignore_index):
    """The candidates' maps of one sample at its baseline's resolution, and the baseline at image resolution."""
    from samseg_core.sam_embedding import prompt_image

    hw = item.image.shape[:2]
    at_image = baseline if baseline.shape == hw else resize_mask_nearest(baseline, hw)
    image = prompt_image(cache.model, embedding) if embedding is not None else None
    proposals = source.proposals(item) if source is not None else None
    maps = candidate_maps(candidates, at_image, image=image, proposals=proposals, ignore_index=ignore_index)
    if at_image.shape != baseline.shape:
        maps = {name: resize_mask_nearest(m, baseline.shape) for name, m in maps.items()}
    return maps


def _process(methods, options, device, per_item):
    """The batch process: embedded (SAM encodes the batch) when refinement is among ``methods``."""
    cache = embedding_cache_for(options, device) if "refine" in methods else None
    source = mask_source_for(options, device) if "vote" in methods else None
    if cache is None:
        return per_item_process(lambda item: per_item(item, None, None, source))
    return embedded_process(cache, lambda item, embedding: per_item(item, embedding, cache, source))


@stage(CALIBRATE_FUSION)
def calibrate_fusion(plan: StagePlan, options: CalibrationOptions) -> RunSummary:
    """Runs the candidate methods on labelled samples and chooses, per class, the one to trust.

    Every sample gets ``<eval_key>_split`` (``"calibration"`` or ``"held_out"``, by a hash of its id). Per
    class, the method and threshold whose changes into the class raise the summed mIoU of the calibration split
    most is chosen, if it is supported by ``min_support`` changed pixels and does not lose on the held-out split
    (then the fusion as a whole is checked there); other classes keep the baseline. The per-class table and the
    choice are stored as run ``eval_key``:
    ``load_fusion_calibration(dataset, key)``; the QA panel shows the table.

    Returns:
        a RunSummary; ``extra`` holds ``choice`` (class -> candidate), ``scores`` (baseline and fused summed mIoU
        per split) and ``eval_key``.
    """
    candidates = fusion_candidates(options.methods)
    names = [c.name for c in candidates]
    tallies = {"calibration": FusionTally(names), "held_out": FusionTally(names)}
    split_field = options.split_field()

    def per_item(item: SampleItem, embedding: Any, cache: Any, source: Any) -> dict[str, Any]:
        gt = require_mask(item.inputs.get(options.gt_field), options.gt_field)
        baseline = baseline_of(item, options.baseline_field)
        if gt.shape != baseline.shape:
            raise ValueError(f"ground truth is {gt.shape}, the baseline {baseline.shape}")
        maps = _image_maps(item, baseline, candidates, embedding, cache, source, options.ignore_index)
        split = split_of(item.id, options.holdout)
        return {split_field: split, STATS: (split, gt, baseline, [maps[n] for n in names])}

    def add(sample_id: str, stats: Any) -> None:
        split, gt, baseline, maps = stats
        tallies[split].add(gt, baseline, maps, options.ignore_index)

    process = _process(options.methods, options, plan.run.device, per_item)
    summary = run_stage(plan, process=process, on_result=add, rescore_skipped=True)
    targets = mask_targets_of(plan.samples, options.baseline_field)
    result = calibrate(
        tallies["calibration"], tallies["held_out"], min_support=options.min_support, class_names=targets
    )
    save_samseg_results(plan.samples, options.eval_key, calibration=result.to_dict())
    summary.extra.update(
        choice={targets.get(c, str(c)): k for c, k in result.choice.items()},
        scores=result.scores,
        eval_key=options.eval_key,
    )
    return summary


def load_fusion_calibration(samples: Any, key: str) -> FusionCalibration:
    """The stored calibration of run ``key``."""
    stored = load_samseg_results(samples, key).get("calibration")
    if not stored:
        raise ValueError(f"run '{key}' holds no fusion calibration (was calibrate_fusion interrupted?)")
    return FusionCalibration.from_dict(stored)


@stage(APPLY_FUSION)
def apply_fusion(plan: StagePlan, options: ApplyFusionOptions) -> RunSummary:
    """Writes ``label_field``: the baseline plus, for each class calibration gave a method, that method's
    changes into the class (the classes it left to the baseline stay the baseline's). Needs SAM only when some
    class was given ``refine``, a mask source only when some class was given ``vote``.

    Returns:
        a RunSummary; ``extra`` holds ``calibration`` (the key) and ``changed_pixels``.
    """
    calibration = load_fusion_calibration(plan.samples, options.calibration)
    chosen = sorted(set(calibration.choice.values()))
    candidates = [c for c in fusion_candidates(calibration.methods()) if c.name in chosen]
    baseline_field = options.baseline_field
    plan.add_mask_targets(options.label_field, mask_targets_of(plan.samples, baseline_field))

    def per_item(item: SampleItem, embedding: Any, cache: Any, source: Any) -> dict[str, Any]:
        baseline = baseline_of(item, baseline_field)
        maps = _image_maps(item, baseline, candidates, embedding, cache, source, None) if candidates else {}
        fused = fuse(baseline, maps, calibration)
        return {
            options.label_field: plan.segmentation(options.label_field, fused, item.id),
            STATS: {"changed_pixels": int(np.count_nonzero(fused != baseline))},
        }

    process = _process(calibration.methods(), options, plan.run.device, per_item)
    summary = run_stage(plan, process=process, load_images=bool(candidates))
    summary.extra.setdefault("changed_pixels", 0)
    summary.extra["calibration"] = options.calibration
    return summary

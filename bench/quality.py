"""Quality benchmark on a SAM SIMULATOR: does refinement or voting beat the baseline, and where does it harm?

Every SAM answer here comes from :mod:`samseg_core.testing.sam_simulator`, which answers from the scenes' ground
truth with an explicit, seeded error model (``--errors``: a preset of
:data:`~samseg_core.testing.sam_simulator.ERROR_PRESETS`). The figures say how samseg's methods react to those
errors; they are never the quality of SAM or of any real model.

Scenes: :func:`~samseg_core.testing.sam_simulator.make_study_scene` (make_scene's objects plus touching same-class
objects and a camouflaged pair). Settings: baseline degradations of
:func:`~samseg_core.testing.sam_simulator.study_baseline` (:data:`SETTINGS`). Methods (:data:`METHODS`): the
baseline; semantic voting over the simulator's automatic masks (plurality; no-harm at the default share 0.5);
refinement in the study's setting (one prompt set per class, candidate by baseline IoU, gate 0, empty start map)
per prompt type; samseg's default refinement (``refine_semantic`` defaults: points+box, gate
``refine.DEFAULT_GATE``, the change gates ``min_change`` and ``protect_regions``, fill baseline); and prototypes
of other gates (labelled ``proto_``; not library code). **Calibrated fusion** (:mod:`samseg_core.fusion`) is
chosen per setting on the calibration scenes (a stable ~70 % by hash) and scored on the held-out rest, beside the
baseline and the other methods on the same held-out scenes.

Per setting it prints summed mIoU (one confusion matrix over all images), the mean of per-image mIoUs and mean
boundary IoU (width 2% of the diagonal), each with its difference from the baseline, then a matrix of the mean
per-image mIoU differences, and last::

    no harm: default fusion >= baseline in <k>/<n> settings

where "default fusion" is samseg's default refinement, compared on mean per-image mIoU over all scenes; the line
before it says the same of calibrated fusion on the held-out scenes.

    python bench/quality.py [--scenes 24] [--seed 0] [--errors moderate|harsh|perfect]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from scipy import ndimage

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from samseg_core.fusion import FusionTally, calibrate, fuse, fusion_candidates, split_of  # noqa: E402
from samseg_core.fusion_methods import candidate_maps  # noqa: E402
from samseg_core.mask_sources import MaskProposals  # noqa: E402
from samseg_core.metrics import ConfusionAccumulator, IoUOptions, score_masks  # noqa: E402
from samseg_core.models.promptable import PromptImage  # noqa: E402
from samseg_core.prompts import prompt_sets_from_semantic  # noqa: E402
from samseg_core.refine import (  # noqa: E402
    DEFAULT_GATE,
    STUDY_SETTINGS,
    aggregate_masks,
    refine_prompt_sets,
    refine_semantic,
)
from samseg_core.sam_embedding import EmbeddingCache  # noqa: E402
from samseg_core.testing.sam_simulator import (  # noqa: E402
    ERROR_PRESETS,
    SimulatedMaskSource,
    SimulatedSam,
    make_study_scenes,
    study_baseline,
)
from samseg_core.voting import vote_masks  # noqa: E402

NUM_CLASSES = 6

#: Baseline degradations (keyword arguments of ``study_baseline``).
SETTINGS: dict[str, dict] = {
    "exact": {},
    "near_perfect": {"wobble_px": 0.4},
    "blur_2": {"blur_radius": 2},
    "blur_4": {"blur_radius": 4},
    "eroded_1": {"erosion_px": 1},
    "eroded_2": {"erosion_px": 2},
    "partial_objects": {"partial": 3, "wobble_px": 0.4},
    "class_confusion": {"confusion": 0.3, "wobble_px": 0.4},
    "missed_objects": {"missed": 3, "wobble_px": 0.4},
    "merged_objects": {"merge": True, "blur_radius": 1},
}

#: The study's setting (``samseg_core.refine.STUDY_SETTINGS``, which the prompt study uses too).
STUDY = STUDY_SETTINGS
#: The study's prompt types (``STUDY_CONFIGS``' Table 2 rows).
STUDY_PROMPTS = {
    "point": ("point",),
    "points": ("points",),
    "box": ("box",),
    "points_box": ("points", "box"),
    "points_box_mask": ("points", "box", "mask"),
}
#: The method whose no-harm count ends the output: samseg's default refinement.
DEFAULT_FUSION = "default_refine"
CALIBRATED = "calibrated_fusion"
#: Share of the scenes held out from calibration, and the minimum support of a class's choice (px).
HOLDOUT, MIN_SUPPORT = 0.3, 200
#: Methods shown beside calibrated fusion on the held-out scenes.
HELD_OUT_METHODS = ("baseline", "vote_no_harm", DEFAULT_FUSION)


@dataclass
class Case:
    """One image of one setting: what every method gets."""

    gt: np.ndarray
    baseline: np.ndarray
    image: PromptImage
    proposals: MaskProposals
    split: str = "calibration"


def _vote(mode: str, **kwargs) -> Callable[[Case], np.ndarray]:
    return lambda case: vote_masks(case.proposals, case.baseline, mode=mode, **kwargs).semantic


def _refine(**settings) -> Callable[[Case], np.ndarray]:
    return lambda case: refine_semantic(case.image, case.baseline, **settings).semantic


METHODS: dict[str, Callable[[Case], np.ndarray]] = {
    "baseline": lambda case: case.baseline,
    "vote_plurality": _vote("plurality"),
    "vote_no_harm": _vote("no_harm"),
    **{f"study_{name}": _refine(prompts=prompts, **STUDY) for name, prompts in STUDY_PROMPTS.items()},
    DEFAULT_FUSION: _refine(),
}


# --------------------------------------------------------------------------------------------------- prototypes


def boundary_distance(labels: np.ndarray) -> np.ndarray:
    """Per pixel, the distance (px) to the nearest pixel of the label map with a 4-neighbour of another class."""
    edge = np.zeros(labels.shape, bool)
    edge[:, 1:] |= labels[:, 1:] != labels[:, :-1]
    edge[:, :-1] |= labels[:, 1:] != labels[:, :-1]
    edge[1:] |= labels[1:] != labels[:-1]
    edge[:-1] |= labels[1:] != labels[:-1]
    if not edge.any():
        return np.full(labels.shape, np.inf)
    return ndimage.distance_transform_edt(~edge)


def change_band(baseline: np.ndarray, result: np.ndarray, dead_px: int, reach_px: float) -> np.ndarray:
    """PROTOTYPE gate: ``result``'s changes kept only between ``dead_px`` and ``reach_px`` of the baseline's
    class boundaries; the first ``dead_px`` pixels (SAM's boundary noise) and far pixels keep the baseline."""
    distance = boundary_distance(baseline)
    keep = (distance > dead_px - 1) & (distance <= reach_px)
    return np.where(keep, result, baseline)


def _banded(method: Callable[[Case], np.ndarray], dead_px: int, reach_px: float = np.inf):
    return lambda case: change_band(case.baseline, method(case), dead_px, reach_px)


def perimeter(mask: np.ndarray) -> float:
    """Boundary length (px) of a mask inside the image: 4-neighbour edges times pi / 4."""
    edges = np.count_nonzero(mask[:, 1:] != mask[:, :-1]) + np.count_nonzero(mask[1:] != mask[:-1])
    return max(edges * np.pi / 4, 1.0)


def swallows(
    changed: np.ndarray, class_id: int, baseline: np.ndarray, min_area: int = 16, min_depth: float = 0.0
) -> bool:
    """Whether ``changed`` pixels (to ``class_id``) cover at least half of a baseline region of another class of
    ``min_area`` px or more; with ``min_depth``, only of a solid one, with a pixel that deep inside it (a band or
    ring a few px wide is then taken for the baseline's boundary error, free to be fixed)."""
    for other in np.unique(baseline[changed]):
        if other == class_id:
            continue
        region = baseline == other
        components, count = ndimage.label(region)
        areas = np.bincount(components.ravel())
        inside = np.bincount(components[changed].ravel(), minlength=areas.size)
        hit = (areas >= min_area) & (inside >= 0.5 * areas)
        hit[0] = False
        if min_depth > 0 and hit.any():
            inner = ndimage.distance_transform_edt(region)
            hit &= np.asarray(ndimage.maximum(inner, components, index=np.arange(count + 1))) >= min_depth
        if hit.any():
            return True
    return False


def shift_gated_refine(
    prompts: tuple[str, ...] = ("points", "box"),
    min_shift: float | None = 1.0,
    swallow: bool = True,
    solid: float = 0.0,
    **settings,
) -> Callable[[Case], np.ndarray]:
    """PROTOTYPE refinement gate: samseg's default gate, then a candidate is kept only if the pixels it would
    change (mask pixels outside its baseline region: with ``fill="baseline"`` nothing else changes) amount to at
    least ``min_shift`` px per px of the region's boundary (below that SAM only moves the baseline's boundary
    within its own boundary noise) and, with ``swallow``, cover less than half of every baseline region of
    another class (``solid``: only of regions with a pixel that deep inside, see :func:`swallows`).
    ``min_shift=None``: instead of a fixed shift, the changed pixels must outnumber the pixels SAM expects to get
    wrong, ``(1 - predicted IoU) * area`` of the candidate."""

    def method(case: Case) -> np.ndarray:
        model = case.image.model
        sets = prompt_sets_from_semantic(
            case.baseline, prompts, encoder_size=int(model.input_size), pad=bool(model.pads_input), **settings
        )
        regions = refine_prompt_sets(case.image, case.baseline, sets).regions
        keep = regions.accepted.copy()
        for i in np.flatnonzero(keep):
            mask, region = regions.masks[i], sets[i].region_mask
            changed = mask & (case.baseline != regions.class_ids[i])
            if min_shift is None:
                enough = np.count_nonzero(changed) >= (1 - regions.predicted_iou[i]) * mask.sum()
            else:
                enough = np.count_nonzero(changed) / perimeter(region) >= min_shift
            keep[i] = enough and not (
                swallow and swallows(changed, regions.class_ids[i], case.baseline, min_depth=solid)
            )
        start = torch.as_tensor(case.baseline.astype(np.int64))
        painted = aggregate_masks(
            start, torch.as_tensor(regions.masks[keep]), torch.as_tensor(regions.class_ids[keep])
        )
        return painted.numpy().astype(case.baseline.dtype)

    return method


def owners(masks: np.ndarray) -> np.ndarray:
    """Per pixel, the index of the smallest mask covering it (voting's painting order), -1 where none does."""
    areas = masks.reshape(len(masks), -1).sum(axis=1)
    owner = np.full(masks.shape[1:], -1, np.int64)
    for i in np.lexsort((np.arange(len(masks)), -areas)):  # largest first, equal areas: lower index first
        owner[masks[i]] = i
    return owner


def shift_gated_vote(min_shift: float | None = 1.0, swallow: bool = True) -> Callable[[Case], np.ndarray]:
    """PROTOTYPE voting gate: no-harm voting, then a mask keeps its pixels' baseline classes unless the pixels it
    would flip amount to at least ``min_shift`` px per px of its boundary (``flipped / perimeter(mask)``) and,
    with ``swallow``, cover less than half of every baseline region of another class. ``min_shift=None``: the
    flipped pixels must outnumber ``(1 - predicted IoU) * area`` of the mask instead."""

    def method(case: Case) -> np.ndarray:
        masks = case.proposals.masks
        voted = vote_masks(case.proposals, case.baseline, mode="no_harm")
        owner = owners(masks)
        accepted = voted.accepted.copy()
        for i in np.flatnonzero(accepted):
            c = int(voted.mask_classes[i])
            flipped = (owner == i) & (case.baseline != c)
            if flipped.any():
                if min_shift is None:
                    expected = (1 - case.proposals.predicted_iou[i]) * masks[i].sum()
                    enough = np.count_nonzero(flipped) >= expected
                else:
                    enough = np.count_nonzero(flipped) / perimeter(masks[i]) >= min_shift
                accepted[i] = enough and not (swallow and swallows(flipped, c, case.baseline))
        relabel = (owner >= 0) & accepted[np.maximum(owner, 0)]
        return np.where(relabel, voted.mask_classes[np.maximum(owner, 0)], case.baseline).astype(np.int32)

    return method


def thick_changes(
    baseline: np.ndarray, result: np.ndarray, radius: int = 1, swallow: bool = True
) -> np.ndarray:
    """PROTOTYPE pixel gate: ``result``'s changes kept only where they are thicker than SAM's boundary noise
    (the changed pixels opened with a disk of ``radius``: a band of ``2 * radius`` px or less along a boundary
    goes), and, with ``swallow``, only changed chunks covering less than half of every baseline region."""
    disk = np.hypot(*np.mgrid[-radius : radius + 1, -radius : radius + 1]) <= radius
    kept = ndimage.binary_opening(result != baseline, structure=disk)
    if swallow and kept.any():
        chunks, count = ndimage.label(kept)
        for k in range(1, count + 1):
            chunk = chunks == k
            if swallows(chunk, -1, baseline):
                kept &= ~chunk
    return np.where(kept, result, baseline)


def _thick(method: Callable[[Case], np.ndarray], radius: int = 1) -> Callable[[Case], np.ndarray]:
    return lambda case: thick_changes(case.baseline, method(case), radius)


PROTOTYPES: dict[str, Callable[[Case], np.ndarray]] = {
    "proto_refine_dead1": _banded(_refine(), 1),
    "proto_vote_dead1": _banded(_vote("no_harm"), 1),
    "proto_refine_thick1": _thick(_refine()),
    "proto_vote_thick1": _thick(_vote("no_harm")),
    "proto_refine_pbm_shift1_swallow": shift_gated_refine(prompts=("points", "box", "mask")),
    "proto_refine_pbm_shift1_swallow_solid": shift_gated_refine(prompts=("points", "box", "mask"), solid=2.5),
    "proto_refine_expected_swallow": shift_gated_refine(min_shift=None),
    "proto_vote_shift1_swallow": shift_gated_vote(),
    "proto_vote_expected_swallow": shift_gated_vote(min_shift=None),
}
METHODS.update(PROTOTYPES)


# --------------------------------------------------------------------------------------------------- running


def build_cases(args: argparse.Namespace) -> dict[str, list[Case]]:
    """The scenes, the simulator, and every setting's baselines."""
    scenes = make_study_scenes(args.scenes, seed=args.seed)
    sim = SimulatedSam(scenes, ERROR_PRESETS[args.errors], seed=args.seed)
    cache = EmbeddingCache(sim, max_items=len(scenes))
    source = SimulatedMaskSource(sim)
    images = [cache.prompt_image(str(i), scene.image) for i, scene in enumerate(scenes)]
    proposals = [source.proposals_for(sim.scene_index(scene.image)) for scene in scenes]
    cases = {}
    for s, (name, degradation) in enumerate(SETTINGS.items()):
        cases[name] = [
            Case(
                scene.semantic,
                study_baseline(scene, args.seed + 1000 * s + i, **degradation),
                image,
                props,
                split_of(f"scene{i}", HOLDOUT),
            )
            for i, (scene, image, props) in enumerate(zip(scenes, images, proposals))
        ]
    return cases


def score(cases: list[Case], methods: dict[str, Callable[[Case], np.ndarray]]) -> dict[str, tuple]:
    """``{method: (summed mIoU, mean per-image mIoU, mean boundary IoU)}`` over the cases."""
    options = IoUOptions(known_classes=NUM_CLASSES)
    totals = {name: ConfusionAccumulator() for name in methods}
    for case in cases:
        for name, method in methods.items():
            totals[name].add(score_masks(case.gt, method(case), options))
    out = {}
    for name, acc in totals.items():
        summary = acc.summary({})
        out[name] = (summary["summed"]["miou"], summary["mean_of_images"], summary["boundary_iou_mean"])
    return out


def calibrated_fusion(cases: list[Case]) -> Callable[[Case], np.ndarray]:
    """Calibrates on the cases of the calibration split; returns the fused map of a case as a method."""
    candidates = fusion_candidates()
    names = [c.name for c in candidates]
    tallies = {"calibration": FusionTally(names), "held_out": FusionTally(names)}
    maps = {}
    for case in cases:
        maps[id(case)] = candidate_maps(candidates, case.baseline, image=case.image, proposals=case.proposals)
        tallies[case.split].add(case.gt, case.baseline, [maps[id(case)][n] for n in names])
    result = calibrate(tallies["calibration"], tallies["held_out"], min_support=MIN_SUPPORT)
    return lambda case: fuse(case.baseline, maps[id(case)], result)


def score_held_out(cases: list[Case]) -> dict[str, tuple]:
    """The held-out scenes' scores of calibrated fusion and of :data:`HELD_OUT_METHODS`."""
    methods = {name: METHODS[name] for name in HELD_OUT_METHODS}
    methods[CALIBRATED] = calibrated_fusion(cases)
    return score([case for case in cases if case.split == "held_out"], methods)


# --------------------------------------------------------------------------------------------------- printing


def _cell(value: float, base: float, first: bool) -> str:
    return f"{value:.4f}        " if first else f"{value:.4f} {value - base:+.4f}"


def print_setting(name: str, results: dict[str, tuple]) -> None:
    """One setting's table: each metric with its difference from the baseline."""
    degradation = ", ".join(f"{k}={v}" for k, v in SETTINGS[name].items()) or "ground truth"
    print(f"\n== {name} ({degradation})")
    print(f"{'method':38s} {'summed mIoU':>15s} {'mean mIoU':>15s} {'boundary IoU':>15s}")
    base = results["baseline"]
    for method, values in results.items():
        cells = [_cell(v, b, method == "baseline") for v, b in zip(values, base)]
        print(f"{method:38s} " + " ".join(f"{c:>15s}" for c in cells))


def print_matrix(all_results: dict[str, dict[str, tuple]]) -> None:
    """Differences of mean per-image mIoU from the baseline, methods x settings, and each method's no-harm count."""
    settings = list(all_results)
    methods = list(next(iter(all_results.values())))
    print("\n== mean per-image mIoU minus the baseline's (first row: the baseline's own)")
    print(f"{'method':38s} " + " ".join(f"{name[:8]:>8s}" for name in settings) + "  >=base")
    for method in methods:
        if method == "baseline":
            cells = [f"{all_results[s]['baseline'][1]:8.4f}" for s in settings]
            print(f"{method:38s} " + " ".join(cells))
            continue
        deltas = [all_results[s][method][1] - all_results[s]["baseline"][1] for s in settings]
        wins, n = no_harm_count(all_results, method)
        print(f"{method:38s} " + " ".join(f"{d:+8.4f}" for d in deltas) + f"  {wins:2d}/{n}")


def no_harm_count(all_results: dict[str, dict[str, tuple]], method: str = DEFAULT_FUSION) -> tuple[int, int]:
    """Settings where ``method``'s mean per-image mIoU is at least the baseline's, and the number of settings."""
    wins = sum(r[method][1] >= r["baseline"][1] - 1e-12 for r in all_results.values())
    return wins, len(all_results)


def main(argv: list[str] | None = None) -> None:
    """Runs every setting and method and prints the tables and the no-harm line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenes", type=int, default=24, help="scenes per setting")
    parser.add_argument("--seed", type=int, default=0, help="seed of scenes, baselines and simulator")
    parser.add_argument("--errors", choices=sorted(ERROR_PRESETS), default="moderate", help="error preset")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    start = time.perf_counter()
    errors = ERROR_PRESETS[args.errors]
    print("SIMULATED: every SAM answer below comes from samseg_core.testing.sam_simulator, not from a model;")
    print("these figures are NOT the quality of SAM or of any real model.")
    print(f"error model {args.errors!r}: " + ", ".join(f"{k}={v}" for k, v in vars(errors).items()))
    print(
        f"scenes: {args.scenes} study scenes (128x160), seed {args.seed}; refine gate default {DEFAULT_GATE}"
    )
    cases = build_cases(args)
    held = sum(case.split == "held_out" for case in next(iter(cases.values())))
    print(f"calibrated fusion: chosen on {args.scenes - held} scenes, scored on {held} held-out scenes")
    all_results, held_out = {}, {}
    for name, setting_cases in cases.items():
        all_results[name] = score(setting_cases, METHODS)
        print_setting(name, all_results[name])
    for name, setting_cases in cases.items():
        held_out[name] = score_held_out(setting_cases)
    print_matrix(all_results)
    print(f"\n== held-out scenes ({held}): calibrated fusion vs the baseline and default methods")
    print_matrix(held_out)
    print(f"\n({time.perf_counter() - start:.0f} s)")
    wins, n = no_harm_count(held_out, CALIBRATED)
    print(f"no harm: calibrated fusion >= baseline in {wins}/{n} settings (held-out scenes)")
    wins, n = no_harm_count(all_results)
    print(f"no harm: default fusion >= baseline in {wins}/{n} settings")


if __name__ == "__main__":
    main()

"""A valid call of every registered stage on one small synthetic dataset, for tests that run over the registry.

:func:`contract_dataset` fills a dataset with what every stage can read (ground truth, a degraded baseline, a
heatmap, stored masks, a user note field, an IoU run and a failure run); :func:`stage_example` gives the keyword
arguments of a valid, quick call of a stage on it, naming every model by a string (a saved directory or a
``module:function`` spec), so the same call also goes through an operator. A stage added to the registry needs
an entry in :data:`EXAMPLES`; the contract tests fail until it has one.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from samseg_core.testing.scenes import degrade_prediction, make_scenes, write_scene_images

TINY_SAM = "samseg_core.testing:tiny_sam"
TINY_CLIP = "samseg_core.testing.tiny_engine_models:tiny_clip_dir"
TINY_BLIP = "samseg_core.testing.tiny_engine_models:tiny_blip_dir"
TINY_CLIPSEG = "samseg_core.testing.tiny_engine_models:tiny_clipseg_dir"
IOU_KEY, FAILURES_KEY, FUSION_KEY = "ex_iou", "ex_failures", "ex_fusion"


def contract_dataset(dataset: Any, workdir: str | os.PathLike, num_samples: int = 3) -> Any:
    """Fills ``dataset`` with ``num_samples`` synthetic scenes and the fields and runs the examples read."""
    import fiftyone as fo

    from samseg_core.mask_targets import merge_mask_targets
    from samseg_core.stages.evaluation import evaluate_iou
    from samseg_core.stages.failure_modes import detect_failures
    from samseg_core.stages.fusion import calibrate_fusion

    scenes = make_scenes(num_samples, seed=0, size=(96, 112))
    paths = write_scene_images(scenes, Path(workdir) / "images")
    samples = []
    for i, (scene, path) in enumerate(zip(scenes, paths)):
        instances = [
            fo.Detection.from_mask(inst.mask, label=scene.class_names[inst.class_id])
            for inst in scene.instances
            if inst.area > 0
        ]
        samples.append(
            fo.Sample(
                filepath=str(path),
                ground_truth=fo.Segmentation(mask=scene.semantic.astype(np.uint8)),
                baseline=fo.Segmentation(mask=degrade_prediction(scene, seed=i).astype(np.uint8)),
                baseline_conf=fo.Heatmap(map=np.full(scene.semantic.shape, 0.7, np.float32), range=[0, 1]),
                sa1b=fo.Detections(detections=instances),
                note=f"user note {i}",
            )
        )
    dataset.add_samples(samples)
    merge_mask_targets(dataset, "ground_truth", scenes[0].class_names)
    merge_mask_targets(dataset, "baseline", scenes[0].class_names)
    evaluate_iou(dataset, "baseline", "ground_truth", eval_key=IOU_KEY)
    detect_failures(dataset, "baseline", "ground_truth", eval_key=FAILURES_KEY)
    calibrate_fusion(
        dataset, eval_key=FUSION_KEY, methods=("vote",), masks="slic", min_support=1, device="cpu"
    )
    return dataset


def _segformer_dir(workdir: Path) -> str:
    from samseg_core.testing.scenes import class_names_for
    from samseg_core.testing.tiny_models import save_tiny_segformer

    target = workdir / "tiny_segformer"
    if not (target / "config.json").exists():
        save_tiny_segformer(target, class_names_for(6))
    return str(target)


def _baseline(workdir: Path) -> dict[str, Any]:
    return {"model": _segformer_dir(workdir), "label_field": "ex_baseline", "confidence_field": "ex_conf",
            "mask_dir": str(workdir / "masks")}  # fmt: skip


def _refinement(workdir: Path) -> dict[str, Any]:
    return {"baseline_field": "baseline", "sam": TINY_SAM, "label_field": "ex_refined",
            "instances_field": "ex_regions", "mask_dir": str(workdir / "masks")}  # fmt: skip


def _prompt_study(workdir: Path) -> dict[str, Any]:
    return {"baseline_field": "baseline", "gt_field": "ground_truth", "sam": TINY_SAM, "configs": ("box",),
            "field_prefix": "ex_study_"}  # fmt: skip


def _voting(workdir: Path) -> dict[str, Any]:
    return {"baseline_field": "baseline", "masks": "slic", "label_field": "ex_ssa", "instances_field": "ex_masks",
            "confidence_field": "baseline_conf", "mask_dir": str(workdir / "masks")}  # fmt: skip


def _engine(workdir: Path) -> dict[str, Any]:
    return {"label_field": "ex_engine", "segmentation_field": "ex_engine_seg", "masks": "field",
            "masks_field": "sa1b", "baseline_fields": ("baseline",), "semantic_models": (), "clip": TINY_CLIP,
            "captioner": TINY_BLIP, "clipseg": TINY_CLIPSEG, "min_area": 1}  # fmt: skip


def _evaluate(workdir: Path) -> dict[str, Any]:
    return {"pred_field": "baseline", "gt_field": "ground_truth", "eval_key": "ex_eval"}


def _agreement(workdir: Path) -> dict[str, Any]:
    return {
        "pred_field": "ground_truth",
        "baseline_field": "baseline",
        "eval_key": "ex_agree",
        "masks_field": "sa1b",
    }


def _failures(workdir: Path) -> dict[str, Any]:
    return {"pred_field": "baseline", "gt_field": "ground_truth", "eval_key": "ex_fail"}


def _queue(workdir: Path) -> dict[str, Any]:
    return {"eval_key": IOU_KEY, "failures_key": FAILURES_KEY, "name": "ex_queue", "max_samples": 2}


def _calibration(workdir: Path) -> dict[str, Any]:
    return {"gt_field": "ground_truth", "baseline_field": "baseline", "eval_key": "ex_calibration",
            "sam": TINY_SAM, "masks": "slic", "min_support": 1}  # fmt: skip


def _apply_fusion(workdir: Path) -> dict[str, Any]:
    return {"calibration": FUSION_KEY, "label_field": "ex_fused", "masks": "slic",
            "mask_dir": str(workdir / "masks")}  # fmt: skip


EXAMPLES: dict[str, Callable[[Path], dict[str, Any]]] = {
    "run_baseline": _baseline,
    "refine_with_sam": _refinement,
    "prompt_study": _prompt_study,
    "semantic_voting": _voting,
    "open_vocab_labels": _engine,
    "evaluate_iou": _evaluate,
    "agreement_iou": _agreement,
    "detect_failures": _failures,
    "build_relabel_queue": _queue,
    "calibrate_fusion": _calibration,
    "apply_fusion": _apply_fusion,
}


def stage_example(name: str, workdir: str | os.PathLike) -> dict[str, Any]:
    """Keyword arguments of a valid, quick CPU call of stage ``name`` on :func:`contract_dataset`."""
    if name not in EXAMPLES:
        raise KeyError(
            f"stage '{name}' has no example in samseg_core.testing.stage_examples.EXAMPLES: add one"
        )
    return {**EXAMPLES[name](Path(workdir)), "device": "cpu"}

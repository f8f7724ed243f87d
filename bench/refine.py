"""Benchmark: SAM refinement with all prompt sets of an image in one batched decoder call vs one
``SamPredictor.predict`` call per prompt set (what the study's code and SSA-style loops do).

Both paths share one precomputed image embedding, use the same prompt sets, selection, gate and aggregation,
and must give the same map; only the decoder calls differ. Random weights (timing only, no quality).

    python bench/refine.py                       # tiny SAM, CPU
    python bench/refine.py --model vit_b --device cuda

Last line: ``refine speedup vs per-prompt loop: <N>x``.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from samseg_core.models.device import resolve_device
from samseg_core.prompts import prompt_sets_from_semantic
from samseg_core.refine import aggregate_masks, refine_prompt_sets
from samseg_core.sam_embedding import EmbeddingCache
from samseg_core.testing import degrade_prediction, make_scene, tiny_sam


def build_sam(model: str, device: torch.device):
    """Returns a random-weight SAM: the tiny test model or a full-size registry architecture."""
    if model == "tiny":
        return tiny_sam().to(device)
    from segment_anything import sam_model_registry

    torch.manual_seed(0)
    return sam_model_registry[model](checkpoint=None).to(device).eval()


def reference_predictor(sam, embedding):
    """A ``SamPredictor`` set to a cached embedding, as if ``set_image`` had run (the loop's reference)."""
    from segment_anything import SamPredictor

    predictor = SamPredictor(sam)
    predictor.features = embedding.features
    predictor.input_size = embedding.input_size
    predictor.original_size = embedding.original_size
    predictor.is_image_set = True
    return predictor


@torch.inference_mode()
def per_prompt_loop(predictor, baseline, prompt_sets, gate):
    """The unbatched reference: one ``predict`` per prompt set, selection and gate per set in numpy."""
    masks, ious, scores, classes = [], [], [], []
    for p in prompt_sets:
        logits, predicted, _ = predictor.predict(
            point_coords=p.points if len(p.points) else None,
            point_labels=p.point_labels if len(p.points) else None,
            box=p.box,
            mask_input=p.mask_input[None] if p.mask_input is not None else None,
            multimask_output=True,
            return_logits=True,
        )
        candidates = logits > 0
        inter = (candidates & p.region_mask).sum(axis=(1, 2))
        union = (candidates | p.region_mask).sum(axis=(1, 2))
        iou = inter / np.maximum(union, 1)
        best = int(np.argmax(iou))
        masks.append(candidates[best])
        ious.append(iou[best])
        scores.append(predicted[best])
        classes.append(p.class_id)
    keep = np.asarray(ious) >= gate
    return aggregate_masks(
        torch.as_tensor(baseline.astype(np.int64)),
        torch.as_tensor(np.stack(masks)[keep]),
        torch.as_tensor(classes)[torch.as_tensor(keep)],
        torch.as_tensor(np.asarray(scores, dtype=np.float32)[keep]),
    ).numpy()


def _paired_timings(fns, repeats: int, device: torch.device) -> tuple[list[list[float]], list[object]]:
    """Times each function once per round, alternating, after a warm-up; returns per-function timings and the
    last outputs. Alternating exposes both paths to the same load on a shared machine."""
    outputs = [fn() for fn in fns]  # warm-up
    timings: list[list[float]] = [[] for _ in fns]
    for _ in range(repeats):
        for i, fn in enumerate(fns):
            if device.type == "cuda":
                torch.cuda.synchronize()
            started = time.perf_counter()
            outputs[i] = fn()
            if device.type == "cuda":
                torch.cuda.synchronize()
            timings[i].append(time.perf_counter() - started)
    return timings, outputs


def main() -> None:
    """Runs the benchmark and prints the timings and the speedup."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny", choices=["tiny", "vit_b", "vit_l", "vit_h"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--size", type=int, nargs=2, default=(256, 320), metavar=("H", "W"))
    parser.add_argument("--prompts", default="points,box")
    parser.add_argument("--granularity", default="region", choices=["class", "region"])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--gate", type=float, default=0.5)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    args = parser.parse_args()

    device = resolve_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.set_grad_enabled(False)
    cache = EmbeddingCache(build_sam(args.model, device))
    scene = make_scene(0, size=tuple(args.size), num_classes=11)
    baseline = degrade_prediction(scene)
    started = time.perf_counter()
    image = cache.prompt_image("bench", scene.image)
    encode_s = time.perf_counter() - started
    predictor = reference_predictor(cache.sam, cache.get("bench", scene.image))
    prompt_sets = prompt_sets_from_semantic(
        baseline, args.prompts, args.granularity, encoder_size=cache.model.input_size
    )
    print(
        f"model {args.model} on {device}, image {args.size[0]}x{args.size[1]}, "
        f"{len(prompt_sets)} prompt sets "
        f"({args.prompts}, per {args.granularity}); embedding once: {encode_s:.3f} s"
    )
    timings, (batched, looped) = _paired_timings(
        [
            lambda: refine_prompt_sets(image, baseline, prompt_sets, gate=args.gate).semantic,
            lambda: per_prompt_loop(predictor, baseline, prompt_sets, args.gate),
        ],
        args.repeats,
        device,
    )
    batched_s, loop_s = (float(np.median(t)) for t in timings)
    ratio = float(np.median(np.asarray(timings[1]) / np.asarray(timings[0])))  # median of paired ratios
    agree = float((np.asarray(batched) == np.asarray(looped)).mean())
    print(f"batched decoder call: {batched_s * 1000:.1f} ms/image (median of {args.repeats})")
    print(f"per-prompt predict loop: {loop_s * 1000:.1f} ms/image (median of {args.repeats})")
    print(f"pixels agreeing between the two: {agree:.4f}")
    print(f"refine speedup vs per-prompt loop: {ratio:.2f}x")


if __name__ == "__main__":
    main()

"""Benchmark: the batched SSA-engine vs SSA's per-mask loop on one image with 100 masks (tiny random models).

Both use the same tiny random-init CLIP (open_clip), BLIP and CLIPSeg (transformers) in this process, on CPU.
The per-mask loop is written here the way SSA's engine runs: for each mask one BLIP ``generate``, the CLIP text
embeddings of its candidates recomputed, one CLIP image forward, and one CLIPSeg forward on (crop, text) pairs
(the model's own forward, which repeats the vision tower per text). Crops and the final decision rule are the
engine's, so outputs can be compared: captions, CLIP proposals and chosen classes must match. Random weights:
the classes are arbitrary, the timings are not.

    python bench/engine.py [--masks 100] [--batch-size 32] [--repeats 3] [--threads 1]

Timings are medians over ``--repeats`` runs. One torch thread by default: the tiny models are latency-bound,
and on a shared 2-core machine more threads mostly measure the neighbours' load.

The last line is ``engine speedup vs per-mask loop: <N>x``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from typing import Any

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from samseg_core.engine import (  # noqa: E402
    MaskLabel,
    OpenVocabEngine,
    crop_boxes,
    cut_crops,
    image_tensor,
    sample_masks_in_boxes,
)
from samseg_core.masks import masks_to_boxes_xyxy  # noqa: E402
from samseg_core.models.caption import load_captioner  # noqa: E402
from samseg_core.models.clip import load_clip  # noqa: E402
from samseg_core.models.clipseg import load_clipseg  # noqa: E402
from samseg_core.nouns import merge_class_names, noun_phrases  # noqa: E402
from samseg_core.testing import tiny_engine_models as tiny  # noqa: E402

HEIGHT, WIDTH, TOPK = 240, 320, 3


def make_image_and_masks(num_masks: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A smooth random RGB image and ``num_masks`` ellipse masks of 60..6000 pixels."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (HEIGHT // 16, WIDTH // 16, 3), dtype=np.uint8)
    image = np.repeat(np.repeat(coarse, 16, axis=0), 16, axis=1)
    yy, xx = np.mgrid[:HEIGHT, :WIDTH]
    cy, cx = rng.uniform(0, HEIGHT, num_masks), rng.uniform(0, WIDTH, num_masks)
    ry, rx = np.exp(rng.uniform(np.log(5), np.log(45), (2, num_masks)))
    masks = ((yy[None] - cy[:, None, None]) / ry[:, None, None]) ** 2 + (
        (xx[None] - cx[:, None, None]) / rx[:, None, None]
    ) ** 2 <= 1.0
    return image, masks


def build_models(batch_size: int) -> dict[str, Any]:
    """Fresh wrappers (zero counters, empty caches) over the tiny random models, on CPU."""
    return {
        "clip": load_clip(tiny.tiny_open_clip(), device="cpu", batch_size=batch_size),
        "captioner": load_captioner(tiny.tiny_blip(), device="cpu", batch_size=batch_size),
        "clipseg": load_clipseg(tiny.tiny_clipseg(), device="cpu", batch_size=batch_size),
    }


def per_mask_loop(
    image: np.ndarray, masks: np.ndarray, models: dict[str, Any]
) -> tuple[list[MaskLabel], int]:
    """SSA's order of work: every model called once per mask. Returns labels and the number of model calls."""
    clip, captioner, clipseg = models["clip"], models["captioner"], models["clipseg"]
    height, width = image.shape[:2]
    picture = image_tensor(image, torch.device("cpu"))
    labels, calls = [], 0
    for mask in masks:
        box = masks_to_boxes_xyxy(mask[None])
        crop = cut_crops(
            [picture], np.zeros(1, int), crop_boxes(box, 1.6, height, width), captioner.image_size, "cpu"
        )
        caption = captioner.caption(crop)[0]
        candidates = sorted(merge_class_names(noun_phrases(caption)))
        calls += 1
        if not candidates:
            labels.append(MaskLabel("unknown", caption=caption, skipped_reason="no candidate classes"))
            continue
        clip.clear_cache()  # SSA's CLIPProcessor encodes the class names again on every call
        text = clip.text_embeddings(candidates)
        crop = cut_crops(
            [picture], np.zeros(1, int), crop_boxes(box, 1.2, height, width), clip.image_size, "cpu"
        )
        logits = (clip.image_embeddings(crop) @ text.T)[0] * clip.logit_scale
        order = torch.sort(logits, descending=True, stable=True).indices[:TOPK]
        proposals = [candidates[j] for j in order.tolist()]
        calls += 2
        seg_box = crop_boxes(box, 1.6, height, width)
        crop = cut_crops([picture], np.zeros(1, int), seg_box, clipseg.image_size, "cpu")
        tokens = clipseg.processor.tokenizer(proposals, padding=True, return_tensors="pt")
        pixels = ((crop - clipseg.mean) / clipseg.std).expand(len(proposals), -1, -1, -1)
        with torch.inference_mode():
            maps = clipseg.model(**tokens, pixel_values=pixels).logits.reshape(
                len(proposals), *crop.shape[-2:]
            )
        calls += 1
        weight = torch.from_numpy(sample_masks_in_boxes(mask[None], seg_box, tuple(maps.shape[-2:]))).float()
        scores = torch.sigmoid((maps * weight).sum(dim=(1, 2)) / weight.sum()).numpy()
        best = int(np.argmax(scores))
        labels.append(MaskLabel(proposals[best], float(scores[best]), proposals, caption=caption))
    return labels, calls


def main() -> None:
    """Runs both versions, checks their outputs agree, prints timings; the last line is the speedup."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--masks", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    image, masks = make_image_and_masks(args.masks)

    warm = build_models(args.batch_size)  # first calls pay one-off costs (kernels, allocator): not measured
    per_mask_loop(image, masks[:2], warm)
    OpenVocabEngine(warm["clip"], warm["clipseg"], warm["captioner"], topk=TOPK, min_area=0).label_masks(
        [image], [masks[:2]]
    )

    loop_times, engine_times = [], []
    for _ in range(args.repeats):  # interleaved, so that a burst of load on the machine hits both alike
        models = build_models(args.batch_size)
        started = time.perf_counter()
        loop_labels, loop_calls = per_mask_loop(image, masks, models)
        loop_times.append(time.perf_counter() - started)

        models = build_models(args.batch_size)
        engine = OpenVocabEngine(
            models["clip"], models["clipseg"], models["captioner"], topk=TOPK, min_area=0
        )
        started = time.perf_counter()
        [engine_labels] = engine.label_masks([image], [masks])
        engine_times.append(time.perf_counter() - started)
        engine_calls = engine.model_calls()
    loop_s, engine_s = statistics.median(loop_times), statistics.median(engine_times)

    same_caption = sum(a.caption == b.caption for a, b in zip(loop_labels, engine_labels))
    same_proposals = sum(a.class_proposals == b.class_proposals for a, b in zip(loop_labels, engine_labels))
    same_class = sum(a.class_name == b.class_name for a, b in zip(loop_labels, engine_labels))
    areas = masks.reshape(len(masks), -1).sum(axis=1)
    print(
        f"image {HEIGHT}x{WIDTH}, {len(masks)} masks (area {areas.min()}..{areas.max()} px), tiny random "
        f"CLIP/BLIP/CLIPSeg, CPU ({torch.get_num_threads()} thread(s)), batch size {args.batch_size}, top-{TOPK}, "
        f"median of {args.repeats}"
    )
    print(f"per-mask loop: {loop_s:.2f} s, {loop_calls} model calls")
    print(
        f"batched engine: {engine_s:.2f} s, {sum(engine_calls.values())} model calls "
        f"({', '.join(f'{k} {v}' for k, v in engine_calls.items())})"
    )
    print(
        f"outputs equal: captions {same_caption}/{len(masks)}, proposals {same_proposals}/{len(masks)}, "
        f"classes {same_class}/{len(masks)}"
    )
    print(f"engine speedup vs per-mask loop: {loop_s / engine_s:.1f}x")


if __name__ == "__main__":
    main()

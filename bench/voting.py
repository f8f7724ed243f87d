"""Benchmark: vectorised semantic voting vs SSA's per-mask loop on one 1024x2048 image with 300 masks.

Both run in this process on the same inputs, twice: with the masks as COCO RLEs (how SSA gets them from SAM
and SA-1B JSON; its loop decodes one mask at a time) and as a dense (N, H, W) bool stack. Outputs are asserted
equal. Prints timings (median of repeats), the peak memory each call allocates (tracemalloc: numpy and Python
allocations), and last the speedup line:

    python bench/voting.py [--repeats 5] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics
import sys
import time
import tracemalloc
from collections.abc import Callable
from typing import Any

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from samseg_core.models.device import resolve_device  # noqa: E402
from samseg_core.testing.reference_voting import vote_per_mask_reference  # noqa: E402
from samseg_core.voting import VotingResult, vote_masks  # noqa: E402

HEIGHT, WIDTH, NUM_MASKS, NUM_CLASSES = 1024, 2048, 300, 150


def _ellipse_into(canvas: np.ndarray, cy: float, cx: float, ry: float, rx: float, angle: float) -> None:
    """ORs a rotated ellipse into ``canvas`` (touching only its bounding box)."""
    height, width = canvas.shape
    reach = max(ry, rx) + 1
    y0, y1 = int(max(cy - reach, 0)), int(min(cy + reach + 1, height))
    x0, x1 = int(max(cx - reach, 0)), int(min(cx + reach + 1, width))
    if y0 >= y1 or x0 >= x1:
        return
    yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
    dy, dx = yy - cy, xx - cx
    u = dx * np.cos(angle) + dy * np.sin(angle)
    v = -dx * np.sin(angle) + dy * np.cos(angle)
    canvas[y0:y1, x0:x1] |= (u / rx) ** 2 + (v / ry) ** 2 <= 1.0


def make_baseline(rng: np.random.Generator) -> np.ndarray:
    """A piecewise-constant 150-class map: 64x64 blocks overdrawn by 400 random ellipses (curved borders)."""
    blocks = rng.integers(0, NUM_CLASSES, (HEIGHT // 64, WIDTH // 64))
    baseline = np.repeat(np.repeat(blocks, 64, axis=0), 64, axis=1).astype(np.int32)
    for _ in range(400):
        region = np.zeros((HEIGHT, WIDTH), bool)
        radius = float(np.exp(rng.uniform(np.log(10), np.log(200))))
        _ellipse_into(region, rng.uniform(0, HEIGHT), rng.uniform(0, WIDTH), radius * rng.uniform(0.5, 1.5),
                      radius * rng.uniform(0.5, 1.5), rng.uniform(0, np.pi))  # fmt: skip
        baseline[region] = rng.integers(0, NUM_CLASSES)
    return baseline


def make_masks(rng: np.random.Generator) -> np.ndarray:
    """300 SAM-like masks: ellipses and unions of ellipses, a third nested in earlier masks, two empty."""
    masks = np.zeros((NUM_MASKS, HEIGHT, WIDTH), bool)
    centres: list[tuple[float, float, float]] = []
    for i in range(NUM_MASKS - 2):
        if centres and rng.random() < 0.33:  # a part inside an earlier (whole) mask
            py, px, pr = centres[rng.integers(len(centres))]
            radius = pr * rng.uniform(0.2, 0.6)
            cy, cx = py + rng.uniform(-0.4, 0.4) * pr, px + rng.uniform(-0.4, 0.4) * pr
        else:
            radius = float(np.exp(rng.uniform(np.log(6), np.log(300))))
            cy, cx = rng.uniform(0, HEIGHT), rng.uniform(0, WIDTH)
        for _ in range(int(rng.integers(1, 4))):  # 1-3 overlapping lobes: non-convex blobs
            _ellipse_into(masks[i], cy + rng.normal(0, radius / 3), cx + rng.normal(0, radius / 3),
                          radius * rng.uniform(0.4, 1.0), radius * rng.uniform(0.4, 1.0), rng.uniform(0, np.pi))  # fmt: skip
        centres.append((cy, cx, radius))
    return masks[rng.permutation(NUM_MASKS)]


def timed(fn: Callable[[], Any], repeats: int) -> tuple[float, Any]:
    """Returns (median seconds over ``repeats`` calls, the last result)."""
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def peak_memory_mib(fn: Callable[[], Any]) -> float:
    """Peak of the memory ``fn`` allocates through Python and numpy (tracemalloc; one untimed call)."""
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1] / 2**20
    finally:
        tracemalloc.stop()


def assert_same(fast: VotingResult, slow: VotingResult) -> None:
    """Fails unless both results agree pixel for pixel and mask for mask."""
    assert np.array_equal(fast.semantic, slow.semantic), "class maps differ"
    assert np.array_equal(fast.mask_classes, slow.mask_classes), "mask classes differ"
    assert np.array_equal(fast.topk_classes, slow.topk_classes), "top-k classes differ"
    assert np.array_equal(fast.vote_share, slow.vote_share, equal_nan=True), "vote shares differ"


def main() -> None:
    """Runs the benchmark and prints its report; the last line is the speedup."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="repeats of the vectorised calls (median)")
    parser.add_argument("--reference-repeats", type=int, default=3, help="repeats of the per-mask loop")
    parser.add_argument(
        "--device",
        default=None,
        help="where the dense masks live: cpu or cuda (default: cuda when available)",
    )
    args = parser.parse_args()
    device = resolve_device(args.device)

    from samseg_core.masks import rle_encode

    rng = np.random.default_rng(0)
    baseline = make_baseline(rng)
    masks = make_masks(rng)
    rles = [rle_encode(mask) for mask in masks]
    areas = masks.sum(axis=(1, 2))
    print(f"image {HEIGHT}x{WIDTH}, {NUM_MASKS} masks ({int((areas == 0).sum())} empty, mean area "
          f"{areas.mean():.0f} px, {areas.sum() / (HEIGHT * WIDTH):.1f}x image area), {NUM_CLASSES} classes, "
          f"device {device}")  # fmt: skip

    dense_input: Any = masks
    if device.type == "cuda":  # SAM's masks live on the GPU: scan them there (upload not timed)
        import torch

        dense_input = torch.from_numpy(masks).to(device)

    def fast(inputs: Any) -> Callable[[], VotingResult]:
        return functools.partial(vote_masks, inputs, baseline)

    fast(rles)()  # warm-up (first-call allocations)
    speedups = {}
    for name, ref_input, fast_input in (("dense (N,H,W) bool", masks, dense_input), ("COCO RLE", rles, rles)):
        slow = functools.partial(vote_per_mask_reference, ref_input, baseline)
        ref_s, ref = timed(slow, args.reference_repeats)
        vec_s, vec = timed(fast(fast_input), args.repeats)
        assert_same(vec, ref)
        ref_mem, vec_mem = peak_memory_mib(slow), peak_memory_mib(fast(fast_input))
        speedups[name] = ref_s / vec_s
        print(f"[{name}] per-mask loop: {ref_s * 1e3:.1f} ms (peak +{ref_mem:.0f} MiB); vectorised: "
              f"{vec_s * 1e3:.1f} ms (peak +{vec_mem:.0f} MiB); outputs equal; speedup {speedups[name]:.1f}x")  # fmt: skip
    print(f"voting speedup vs per-mask loop (dense input): {speedups['dense (N,H,W) bool']:.1f}x")
    print(f"voting speedup vs per-mask loop: {speedups['COCO RLE']:.1f}x")


if __name__ == "__main__":
    main()

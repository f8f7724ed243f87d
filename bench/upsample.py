"""Benchmark: tiled upsample_argmax vs the original row-band gather path, 150 classes, 128x256 -> 1024x2048.

Both run in this process on the same scores (smooth random logits), interleaved so that load changes hit
both. Labels are asserted equal (up to near ties) and confidences close. Prints timings (median of
repeats) and last the speedup line:

    python bench/upsample.py [--repeats 3] [--device cpu|cuda] [--confidence none|max|softmax|normalize]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from samseg_core.models.semantic import _upsample_argmax_reference, upsample_argmax  # noqa: E402

NUM_CLASSES, LOW_HW, OUT_HW = 150, (128, 256), (1024, 2048)


def timed_pair(
    first: Callable[[], Any], second: Callable[[], Any], repeats: int
) -> tuple[float, Any, float, Any]:
    """Median seconds over ``repeats`` interleaved calls of each, and each one's last result."""
    times: tuple[list[float], list[float]] = ([], [])
    results: list[Any] = [None, None]
    for _ in range(repeats):
        for i, fn in enumerate((first, second)):
            start = time.perf_counter()
            results[i] = fn()
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            times[i].append(time.perf_counter() - start)
    return statistics.median(times[0]), results[0], statistics.median(times[1]), results[1]


def make_scores(device: torch.device) -> torch.Tensor:
    """Logits like a segmenter's: smooth class fields (coarse noise upsampled) plus a little pixel noise."""
    generator = torch.Generator().manual_seed(0)
    coarse = torch.randn((1, NUM_CLASSES, LOW_HW[0] // 8, LOW_HW[1] // 8), generator=generator) * 4.0
    smooth = F.interpolate(coarse, LOW_HW, mode="bicubic", align_corners=False)[0]
    return (smooth + 0.3 * torch.randn((NUM_CLASSES, *LOW_HW), generator=generator)).to(device)


def main() -> None:
    """Runs the benchmark and prints its report; the last line is the speedup."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="repeats of each implementation (median)")
    parser.add_argument("--device", default="cpu", help="where the scores live (default: cpu)")
    parser.add_argument(
        "--confidence",
        default="none",
        choices=["none", "max", "softmax", "normalize"],
        help="confidence mode",
    )
    args = parser.parse_args()
    device = torch.device(args.device)
    scores = make_scores(device)
    if args.confidence == "normalize":
        scores = scores.softmax(dim=0)
    kwargs: dict[str, Any] = {}
    if args.confidence != "none":
        kwargs = {"return_confidence": True, "confidence": args.confidence}
    print(f"{NUM_CLASSES} classes, {LOW_HW[0]}x{LOW_HW[1]} -> {OUT_HW[0]}x{OUT_HW[1]}, device {device}, "
          f"{torch.get_num_threads()} CPU threads, confidence {args.confidence}")  # fmt: skip

    upsample_argmax(scores, (64, 64), **kwargs)  # warm-up
    ref_s, (ref_labels, ref_conf), new_s, (labels, conf) = timed_pair(
        lambda: _upsample_argmax_reference(scores, OUT_HW, **kwargs),
        lambda: upsample_argmax(scores, OUT_HW, **kwargs),
        args.repeats,
    )
    differ = int((labels != ref_labels).sum())
    assert differ <= labels.numel() * 1e-6, f"{differ} labels differ"
    if conf is not None:
        torch.testing.assert_close(conf, ref_conf, rtol=1e-5, atol=1e-5)
    print(f"row bands (gather, before): {ref_s:.2f} s; tiles (after): {new_s:.2f} s; "
          f"labels differing: {differ} of {labels.numel()}")  # fmt: skip
    print(f"upsample_argmax speedup vs row bands: {ref_s / new_s:.1f}x")


if __name__ == "__main__":
    main()

"""Benchmark: samseg's automatic mask generator vs segment_anything's ``SamAutomaticMaskGenerator``.

The same image, model and settings go through both in this process, crops off and then on
(``crop_n_layers=1``): counts of each, the share of reference masks matched 1:1 (Hungarian on mask IoU) at
IoU >= 0.99, time of each (median of interleaved repeats after an untimed warm-up call), peak memory (CPU: resident-set growth of
one call in a fresh child process, glibc's mmap threshold lowered so that freed blocks go back to the system;
CUDA: ``torch.cuda.max_memory_allocated`` growth of the warm-up call on the full image) and the speedup. Last line:
``amg speedup vs segment_anything: <N>x`` (the crops-off speedup).

The model is a random-weight SAM (``tiny``: 256-px input, or ``vit_h``: the real architecture, for GPUs)
whose mask decoder is :class:`~samseg_core.testing.localized_sam.LocalizedMaskDecoder`: a parameter-free stand-in whose masks are blobs around
the prompt point that follow the image's colours, with a predicted IoU and stability that vary, so that the
filters and NMS have real work (a random-weight SAM decoder's masks are image-wide noise).

    python bench/amg.py [--device cpu|cuda] [--image-size 768x1024] [--model tiny|vit_h] [--repeats 2]
                        [--no-autocast]
"""

from __future__ import annotations

import argparse
import ctypes
import math
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from samseg_core.amg import AutomaticMaskGenerator, GeneratedMasks, take_runs  # noqa: E402
from samseg_core.models.device import resolve_device  # noqa: E402
from samseg_core.models.promptable import SegmentAnythingBackend  # noqa: E402
from samseg_core.testing.localized_sam import localized_sam  # noqa: E402

# Thresholds that keep masks with the localized decoder (about a third of the masks pass the IoU filter).
SETTINGS: dict[str, Any] = dict(points_per_side=32, pred_iou_thresh=0.88, stability_score_thresh=0.9)


def make_image(size: tuple[int, int], seed: int = 0) -> np.ndarray:
    """A synthetic RGB scene of ``(H, W)``: textured bands, ellipses, rectangles, a ring, a thin bar."""
    from samseg_core.testing.scenes import make_scene

    return make_scene(seed, size=size).image


def matched_share(reference: list[dict[str, Any]], ours: GeneratedMasks, min_iou: float = 0.99) -> float:
    """Share of the larger side matched 1:1 (Hungarian on mask IoU) at IoU >= ``min_iou``.

    Only pairs whose boxes overlap are scored (exactly, on dense masks), so large images stay cheap.
    """
    from scipy.optimize import linear_sum_assignment
    from torchvision.ops import box_iou

    if not reference or not len(ours):
        return float(len(reference) == len(ours))
    ref_boxes = torch.tensor([[x, y, x + w, y + h] for x, y, w, h in (r["bbox"] for r in reference)])
    candidates = torch.nonzero(box_iou(ref_boxes.float(), torch.from_numpy(ours.boxes_xyxy).float()) > 0.5)
    iou = np.zeros((len(reference), len(ours)))
    ref_flat = [torch.from_numpy(r["segmentation"]).reshape(-1) for r in reference]
    for j in np.unique(candidates[:, 1].numpy()):
        mine = torch.from_numpy(take_runs(ours.runs, [j]).to_dense()[0]).reshape(-1)
        for i in candidates[candidates[:, 1] == int(j), 0].tolist():
            inter = int((ref_flat[i] & mine).sum())
            union = int((ref_flat[i] | mine).sum())
            iou[i, j] = inter / union if union else 1.0
    rows, cols = linear_sum_assignment(-iou)
    return float((iou[rows, cols] >= min_iou).sum()) / max(len(reference), len(ours))


def _mmap_threshold(size: int) -> None:
    """Set glibc's mmap threshold: blocks above ``size`` are mapped and go back to the system when freed.

    The memory children set 128 KiB, so that a call's resident-set peak is what it allocates rather than what
    the heap already held; the timing process keeps glibc's default.
    """
    try:
        ctypes.CDLL("libc.so.6").mallopt(-3, size)  # M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        pass


def _status_bytes(key: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(key):
                return int(line.split()[1]) * 1024
    return 0


def measured(fn: Callable[[], Any], device: torch.device) -> tuple[Any, float, float]:
    """Returns ``(result, seconds, peak MiB)``: CUDA allocated growth, or resident-set growth on CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
    else:
        with open("/proc/self/clear_refs", "w") as refs:
            refs.write("5")  # resets the peak resident size (VmHWM)
        before = _status_bytes("VmRSS")
    started = time.perf_counter()
    result = fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - started
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else _status_bytes("VmHWM")
    return result, seconds, (peak - before) / 2**20


def generators(sam: Any, settings: dict[str, Any], autocast: bool = True) -> dict[str, Any]:
    """``{"ref": SamAutomaticMaskGenerator, "ours": AutomaticMaskGenerator}`` with the same settings."""
    from segment_anything import SamAutomaticMaskGenerator

    return {
        "ref": SamAutomaticMaskGenerator(sam, output_mode="binary_mask", **settings),
        "ours": AutomaticMaskGenerator(SegmentAnythingBackend(sam), **settings, autocast=autocast),
    }


def cpu_peaks(args: argparse.Namespace, crops: int) -> dict[str, float]:
    """Peak resident-set growth (MiB) of one call of each generator, each in a fresh process (``--memory-of``)."""
    peaks = {}
    for name in ("ref", "ours"):
        command = [sys.executable, os.path.abspath(__file__), "--memory-of", name, "--crops", str(crops),
                   "--image-size", args.image_size, "--model", args.model, "--device", "cpu"]  # fmt: skip
        out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
        peaks[name] = float(out.strip().splitlines()[-1].split("=")[1])
    return peaks


def run_config(
    sam: Any, image: np.ndarray, settings: dict[str, Any], args: argparse.Namespace, device: torch.device
) -> float:
    """Time both generators on one configuration (interleaved), print one report line; return the speedup."""
    gens = generators(sam, settings, autocast=not args.no_autocast)
    warm = make_image((96, 128))
    peaks: dict[str, float] = {}
    for name, generator in gens.items():  # untimed warm-up; on CUDA also the memory peak (full image)
        _, _, peaks[name] = measured(
            lambda g=generator: g.generate(image if device.type == "cuda" else warm), device
        )
    if device.type != "cuda":
        peaks = cpu_peaks(args, settings.get("crop_n_layers", 0))
    times: dict[str, list[float]] = {"ref": [], "ours": []}
    results: dict[str, Any] = {}
    for _ in range(args.repeats):  # interleaved, so that a change of load hits both
        for name, generator in gens.items():
            results[name], seconds, _ = measured(lambda g=generator: g.generate(image), device)
            times[name].append(seconds)
    ref_s, ours_s = statistics.median(times["ref"]), statistics.median(times["ours"])
    share = matched_share(results["ref"], results["ours"])
    speedup = ref_s / ours_s
    crops = settings.get("crop_n_layers", 0)
    print(f"[crop_n_layers={crops}] segment_anything: {len(results['ref'])} masks, {ref_s:.2f} s, peak "
          f"+{peaks['ref']:.0f} MiB | samseg: {len(results['ours'])} masks, {ours_s:.2f} s, peak "
          f"+{peaks['ours']:.0f} MiB | matched at IoU>=0.99: {share:.1%} | speedup {speedup:.1f}x")  # fmt: skip
    return speedup


def main() -> None:
    """Runs the benchmark and prints its report; the last line is the speedup."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    parser.add_argument("--image-size", default="768x1024", help="HxW of the synthetic image")
    parser.add_argument("--model", default="tiny", choices=("tiny", "vit_h"), help="random-weight SAM")
    parser.add_argument("--repeats", type=int, default=2, help="timed repeats of each generator (median)")
    parser.add_argument(
        "--no-autocast", action="store_true", help="decode in float32 on CUDA too (default: bf16 autocast)"
    )
    parser.add_argument("--memory-of", choices=("ref", "ours"), help=argparse.SUPPRESS)  # child: one call
    parser.add_argument("--crops", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    device = resolve_device(args.device)
    height, width = (int(v) for v in args.image_size.lower().split("x"))
    image = make_image((height, width))
    sam = localized_sam(args.model).to(device)
    if args.memory_of:
        _mmap_threshold(128 * 1024)
        generator = generators(sam, {**SETTINGS, "crop_n_layers": args.crops})[args.memory_of]
        print(f"peak_mib={measured(lambda: generator.generate(image), device)[2]:.1f}")
        return
    print(f"image {height}x{width}, model {args.model} (localized decoder), device {device}, "
          f"{torch.get_num_threads()} CPU threads, settings {SETTINGS}, {args.repeats} repeats, "
          f"samseg decode {'float32' if args.no_autocast or device.type != 'cuda' else 'bf16 autocast'}")  # fmt: skip
    off = run_config(sam, image, SETTINGS, args, device)
    on = run_config(sam, image, {**SETTINGS, "crop_n_layers": 1}, args, device)
    print(
        f"speedup crops off {off:.1f}x, crops on {on:.1f}x (geometric mean {math.sqrt(off * on):.1f}x); "
        "the last line is the crops-off speedup"
    )
    print(f"amg speedup vs segment_anything: {off:.1f}x")


if __name__ == "__main__":
    main()

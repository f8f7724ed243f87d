"""Peak memory per stage on one large image (default 64 megapixels), and banded vs whole-image scoring.

Each stage runs in its own process on a private database (``StandaloneMongod``); the number reported is the
process's peak resident memory during the stage minus its resident memory just before it (``VmHWM`` is reset
through ``/proc/self/clear_refs`` first), so imports and the dataset's loading do not count. Models are the tiny
random-init ones (their memory is negligible): what is measured is samseg's own handling of a 64 MP image.

Then, in this process, the IoU scoring core is measured on the same label maps in row bands (what
``evaluate_iou`` does) and as one whole-image pass (the reference), with ``tracemalloc``.

    python bench/memory.py                      # 8000 x 8000
    python bench/memory.py --side 4000 --stages evaluate_iou,semantic_voting
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

STAGES = {
    "evaluate_iou": "ss.evaluate_iou(ds, 'baseline', 'ground_truth', eval_key='mem_iou')",
    "agreement_iou": "ss.agreement_iou(ds, pred_field='ground_truth', baseline_field='baseline', "
    "eval_key='mem_agree', heatmap=False)",
    "detect_failures": "ss.detect_failures(ds, 'baseline', 'ground_truth', eval_key='mem_failures')",
    "semantic_voting": "ss.semantic_voting(ds, baseline_field='baseline', masks='superpixels', label_field='mem_ssa', "
    "instances_field=None, mask_dir=masks, batch_size=1)",
    "run_baseline": "ss.run_baseline(ds, model=segformer, label_field='mem_baseline', mask_dir=masks, batch_size=1)",
    "refine_with_sam": "ss.refine_with_sam(ds, baseline_field='baseline', sam='samseg_core.testing:tiny_sam', "
    "label_field='mem_refined', mask_dir=masks, batch_size=1)",
}

CHILD = """
import json, os, resource, sys, time, warnings
warnings.simplefilter("ignore")
import fiftyone as fo
import samseg_core as ss
# the stages' lazy imports, so that their code's resident size is not counted as the image's
import torch, torchvision, transformers, scipy.ndimage, skimage.segmentation, pycocotools.mask
import samseg_core.testing, samseg_core.models.resolve

def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1]) * 1024
ds = fo.load_dataset(sys.argv[1])
masks, segformer = sys.argv[2], sys.argv[3]
ds.first()  # connected, schema loaded
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # resets the peak resident size (VmHWM)
before = status("VmRSS")
started = time.monotonic()
summary = STAGE
seconds = time.monotonic() - started
print(json.dumps({"peak": status("VmHWM") - before, "seconds": seconds, "summary": str(summary),
                  "failed": summary.failed, "errors": list(summary.errors.values())[:1]}))
"""


def build_dataset(name: str, side: int, workdir: Path) -> tuple[str, str]:
    """One sample: a side x side image, ground truth and a degraded baseline as PNG masks; returns the
    mask directory and a saved tiny SegFormer."""
    import fiftyone as fo
    import numpy as np
    from PIL import Image

    from samseg_core.mask_targets import merge_mask_targets
    from samseg_core.masks import resize_mask_nearest
    from samseg_core.testing import degrade_prediction, make_scene, save_tiny_segformer

    scene = make_scene(0, size=(1000, 1000))
    image = resize_mask_nearest(scene.image.transpose(2, 0, 1), (side, side)).transpose(1, 2, 0)
    gt = resize_mask_nearest(scene.semantic.astype(np.uint8), (side, side))
    pred = resize_mask_nearest(degrade_prediction(scene, seed=1).astype(np.uint8), (side, side))
    paths = {}
    for key, array in (("image", image), ("gt", gt), ("pred", pred)):
        paths[key] = str(workdir / f"{key}.png")
        Image.fromarray(np.ascontiguousarray(array)).save(paths[key])
    ds = fo.Dataset(name, persistent=True)
    ds.add_sample(fo.Sample(filepath=paths["image"], ground_truth=fo.Segmentation(mask_path=paths["gt"]),
                            baseline=fo.Segmentation(mask_path=paths["pred"])))  # fmt: skip
    merge_mask_targets(ds, "ground_truth", scene.class_names)
    merge_mask_targets(ds, "baseline", scene.class_names)
    segformer = save_tiny_segformer(workdir / "segformer", scene.class_names)
    return str(workdir / "masks"), str(segformer)


def measure_stage(stage: str, dataset: str, masks: str, segformer: str, env: dict[str, str]) -> dict:
    """Runs one stage in a fresh process and returns its peak memory above its baseline and its time."""
    code = CHILD.replace("STAGE", STAGES[stage])
    done = subprocess.run(
        [sys.executable, "-c", code, dataset, masks, segformer], env=env, capture_output=True, text=True,
        timeout=3600,
    )  # fmt: skip
    if done.returncode != 0:
        return {
            "error": done.stderr.strip().splitlines()[-1]
            if done.stderr.strip()
            else f"exit {done.returncode}"
        }
    return json.loads(done.stdout.strip().splitlines()[-1])


def scoring_ratio(side: int, workdir: Path) -> tuple[float, float]:
    """tracemalloc peak (bytes) of scoring the label maps in row bands and as one whole-image pass."""
    import numpy as np
    from PIL import Image

    from samseg_core.metrics import IoUOptions, score_masks

    gt = np.asarray(Image.open(workdir / "gt.png")).astype(np.int32)
    pred = np.asarray(Image.open(workdir / "pred.png")).astype(np.int32)
    peaks = []
    for band_pixels in (None, side * side):
        kwargs = {} if band_pixels is None else {"band_pixels": band_pixels}
        tracemalloc.start()
        score_masks(gt, pred, IoUOptions(known_classes=6), **kwargs)
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
    return peaks[0], peaks[1]


def main() -> None:
    """Runs the benchmark and prints its table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--side", type=int, default=8000, help="image side in pixels (8000: 64 megapixels)")
    parser.add_argument("--stages", default=",".join(STAGES), help="comma-separated stages to measure")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="samseg-memory-"))
    from samseg_core.testing.mongod import StandaloneMongod

    with StandaloneMongod() as mongod:
        os.environ["FIFTYONE_DATABASE_URI"] = mongod.uri
        env = {**os.environ, "PYTHONPATH": str(ROOT), "FIFTYONE_DATABASE_VALIDATION": "false"}
        name = f"samseg-memory-{os.getpid()}"
        started = time.monotonic()
        masks, segformer = build_dataset(name, args.side, workdir)
        megapixels = args.side * args.side / 1e6
        print(
            f"image {args.side}x{args.side} ({megapixels:.0f} MP), dataset built in {time.monotonic() - started:.0f}s"
        )
        print(f"{'stage':<18} {'peak above baseline':>20} {'seconds':>8}  result")
        for stage in [s for s in args.stages.split(",") if s]:
            row = measure_stage(stage, name, masks, segformer, env)
            if "error" in row:
                print(f"{stage:<18} {'-':>20} {'-':>8}  failed: {row['error'][:120]}")
                continue
            note = f"failed: {row['errors'][0][:100]}" if row["failed"] else "ok"
            print(f"{stage:<18} {row['peak'] / 2**20:>17.0f} MB {row['seconds']:>8.1f}  {note}")
        banded, whole = scoring_ratio(args.side, workdir)
        print(
            f"IoU scoring: row bands {banded / 2**20:.0f} MB, whole image {whole / 2**20:.0f} MB (reference)"
        )
        print(f"scoring memory ratio (whole image / row bands): {whole / max(banded, 1):.1f}x")


if __name__ == "__main__":
    main()

"""GPU throughput of samseg's stages against the per-mask / per-prompt reference loops, in one run.

Images per second of: the baseline segmenter (tiled argmax vs SSA's full C x H x W upsample), the automatic
mask generator at SSA's settings with every threshold at 0 (each candidate mask survives: the worst case) —
samseg's generator vs ``segment_anything.SamAutomaticMaskGenerator`` on the same model — and semantic voting
(vectorised vs SSA's loop over masks), SAM refinement (all prompt sets in one decoder call vs one call per prompt
set, the study's loop) and the SSA-engine (masks batched vs one model call per mask, SSA's loop). Models are
random-weight, full-size (SAM vit_b and vit_h, SAM 2.1 Hiera-L through transformers, SegFormer-B5 with 150
classes, CLIP ViT-L/14, BLIP-large-sized, CLIPSeg rd64): speed only, never quality. SAM 2.1 has no reference
generator (segment_anything cannot run it), so its AMG row stands alone.

Needs samseg_core, torch, segment_anything, transformers and open_clip; no FiftyOne, no database. Without CUDA it
says so and exits 0; ``--cpu-smoke`` runs the whole pipeline on CPU with tiny models to prove the code paths.

    python bench/gpu.py                      # CUDA: vit_b, vit_h, sam2.1-hiera-large, 2 images of 1024x2048
    python bench/gpu.py --sam vit_b --images 4 --size 768x1024
    python bench/gpu.py --cpu-smoke          # any machine, about a minute
"""

from __future__ import annotations

import argparse
import sys
import time
import tracemalloc
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

ADE_CLASSES = 150


@dataclass
class Row:
    """One line of the result table."""

    stage: str
    variant: str
    seconds: float
    images: int
    masks: float = float("nan")
    peak_mb: float = float("nan")

    @property
    def images_per_second(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else float("inf")


@dataclass
class Setup:
    """What one benchmark run uses: device, sizes and model builders for full-size or tiny models."""

    device: torch.device
    smoke: bool
    num_images: int
    size: tuple[int, int]
    reference_images: int
    engine_masks: int


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(setup: Setup, fn: Callable[[], Any]) -> tuple[Any, float, float]:
    """Returns ``(result, seconds, peak MB)``: CUDA peak allocated memory, or numpy's peak on CPU (tracemalloc)."""
    _sync(setup.device)
    if setup.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(setup.device)
    else:
        tracemalloc.start()
    started = time.perf_counter()
    result = fn()
    _sync(setup.device)
    seconds = time.perf_counter() - started
    if setup.device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(setup.device) / 2**20
    else:
        peak = tracemalloc.get_traced_memory()[1] / 2**20
        tracemalloc.stop()
    return result, seconds, peak


# --------------------------------------------------------------------------------------------------- inputs


def make_images(num: int, size: tuple[int, int]) -> list[np.ndarray]:
    """Synthetic scenes (128x160) upscaled to ``size``: object boundaries at realistic scale."""
    from samseg_core.testing.scenes import make_scene

    images = []
    for i in range(num):
        scene = make_scene(i, size=(128, 160)).image
        rows = np.arange(size[0]) * scene.shape[0] // size[0]
        cols = np.arange(size[1]) * scene.shape[1] // size[1]
        images.append(np.ascontiguousarray(scene[rows][:, cols]))
    return images


# --------------------------------------------------------------------------------------------------- models


def build_segmenter(setup: Setup, max_elements: int = 2**24):
    """SegFormer-B5 (ADE20K layout, 150 classes, 640 px) with random weights; tiny SegFormer for the smoke run."""
    from transformers import SegformerConfig, SegformerForSemanticSegmentation, SegformerImageProcessor

    from samseg_core.models.semantic import SemanticSegmenter

    id2label = {i: f"class_{i}" for i in range(ADE_CLASSES)}
    if setup.smoke:
        from samseg_core.testing import tiny_segformer, tiny_segformer_processor

        model, processor = tiny_segformer(id2label), tiny_segformer_processor(64)
    else:
        config = SegformerConfig(
            depths=[3, 6, 40, 3],
            hidden_sizes=[64, 128, 320, 512],
            decoder_hidden_size=768,
            num_labels=ADE_CLASSES,
            id2label=id2label,
            label2id={v: k for k, v in id2label.items()},
        )
        torch.manual_seed(0)
        model = SegformerForSemanticSegmentation(config)
        processor = SegformerImageProcessor(size={"height": 640, "width": 640})
    return SemanticSegmenter(model, processor, device=setup.device, max_elements=max_elements)


def build_sam(setup: Setup, model_type: str):
    """A random-weight SAM-family model behind the promptable interface, on the device: ``vit_*``
    (segment_anything), ``sam2.1-hiera-*`` (transformers), or for the smoke run ``tiny`` / ``sam2-tiny``."""
    from samseg_core.models.promptable import load_promptable

    torch.manual_seed(0)
    if model_type == "tiny":
        from samseg_core.testing import tiny_sam

        sam = tiny_sam()
    elif model_type == "sam2-tiny":
        from samseg_core.testing.tiny_sam_family import tiny_transformers_sam

        sam = tiny_transformers_sam("sam2")[0]
    elif model_type.startswith("sam2"):
        from samseg_core.testing.tiny_sam_family import full_size_sam2

        sam = full_size_sam2(model_type)
    else:
        from segment_anything import sam_model_registry

        sam = sam_model_registry[model_type](checkpoint=None)
    return load_promptable(sam.eval(), device=setup.device)


def build_engine(setup: Setup, batch_size: int | None = None):
    """The SSA-engine with random-weight models: CLIP ViT-L/14, a BLIP-large-sized captioner, CLIPSeg rd64."""
    from samseg_core.engine import OpenVocabEngine
    from samseg_core.models.caption import load_captioner
    from samseg_core.models.clip import load_clip
    from samseg_core.models.clipseg import load_clipseg
    from samseg_core.testing import tiny_engine_models as tem

    if setup.smoke:
        clip = load_clip(tem.tiny_open_clip(), device=setup.device)
        captioner = load_captioner(tem.tiny_blip(), device=setup.device)
        clipseg = load_clipseg(tem.tiny_clipseg(), device=setup.device)
    else:
        import open_clip
        from transformers import (
            BlipConfig,
            BlipForConditionalGeneration,
            BlipImageProcessor,
            BlipProcessor,
            CLIPSegConfig,
            CLIPSegForImageSegmentation,
            CLIPSegProcessor,
            ViTImageProcessor,
        )

        torch.manual_seed(0)
        clip_model = open_clip.create_model("ViT-L-14", pretrained=None)
        clip = load_clip((clip_model, open_clip.get_tokenizer("ViT-L-14")), device=setup.device)
        blip_tokenizer = (
            tem.tiny_blip_processor().tokenizer
        )  # a caption vocabulary; weights are random anyway
        blip_config = BlipConfig(
            text_config={
                "vocab_size": len(blip_tokenizer),
                "bos_token_id": blip_tokenizer.bos_token_id,
                "sep_token_id": blip_tokenizer.sep_token_id,
                "eos_token_id": blip_tokenizer.sep_token_id,
                "pad_token_id": blip_tokenizer.pad_token_id,
            },
            vision_config={"hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 24,
                           "num_attention_heads": 16, "image_size": 384},
        )  # fmt: skip
        blip_processor = BlipProcessor(
            image_processor=BlipImageProcessor(size={"height": 384, "width": 384}), tokenizer=blip_tokenizer
        )
        captioner = load_captioner(
            (BlipForConditionalGeneration(blip_config), blip_processor), device=setup.device
        )
        clipseg_processor = CLIPSegProcessor(
            image_processor=ViTImageProcessor(size={"height": 352, "width": 352}),
            tokenizer=tem.tiny_clip_tokenizer(),  # open_clip's BPE: the real CLIP vocabulary
        )
        clipseg = load_clipseg(
            (CLIPSegForImageSegmentation(CLIPSegConfig()), clipseg_processor), device=setup.device
        )
    return OpenVocabEngine(clip, clipseg, captioner, batch_size=batch_size, min_area=0)


# --------------------------------------------------------------------------------------------------- stages


def bench_baseline(setup: Setup, images: list[np.ndarray]) -> tuple[list[Row], list[Any]]:
    """Tiled argmax at full size (samseg) vs one full C x H x W upsample (SSA / transformers post-processing)."""
    rows, predictions = [], []
    for variant, max_elements in (("tiled argmax (samseg)", 2**24), ("full CxHxW upsample (SSA)", 2**62)):
        segmenter = build_segmenter(setup, max_elements)
        segmenter.predict(images[:1])  # warm-up (cuDNN autotune, lazy init)

        def run(segmenter=segmenter):
            return [segmenter.predict([image], return_confidence=True)[0] for image in images]

        result, seconds, peak = measure(setup, run)
        rows.append(Row("baseline", variant, seconds, len(images), peak_mb=peak))
        if not predictions:
            predictions = result
        del segmenter
    return rows, predictions


def amg_settings(setup: Setup) -> dict[str, Any]:
    """SSA's generator settings with the quality thresholds at 0 (every candidate mask survives)."""
    from samseg_core.mask_sources import SSA_PRESET

    settings: dict[str, Any] = {**SSA_PRESET, "pred_iou_thresh": 0.0, "stability_score_thresh": 0.0}
    if setup.smoke:
        settings.update(points_per_side=8, points_per_batch=64)
    return settings


def bench_reference_amg(setup: Setup, sam: Any, name: str, images: list[np.ndarray]) -> list[Row]:
    """segment_anything's ``SamAutomaticMaskGenerator`` on the same model and settings (segment_anything only)."""
    from segment_anything import SamAutomaticMaskGenerator

    from samseg_core.models.device import autocast_context

    if not hasattr(sam, "sam"):
        return []
    generator = SamAutomaticMaskGenerator(sam.sam, output_mode="binary_mask", **amg_settings(setup))
    n = setup.reference_images

    def run():
        with autocast_context(setup.device):
            return [generator.generate(image) for image in images[:n]]

    records, seconds, peak = measure(setup, run)
    count = float(np.mean([len(r) for r in records]))
    return [Row(f"SAM AMG {name}", "SamAutomaticMaskGenerator", seconds, n, count, peak)]


def bench_amg_and_voting(
    setup: Setup, sam: Any, name: str, images: list[np.ndarray], baselines: list[Any]
) -> tuple[list[Row], list[np.ndarray]]:
    """AMG proposals, then voting vectorised vs SSA's per-mask loop (on ``reference_images`` images)."""
    from samseg_core.mask_sources import SamAutomaticSource
    from samseg_core.runner import SampleItem
    from samseg_core.testing.reference_voting import vote_per_mask_reference
    from samseg_core.voting import vote_masks

    source = SamAutomaticSource(sam, preset=None, **amg_settings(setup))
    items = [SampleItem(f"img{i}", "", image) for i, image in enumerate(images)]
    source.proposals(items[0])  # warm-up (kernels, allocator)
    proposals, seconds, peak = measure(setup, lambda: [source.proposals(item) for item in items])
    counts = [len(p) for p in proposals]
    variant = "samseg generator (SSA, thr 0)"
    rows = [Row(f"SAM AMG {name}", variant, seconds, len(images), np.mean(counts), peak)]
    rows += bench_reference_amg(setup, sam, name, images)

    labels = [pred.labels for pred in baselines]
    confidences = [pred.confidence for pred in baselines]
    _, seconds, peak = measure(
        setup, lambda: [vote_masks(p, b, confidence=c) for p, b, c in zip(proposals, labels, confidences)]
    )
    masks = [p.masks for p in proposals]  # dense stacks for the per-mask references below
    rows.append(Row(f"voting {name}", "vectorised (samseg)", seconds, len(images), np.mean(counts), peak))
    n = setup.reference_images
    _, seconds, peak = measure(
        setup,
        lambda: [
            vote_per_mask_reference(m, b, confidence=c) for m, b, c in zip(masks[:n], labels[:n], confidences)
        ],
    )
    rows.append(Row(f"voting {name}", "per-mask loop (SSA)", seconds, n, np.mean(counts[:n]), peak))
    return rows, masks


def bench_refinement(
    setup: Setup, sam: Any, name: str, images: list[np.ndarray], baselines: list[Any]
) -> list[Row]:
    """SAM encoder (batched, cached), then refinement with all prompt sets per call vs one call per prompt set."""
    from samseg_core.refine import refine_semantic
    from samseg_core.sam_embedding import EmbeddingCache

    cache = EmbeddingCache(sam, encoder_batch_size=2)
    keys = [f"img{i}" for i in range(len(images))]
    _, seconds, peak = measure(setup, lambda: cache.get_many(keys, images))
    rows = [Row(f"SAM encoder {name}", "batched, cached per image", seconds, len(images), peak_mb=peak)]
    labels = [pred.labels for pred in baselines]
    for variant, per_call, count in (
        ("all prompt sets per call (samseg)", None, len(images)),
        ("one call per prompt set (study)", 1, setup.reference_images),
    ):
        kwargs = {} if per_call is None else {"max_prompts_per_call": per_call}

        def run(count=count, kwargs=kwargs):
            return [
                refine_semantic(cache.prompt_image(key, image), baseline, prompts=("points", "box"), **kwargs)
                for key, image, baseline in zip(keys[:count], images[:count], labels[:count])
            ]

        results, seconds, peak = measure(setup, run)
        prompt_sets = float(np.mean([len(r.regions) for r in results]))
        rows.append(Row(f"refinement {name}", variant, seconds, count, prompt_sets, peak))
    return rows


def bench_engine(setup: Setup, name: str, images: list[np.ndarray], masks: list[np.ndarray]) -> list[Row]:
    """The SSA-engine on (at most ``engine_masks``) AMG masks per image: batched vs one call per mask."""
    capped = [m[: setup.engine_masks] for m in masks]
    engine = build_engine(setup, batch_size=None if setup.smoke else 64)
    engine.label_masks(images[:1], [capped[0][:2]])  # warm-up
    _, seconds, peak = measure(setup, lambda: engine.label_masks(images, capped))
    mean_masks = float(np.mean([len(m) for m in capped]))
    rows = [Row(f"engine {name}", "masks batched (samseg)", seconds, len(images), mean_masks, peak)]
    n = setup.reference_images

    def per_mask():
        return [
            engine.label_masks([image], [stack[i : i + 1]])
            for image, stack in zip(images[:n], capped)
            for i in range(len(stack))
        ]

    _, seconds, peak = measure(setup, per_mask)
    rows.append(
        Row(
            f"engine {name}",
            "one call per mask (SSA)",
            seconds,
            n,
            float(np.mean([len(m) for m in capped[:n]])),
            peak,
        )
    )
    return rows


# --------------------------------------------------------------------------------------------------- main


def print_table(rows: Sequence[Row], setup: Setup) -> None:
    """Prints the result table (and the speedup of each samseg variant over the reference below it)."""
    memory = "peak GPU MB" if setup.device.type == "cuda" else "numpy peak MB"
    header = f"{'stage':<22} {'variant':<36} {'images':>6} {'s/image':>9} {'images/s':>9} {'masks':>8} {memory:>13}"
    print(header)
    print("-" * len(header))
    for row in rows:
        print(
            f"{row.stage:<22} {row.variant:<36} {row.images:>6d} {row.seconds / max(row.images, 1):>9.3f} "
            f"{row.images_per_second:>9.3f} {row.masks:>8.1f} {row.peak_mb:>13.1f}"
        )
    for fast, slow in zip(rows, rows[1:]):
        if fast.stage == slow.stage and "samseg" in fast.variant and slow.images and fast.images:
            ratio = (slow.seconds / slow.images) / max(fast.seconds / fast.images, 1e-9)
            print(f"speedup {fast.stage}: {ratio:.1f}x ({fast.variant} vs {slow.variant})")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpu-smoke", action="store_true", help="tiny models on CPU: prove every code path")
    parser.add_argument(
        "--sam", default="vit_b,vit_h,sam2.1-hiera-large", help="SAM-family architectures, comma separated"
    )
    parser.add_argument("--images", type=int, default=2, help="images per stage")
    parser.add_argument("--size", default="1024x2048", help="image size HxW (Cityscapes: 1024x2048)")
    parser.add_argument("--reference-images", type=int, default=1, help="images for the slow reference loops")
    parser.add_argument("--engine-masks", type=int, default=64, help="masks per image given to the engine")
    parser.add_argument("--device", default="cuda", help="CUDA device, e.g. cuda:1")
    parser.add_argument("--skip-engine", action="store_true", help="leave out the SSA-engine rows (faster)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the benchmark (or explains that it needs CUDA) and prints the table."""
    args = parse_args(argv)
    if not args.cpu_smoke and not torch.cuda.is_available():
        print("bench/gpu.py needs CUDA (torch.cuda.is_available() is False); nothing measured.")
        print("Run `python bench/gpu.py --cpu-smoke` to exercise every code path on CPU with tiny models.")
        return 0
    height, width = (int(v) for v in args.size.lower().split("x"))
    setup = Setup(
        device=torch.device("cpu" if args.cpu_smoke else args.device),
        smoke=args.cpu_smoke,
        num_images=args.images,
        size=(128, 160) if args.cpu_smoke else (height, width),
        reference_images=min(args.reference_images, args.images),
        engine_masks=8 if args.cpu_smoke else args.engine_masks,
    )
    sam_types = (
        ["tiny", "sam2-tiny"] if setup.smoke else [s.strip() for s in args.sam.split(",") if s.strip()]
    )
    device_name = (
        torch.cuda.get_device_name(setup.device) if setup.device.type == "cuda" else "CPU (smoke run)"
    )
    print(f"samseg GPU benchmark on {device_name}: {setup.num_images} images of {setup.size[0]}x{setup.size[1]}, "
          f"random weights (speed only), torch {torch.__version__}")  # fmt: skip

    images = make_images(setup.num_images, setup.size)
    rows: list[Row] = []

    def add(new_rows: list[Row]) -> None:
        """Keeps rows for the table and prints each at once, so a run cut short still shows what it measured."""
        rows.extend(new_rows)
        for row in new_rows:
            print(f"  measured {row.stage} / {row.variant}: {row.seconds / max(row.images, 1):.3f} s/image, "
                  f"peak {row.peak_mb:.0f} MB", flush=True)  # fmt: skip

    with torch.inference_mode():
        baseline_rows, baselines = bench_baseline(setup, images)
        add(baseline_rows)
        for sam_type in sam_types:
            sam = build_sam(setup, sam_type)
            amg_rows, masks = bench_amg_and_voting(setup, sam, sam_type, images, baselines)
            add(amg_rows)
            add(bench_refinement(setup, sam, sam_type, images, baselines))
            del sam
            if not args.skip_engine:
                add(bench_engine(setup, sam_type, images, masks))
            if setup.device.type == "cuda":
                torch.cuda.empty_cache()
    print_table(rows, setup)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""samseg demo: build a small dataset in the demo's own database, run the pipeline, print a summary.

The demo never uses another process's database: it starts a private ``mongod`` on its own directory
(``~/.cache/samseg/demo/db``; FiftyOne's bundled service would attach to a service already running on this
machine, e.g. your App's, whatever ``FIFTYONE_DATABASE_DIR`` says), or uses the one ``--database-uri`` names.
``--app`` reopens that database in the FiftyOne App.

With weights reachable (online, or checkpoints already in place) it runs SegFormer-B0 and SAM vit_b on a few
images. Without them it builds synthetic scenes with ground truth and a stored coarse prediction standing in for
your own model, and runs the stages that need no weights. It says which path it took.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import socket
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SEGFORMER = "nvidia/segformer-b0-finetuned-ade-512-512"
DEMO_MARK = "samseg_demo"


def online(host: str = "huggingface.co", timeout: float = 3.0) -> bool:
    """Returns whether the Hugging Face hub answers within ``timeout`` seconds."""
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def find_weights(is_online: bool, sam: str = "vit_b") -> tuple[Any, Any, str]:
    """Returns (the SAM-family model ``sam`` names or None, a loaded SegFormer or None, what was found).

    ``sam`` is any ``sam=`` spec: ``vit_b`` (its checkpoint found locally, or downloaded when online), a SAM 2.1
    hub id such as ``facebook/sam2.1-hiera-large`` (the local Hugging Face cache, or the hub when online) or a
    directory saved with ``save_pretrained``.
    """
    from samseg_core.models.sam_family import describe_sam, load_sam_family
    from samseg_core.models.semantic import load_semantic_model

    if not is_online:
        os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        model = load_sam_family(sam, allow_download=is_online)
        sam_found = describe_sam(model)
    except (OSError, ValueError) as err:
        model, sam_found = None, f"not found ({str(err).splitlines()[0][:160]})"
    try:
        segformer = load_semantic_model(SEGFORMER)
    except Exception:
        segformer = None
    found = f"SAM {sam}: {sam_found}; {SEGFORMER}: {'found' if segformer else 'not found'}"
    return model, segformer, found


def fresh_dataset(name: str) -> Any:
    """Returns a new persistent dataset ``name``, replacing an earlier demo dataset but never a user's dataset."""
    import fiftyone as fo

    if fo.dataset_exists(name):
        old = fo.load_dataset(name)
        if not old.info.get(DEMO_MARK):
            sys.exit(f"dataset '{name}' exists and was not made by this demo; pass --dataset another-name")
        old.delete()
    dataset = fo.Dataset(name, persistent=True)
    dataset.info[DEMO_MARK] = True
    dataset.save()
    return dataset


def synthetic_samples(dataset: Any, image_dir: Path, count: int) -> None:
    """Adds synthetic scenes with ``ground_truth`` and a degraded ``coarse`` prediction ("your model")."""
    import fiftyone as fo

    from samseg_core.mask_targets import merge_mask_targets
    from samseg_core.testing import degrade_prediction, make_scenes, write_scene_images

    scenes = make_scenes(count, seed=7, size=(192, 256))
    paths = write_scene_images(scenes, image_dir)
    dataset.add_samples(
        fo.Sample(
            filepath=str(path),
            ground_truth=fo.Segmentation(mask=scene.semantic.astype("uint8")),
            coarse=fo.Segmentation(
                mask=degrade_prediction(scene, seed=i, missing_instances=1).astype("uint8")
            ),
        )
        for i, (scene, path) in enumerate(zip(scenes, paths))
    )
    for field in ("ground_truth", "coarse"):
        merge_mask_targets(dataset, field, scenes[0].class_names)


def zoo_samples(dataset: Any, count: int) -> bool:
    """Adds ``count`` images of FiftyOne's quickstart zoo dataset; False when it cannot be downloaded."""
    try:
        import fiftyone.zoo as foz

        quickstart = foz.load_zoo_dataset("quickstart", max_samples=count, persistent=False)
    except Exception as err:
        print(f"  (quickstart images unavailable: {err})")
        return False
    import fiftyone as fo

    dataset.add_samples(fo.Sample(filepath=path) for path in quickstart.values("filepath"))
    return True


def run_weight_free(dataset: Any) -> list[tuple[str, Any]]:
    """Voting over superpixels of the coarse prediction, then QA against the ground truth."""
    import samseg_core as ss

    steps = [
        (
            "semantic voting (superpixels, plurality)",
            ss.semantic_voting(
                dataset,
                baseline_field="coarse",
                label_field="ssa",
                masks="superpixels",
                instances_field="ssa_masks",
                mode="plurality",
            ),
        ),
        (
            "semantic voting (superpixels, no-harm)",
            ss.semantic_voting(
                dataset,
                baseline_field="coarse",
                label_field="ssa_noharm",
                masks="superpixels",
                instances_field="ssa_noharm_masks",
                mode="no_harm",
            ),
        ),
    ]
    steps += [
        (
            "calibrated fusion (vote over superpixels, per class)",
            ss.calibrate_fusion(
                dataset, gt_field="ground_truth", baseline_field="coarse", eval_key="fusion",
                methods=("vote",), masks="superpixels", min_support=50,
            ),
        ),
        (
            "apply fusion",
            ss.apply_fusion(
                dataset, calibration="fusion", baseline_field="coarse", label_field="fused", masks="superpixels"
            ),
        ),
    ]  # fmt: skip
    for field in ("coarse", "ssa", "ssa_noharm", "fused"):
        steps.append(
            (
                f"IoU of '{field}' vs ground truth",
                ss.evaluate_iou(dataset, pred_field=field, gt_field="ground_truth", eval_key=f"{field}_iou"),
            )
        )
    steps.append(
        (
            "failure modes of 'ssa'",
            ss.detect_failures(dataset, pred_field="ssa", gt_field="ground_truth", eval_key="ssa_failures"),
        )
    )
    steps.append(
        (
            "relabeling queue",
            ss.build_relabel_queue(dataset, eval_key="ssa_iou", name="relabel", failures_key="ssa_failures"),
        )
    )
    return steps


def run_with_weights(
    dataset: Any, segformer: Any, sam: Any, has_gt: bool, **amg: Any
) -> list[tuple[str, Any]]:
    """Real models: SegFormer baseline, SAM refinement and SAM semantic voting sharing one embedding per image.

    ``amg`` overrides the automatic mask generator's settings (tests use it to run tiny models quickly).
    """
    import samseg_core as ss
    from samseg_core.sam_embedding import EmbeddingCache

    cache = EmbeddingCache(sam)
    steps = [
        ("baseline (SegFormer-B0, ADE20K)", ss.run_baseline(dataset, model=segformer, label_field="baseline"))
    ]
    steps.append(
        (
            "SAM refinement (points+box, gated)",
            ss.refine_with_sam(
                dataset, baseline_field="baseline", label_field="sam_refined", sam=sam, cache=cache
            ),
        )
    )
    steps.append(
        (
            "semantic voting (SAM automatic masks, fast preset)",
            ss.semantic_voting(
                dataset,
                baseline_field="baseline",
                label_field="ssa",
                masks="sam",
                sam=sam,
                cache=cache,
                amg_preset="fast",
                **amg,
            ),
        )
    )
    for field in ("sam_refined", "ssa"):
        if has_gt:
            steps.append(
                (
                    f"IoU of '{field}' vs ground truth",
                    ss.evaluate_iou(
                        dataset, pred_field=field, gt_field="ground_truth", eval_key=f"{field}_iou"
                    ),
                )
            )
        else:
            steps.append(
                (
                    f"agreement of '{field}' with the baseline",
                    ss.agreement_iou(
                        dataset, baseline_field="baseline", pred_field=field, eval_key=f"{field}_agree"
                    ),
                )
            )
    return steps


def print_summary(dataset: Any, steps: list[tuple[str, Any]], path_taken: str) -> None:
    """Prints each step's counts, the per-field mIoU table and how to open the App."""
    print(f"\nsamseg demo — {path_taken}")
    print(f"dataset '{dataset.name}': {len(dataset)} samples in the demo's database")
    for name, result in steps:
        if hasattr(result, "sample_ids"):  # a relabeling queue
            result = (
                f"'{result.name}': {len(result.sample_ids)} samples queued (+{result.added} / -{result.removed}), "
                f"{result.tagged_labels} labels tagged, saved views {result.views}"
            )
        print(f"  {name}: {result}")
        if getattr(result, "extra", {}).get("choice") is not None:
            print(f"    per class: {result.extra['choice'] or 'every class keeps the baseline'}")
    modes = ("missing", "incomplete", "overlapping")
    for field in [f for f in dataset.get_field_schema() if f.endswith("_failures")]:
        counts = {mode: int(dataset.sum(f"{field}_{mode}")) for mode in modes}
        print(f"  failure modes in '{field}' (objects): {counts}")
    rows = [
        (key, dataset.mean(f"{key}_miou"))
        for key in sorted(dataset.list_runs() if hasattr(dataset, "list_runs") else [])
        if dataset.get_field(f"{key}_miou") is not None
    ]
    if rows:
        print(
            "\nmean per-image mIoU (synthetic scenes: illustrates the workflow, not model quality)"
            if "synthetic" in path_taken
            else "\nmean per-image mIoU"
        )
        for key, value in rows:
            print(f"  {key:<16} {value:.4f}")
    print(f"\nsaved views: {dataset.list_saved_views()}")
    print(f"open the App:  bash scripts/demo.sh --app --dataset {dataset.name}")


def main() -> None:
    """Runs the demo."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--dataset", default="samseg-demo", help="name of the demo dataset (replaced if ours)"
    )
    parser.add_argument("--images", type=int, default=6, help="number of images")
    parser.add_argument(
        "--offline", action="store_true", help="skip the weight check: weight-free stages only"
    )
    parser.add_argument("--image-dir", default=os.path.expanduser("~/.cache/samseg/demo/images"))
    parser.add_argument(
        "--sam",
        default="vit_b",
        help="SAM-family model for the real-model path: vit_b, a .pth checkpoint, a hub id such as "
        "facebook/sam2.1-hiera-large, or a save_pretrained directory",
    )
    parser.add_argument(
        "--db-dir",
        default=os.path.expanduser("~/.cache/samseg/demo/db"),
        help="directory of the demo's own database (a private mongod is started on it)",
    )
    parser.add_argument(
        "--database-uri", help="use this MongoDB instead of the demo's own (one you started yourself)"
    )
    parser.add_argument("--app", action="store_true", help="open the demo dataset in the FiftyOne App")
    args = parser.parse_args()
    with demo_database(args.db_dir, args.database_uri) as uri:
        print(f"database: {uri}" + ("" if args.database_uri else f" (the demo's own, in {args.db_dir})"))
        if args.app:
            open_app(args.dataset)
        else:
            run_demo(args)


@contextlib.contextmanager
def demo_database(db_dir: str, database_uri: str | None) -> Iterator[str]:
    """Yields the URI FiftyOne uses for the demo: ``database_uri``, or a private mongod on ``db_dir`` (stopped
    afterwards; its data stays). FiftyOne must not be imported yet, or must already use that database."""
    from samseg_core.testing.mongod import StandaloneMongod

    server = None if database_uri else StandaloneMongod(dbpath=db_dir).start()
    uri = database_uri or server.uri
    try:
        if "fiftyone" in sys.modules:
            import fiftyone as fo

            if fo.config.database_uri != uri:
                sys.exit("fiftyone was imported on another database before the demo chose its own")
        os.environ["FIFTYONE_DATABASE_URI"] = uri
        os.environ.pop("FIFTYONE_PRIVATE_DATABASE_PORT", None)
        yield uri
    finally:
        if server is not None:
            server.stop()


def open_app(name: str) -> None:
    """Opens dataset ``name`` of the demo's database in the App and waits until the App is closed."""
    import fiftyone as fo

    if not fo.dataset_exists(name):
        sys.exit(f"no dataset '{name}' in the demo's database: run `bash scripts/demo.sh` first")
    session = fo.launch_app(fo.load_dataset(name))
    session.wait()


def run_demo(args: argparse.Namespace) -> None:
    """Builds the demo dataset and runs the real-model or the weight-free path."""
    import fiftyone as fo

    fo.config.show_progress_bars = False

    is_online = False if args.offline else online()
    sam, segformer, found = (
        (None, None, "skipped (--offline)") if args.offline else find_weights(is_online, args.sam)
    )
    print(f"network: {'online' if is_online else 'offline'}; weights: {found}")

    dataset = fresh_dataset(args.dataset)
    if sam is not None and segformer is not None:
        from samseg_core.models.sam_family import describe_sam

        has_gt = not (is_online and zoo_samples(dataset, args.images))
        if has_gt:
            synthetic_samples(dataset, Path(args.image_dir), args.images)
        path = f"real models (SegFormer-B0 + SAM {args.sam}, {describe_sam(sam)}) on " + (
            "synthetic scenes" if has_gt else "quickstart images"
        )
        steps = run_with_weights(dataset, segformer, sam, has_gt)
    else:
        synthetic_samples(dataset, Path(args.image_dir), args.images)
        path = "no weights reachable: synthetic scenes + a stored coarse prediction, weight-free stages"
        steps = run_weight_free(dataset)
    print_summary(dataset, steps, path)


if __name__ == "__main__":
    main()

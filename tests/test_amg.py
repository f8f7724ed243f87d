"""samseg's automatic mask generator: segment_anything's masks, from every backend, OOM halving, cached embeddings."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.optimize import linear_sum_assignment
from segment_anything import SamAutomaticMaskGenerator
from segment_anything.utils.amg import build_all_layer_point_grids

from samseg_core.amg import AutomaticMaskGenerator, GeneratedMasks, concat_runs, take_runs, uncrop_runs
from samseg_core.mask_runs import runs_from_dense
from samseg_core.models.promptable import SegmentAnythingBackend, load_promptable
from samseg_core.testing.localized_sam import localized_sam
from samseg_core.testing.scenes import make_scene
from samseg_core.testing.tiny_models import tiny_sam
from samseg_core.testing.tiny_sam_family import save_tiny_transformers_sam


def make_image(size, seed=0):
    """A synthetic RGB scene (bands, ellipses, rectangles, a ring, a thin bar)."""
    return make_scene(seed, size=size).image


# Thresholds that keep 100-500 masks of the localized tiny SAM on the 200x300 scene.
KEEPING = dict(points_per_side=16, pred_iou_thresh=0.8, stability_score_thresh=0.9)
# Every filter off, NMS keeping identical boxes: a random decoder's image-wide masks all survive.
PERMISSIVE = dict(points_per_side=4, pred_iou_thresh=0.0, stability_score_thresh=0.0, box_nms_thresh=1.0)


@pytest.fixture(scope="module")
def sam():
    return localized_sam("tiny")


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    return make_image((200, 300))


def _match(reference: list[dict], ours: list[dict]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(ref rows, our rows, IoU)`` of the 1:1 assignment maximising mask IoU (Hungarian)."""
    a = np.stack([r["segmentation"].reshape(-1) for r in reference]).astype(np.float32)
    b = np.stack([r["segmentation"].reshape(-1) for r in ours]).astype(np.float32)
    inter = a @ b.T
    union = a.sum(1)[:, None] + b.sum(1)[None, :] - inter
    iou = np.where(union > 0, inter / np.maximum(union, 1), 1.0)
    rows, cols = linear_sum_assignment(-iou)
    return rows, cols, iou[rows, cols]


def _assert_matches_reference(reference: list[dict], ours: GeneratedMasks) -> None:
    records = ours.records()
    assert len(reference) >= 20, "the settings must keep enough masks for the comparison to mean something"
    assert abs(len(records) - len(reference)) <= 0.01 * len(reference)
    assert set(records[0]) == set(reference[0])
    rows, cols, iou = _match(reference, records)
    good = iou >= 0.99
    assert good.sum() >= 0.99 * len(reference)
    assert np.mean(rows == cols) >= 0.99, "masks come in the reference's order"
    for i, j, same in zip(rows[good], cols[good], iou[good] == 1.0):
        ref, mine = reference[i], records[j]
        assert mine["crop_box"] == ref["crop_box"]
        np.testing.assert_allclose(mine["point_coords"], ref["point_coords"], atol=1e-6)
        assert mine["predicted_iou"] == pytest.approx(ref["predicted_iou"], abs=1e-4)
        assert mine["stability_score"] == pytest.approx(ref["stability_score"], abs=5e-3)
        if same:
            assert mine["bbox"] == ref["bbox"] and mine["area"] == ref["area"]


@pytest.mark.parametrize(
    "settings",
    [
        KEEPING,
        {**KEEPING, "crop_n_layers": 1},
        {**KEEPING, "min_mask_region_area": 100},
        {**KEEPING, "crop_n_layers": 1, "min_mask_region_area": 60, "points_per_batch": 50},
    ],
    ids=["crops_off", "crops_on", "small_regions", "crops_small_regions_odd_batch"],
)
def test_masks_match_segment_anything(sam, image, settings):
    reference = SamAutomaticMaskGenerator(sam, **settings).generate(image)
    ours = AutomaticMaskGenerator(SegmentAnythingBackend(sam), **settings).generate(image)
    _assert_matches_reference(reference, ours)


def test_masks_match_segment_anything_with_every_filter_off(image):
    plain = tiny_sam(256)  # the real (random) decoder: image-wide masks, the crop windows span the crop
    settings = {**PERMISSIVE, "points_per_side": 8, "crop_n_layers": 1, "crop_nms_thresh": 1.0}
    reference = SamAutomaticMaskGenerator(plain, **settings).generate(image)
    ours = AutomaticMaskGenerator(SegmentAnythingBackend(plain), **settings).generate(image)
    _assert_matches_reference(reference, ours)


def test_runs_boxes_and_areas_agree(sam, image):
    ours = AutomaticMaskGenerator(SegmentAnythingBackend(sam), **{**KEEPING, "crop_n_layers": 1}).generate(
        image
    )
    assert len(ours) > 0 and ours.runs.shape == image.shape[:2] and ours.runs.order == "C"
    np.testing.assert_array_equal(ours.boxes_xyxy, ours.runs.boxes_xyxy())
    np.testing.assert_array_equal(ours.area, ours.runs.areas())
    assert (ours.area > 0).all()
    for name in ("predicted_iou", "stability_score", "point_coords", "crop_box", "boxes_xyxy"):
        assert len(getattr(ours, name)) == len(ours)


def _backend(kind: str, tmp_path):
    if kind == "segment_anything":
        return SegmentAnythingBackend(tiny_sam(256))
    return load_promptable(save_tiny_transformers_sam(tmp_path / kind, kind), device="cpu")


@pytest.mark.parametrize("kind", ["segment_anything", "sam", "sam_hq", "sam2"])
def test_every_backend_gives_masks_of_its_own_decode(kind, tmp_path, image):
    model = _backend(kind, tmp_path)
    out = AutomaticMaskGenerator(model, **PERMISSIVE).generate(image)
    assert len(out) > 0
    np.testing.assert_array_equal(out.boxes_xyxy[out.area > 0], out.runs.boxes_xyxy()[out.area > 0])
    np.testing.assert_array_equal(out.area, out.runs.areas())
    # decode the whole grid as the generator does (one batch) and find each mask among its point's 3 masks
    height, width = image.shape[:2]
    grid = build_all_layer_point_grids(PERMISSIVE["points_per_side"], 0, 1)[0] * np.array([width, height])
    points = torch.as_tensor(grid, dtype=torch.float32)[:, None]
    with torch.no_grad():
        decoded = model.decode(model.embed([image]), 0, points=points, point_labels=torch.ones(len(grid), 1))
        masks = (model.upscale(decoded.low_res_logits, (height, width)) > model.mask_threshold).numpy()
    dense = out.runs.to_dense()
    for i in range(len(out)):
        (prompt,) = np.flatnonzero(np.all(grid == out.point_coords[i], axis=1))
        same = [k for k in range(masks.shape[1]) if np.array_equal(masks[prompt, k], dense[i])]
        assert same, f"mask {i} is none of the masks its point decodes to"
        assert np.isclose(
            decoded.iou_predictions[prompt, same].numpy(), out.predicted_iou[i], atol=1e-6
        ).any()


class _OomOnLargeBatches:
    """Wraps ``model.decode``: raises ``error`` whenever a batch has more than ``limit`` prompts."""

    def __init__(self, model, limit: int, error: BaseException) -> None:
        self.decode, self.limit, self.error, self.raised = model.decode, limit, error, 0

    def __call__(self, embeddings, index, points=None, **kwargs):
        if points is not None and points.shape[0] > self.limit:
            self.raised += 1
            raise self.error
        return self.decode(embeddings, index, points=points, **kwargs)


def _assert_same_masks(a: GeneratedMasks, b: GeneratedMasks) -> None:
    assert len(a) == len(b)
    for name in ("mask_index", "start", "length"):
        np.testing.assert_array_equal(getattr(a.runs, name), getattr(b.runs, name))
    for name in ("point_coords", "crop_box", "boxes_xyxy", "area"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    np.testing.assert_allclose(a.predicted_iou, b.predicted_iou, atol=1e-6)
    np.testing.assert_allclose(a.stability_score, b.stability_score, atol=1e-6)


@pytest.mark.parametrize(
    "error",
    [
        torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
        RuntimeError("CUDA error: out of memory"),
    ],
    ids=["OutOfMemoryError", "RuntimeError"],
)
def test_out_of_memory_halves_the_batch_and_gives_the_same_masks(sam, image, error, monkeypatch):
    settings = {**KEEPING, "crop_n_layers": 1, "points_per_batch": 64}
    expected = AutomaticMaskGenerator(SegmentAnythingBackend(sam), **settings).generate(image)
    model = SegmentAnythingBackend(sam)
    failing = _OomOnLargeBatches(model, limit=20, error=error)
    monkeypatch.setattr(model, "decode", failing)
    generator = AutomaticMaskGenerator(model, **settings)
    out = generator.generate(image)
    assert failing.raised == 2 and out.oom_halvings == [32, 16] and generator.oom_halvings == [32, 16]
    assert out.points_per_batch_used == 16
    _assert_same_masks(out, expected)
    again = generator.generate(image)  # the next image starts from the reduced batch: no new OOM
    assert failing.raised == 2 and again.oom_halvings == [] and again.points_per_batch_used == 16


def test_out_of_memory_at_batch_one_and_other_errors_propagate(sam, image, monkeypatch):
    model = SegmentAnythingBackend(sam)
    monkeypatch.setattr(
        model, "decode", _OomOnLargeBatches(model, 0, torch.cuda.OutOfMemoryError("out of memory"))
    )
    generator = AutomaticMaskGenerator(model, **{**KEEPING, "points_per_batch": 4})
    with pytest.raises(torch.cuda.OutOfMemoryError):
        generator.generate(image)
    assert generator.oom_halvings == [2, 1]
    monkeypatch.setattr(model, "decode", _OomOnLargeBatches(model, 0, RuntimeError("shape mismatch")))
    with pytest.raises(RuntimeError, match="shape mismatch"):
        AutomaticMaskGenerator(model, **KEEPING).generate(image)


@pytest.mark.parametrize("crop_n_layers", [0, 1])
def test_given_embeddings_skip_the_encoder_for_the_full_image(sam, image, crop_n_layers, monkeypatch):
    settings = {**KEEPING, "crop_n_layers": crop_n_layers}
    model = SegmentAnythingBackend(sam)
    expected = AutomaticMaskGenerator(model, **settings).generate(image)
    cached = model.embed([make_image((120, 160), seed=1), image])  # a batch: the image is row 1
    embedded: list[list[tuple[int, ...]]] = []
    embed = model.embed
    monkeypatch.setattr(
        model, "embed", lambda images: embedded.append([i.shape for i in images]) or embed(images)
    )
    out = AutomaticMaskGenerator(model, **settings).generate(image, embeddings=cached, index=1)
    assert all(image.shape not in shapes for shapes in embedded)
    assert len(embedded) == crop_n_layers  # one call per crop layer, with all its crops
    assert all(len(shapes) == 4 for shapes in embedded)
    _assert_same_masks(out, expected)


def test_embeddings_of_another_image_size_are_refused(sam, image):
    model = SegmentAnythingBackend(sam)
    other = model.embed([make_image((120, 160))])
    with pytest.raises(ValueError, match="embeddings\\[0\\]"):
        AutomaticMaskGenerator(model, **KEEPING).generate(image, embeddings=other)


def test_window_keeps_every_pixel_that_passes_a_threshold(tmp_path):
    """The stability pass compares only a window of the upscaled crop: it must hold every pixel above the lowest
    threshold, for both upscale geometries (padded square; SAM 2's plain resize)."""
    generator_by_kind = {
        "padded": AutomaticMaskGenerator(SegmentAnythingBackend(tiny_sam(256))),
        "square": AutomaticMaskGenerator(
            load_promptable(save_tiny_transformers_sam(tmp_path, "sam2"), device="cpu")
        ),
    }
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:64, 0:64]
    for geometry, generator in generator_by_kind.items():
        assert generator._geometry == geometry
        for crop_size in [(200, 300), (517, 643), (77, 50)]:
            blobs = []
            for _ in range(6):  # smooth peaks with steep sides: small windows
                cy, cx, r = rng.uniform(0, 64), rng.uniform(0, 64), rng.uniform(1, 8)
                blobs.append(12.0 * (1 - ((yy - cy) ** 2 + (xx - cx) ** 2) / r**2))
            low = torch.tensor(np.stack(blobs), dtype=torch.float32).clamp(min=-20)
            for chunk in (low[:1], low[1:3], low):
                window = generator._window(chunk, crop_size)
                assert window is not None
                logits = generator.model.upscale(chunk[:, None], crop_size)[:, 0]
                for threshold in (-1.0, 0.0, 1.0):
                    inside = (logits[:, window[0], window[1]] > threshold).sum((1, 2))
                    assert torch.equal(inside, (logits > threshold).sum((1, 2)))
                area = (window[0].stop - window[0].start) * (window[1].stop - window[1].start)
                if chunk.shape[0] == 1:
                    assert (
                        area < crop_size[0] * crop_size[1]
                    ), "a small blob's window is smaller than the crop"


def test_uncrop_runs_equals_padding_the_masks():
    rng = np.random.default_rng(0)
    masks = rng.random((5, 7, 9)) < 0.4
    masks[0, :, :] = True  # runs through every line break of the crop
    masks[1] = False
    for crop_box, image_size in [([3, 2, 12, 9], (11, 15)), ([0, 4, 9, 11], (11, 9)), ([0, 0, 9, 7], (7, 9))]:
        x0, y0, x1, y1 = crop_box
        padded = np.zeros((5, *image_size), bool)
        padded[:, y0:y1, x0:x1] = masks
        runs = uncrop_runs(runs_from_dense(masks), crop_box, image_size)
        np.testing.assert_array_equal(runs.to_dense(), padded)
        assert (runs.length > 0).all() and runs.shape == image_size


def test_take_and_concat_runs_reorder_masks():
    rng = np.random.default_rng(1)
    masks = rng.random((6, 5, 8)) < 0.5
    masks[2] = False
    runs = runs_from_dense(masks)
    order = [4, 2, 0, 4, 5]
    np.testing.assert_array_equal(take_runs(runs, order).to_dense(), masks[order])
    both = concat_runs([take_runs(runs, [1]), runs])
    np.testing.assert_array_equal(both.to_dense(), np.concatenate([masks[1:2], masks]))
    assert take_runs(runs, []).num_masks == 0


def test_settings_are_checked(sam):
    model = SegmentAnythingBackend(sam)
    with pytest.raises(ValueError, match="exactly one"):
        AutomaticMaskGenerator(model, points_per_side=None)
    with pytest.raises(ValueError, match="exactly one"):
        AutomaticMaskGenerator(model, points_per_side=8, point_grids=[np.zeros((1, 2))])
    with pytest.raises(ValueError, match="layer"):
        AutomaticMaskGenerator(
            model, points_per_side=None, point_grids=[np.full((4, 2), 0.5)], crop_n_layers=1
        )
    with pytest.raises(ValueError, match="points_per_batch"):
        AutomaticMaskGenerator(model, points_per_batch=0)
    with pytest.raises(ValueError, match="uint8"):
        AutomaticMaskGenerator(model).generate(np.zeros((10, 10, 3), np.float32))


def test_explicit_point_grids_match_the_reference(sam, image):
    grids = [np.random.default_rng(2).random((150, 2))]
    settings = {**KEEPING, "points_per_side": None, "point_grids": grids}
    reference = SamAutomaticMaskGenerator(sam, **settings).generate(image)
    ours = AutomaticMaskGenerator(SegmentAnythingBackend(sam), **settings).generate(image)
    _assert_matches_reference(reference, ours)


@pytest.mark.parametrize("crop_n_layers", [0, 1])
def test_no_mask_passing_the_filters_gives_an_empty_result(sam, image, crop_n_layers):
    settings = {
        **KEEPING,
        "pred_iou_thresh": 0.999,
        "crop_n_layers": crop_n_layers,
        "min_mask_region_area": 10,
    }
    if crop_n_layers == 0:  # with crops, segment_anything itself fails (IndexError in box_area of no boxes)
        assert SamAutomaticMaskGenerator(sam, **settings).generate(image) == []
    out = AutomaticMaskGenerator(SegmentAnythingBackend(sam), **settings).generate(image)
    assert len(out) == 0 and out.records() == [] and out.runs.shape == image.shape[:2]
    assert (
        out.boxes_xyxy.shape == (0, 4) and out.point_coords.shape == (0, 2) and out.crop_box.shape == (0, 4)
    )

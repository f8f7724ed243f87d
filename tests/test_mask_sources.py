"""Mask sources: SAM's generator (with a shared embedding cache), stored Detections, superpixels, resolution."""

from __future__ import annotations

import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest

from samseg_core.mask_sources import (
    SSA_PRESET,
    DetectionsSource,
    MaskProposals,
    MaskSource,
    SamAutomaticSource,
    SuperpixelSource,
    amg_settings,
)
from samseg_core.masks import masks_to_boxes_xyxy
from samseg_core.runner import SampleItem
from samseg_core.sam_embedding import EmbeddingCache
from samseg_core.testing import make_scene, tiny_sam

# with random weights SAM keeps no mask unless the quality thresholds are 0
RANDOM_SAM = dict(preset=None, points_per_side=4, pred_iou_thresh=0.0, stability_score_thresh=0.0)


@pytest.fixture(scope="module")
def sam():
    return tiny_sam()


@pytest.fixture(scope="module")
def item():
    return SampleItem("sample-1", "scene.png", make_scene(0, size=(96, 128)).image, {})


class EncoderCounter:
    """Counts images through SAM's image encoder (forward hook)."""

    def __init__(self, sam) -> None:
        self.images = 0
        self.handle = sam.image_encoder.register_forward_hook(self._count)

    def _count(self, module, inputs, output) -> None:
        self.images += inputs[0].shape[0]

    def __enter__(self) -> EncoderCounter:
        return self

    def __exit__(self, *exc) -> None:
        self.handle.remove()


def test_sam_source_returns_image_sized_masks_with_sam_fields(sam, item):
    proposals = SamAutomaticSource(sam, **RANDOM_SAM).proposals(item)

    assert len(proposals) > 0 and proposals.masks.shape[1:] == (96, 128)
    assert np.isfinite(proposals.predicted_iou).all() and np.isfinite(proposals.stability_score).all()
    assert (proposals.crop_box == [0, 0, 128, 96]).all()
    assert ((proposals.point_coords >= 0) & (proposals.point_coords <= [128, 96])).all()


def test_sam_source_keeps_runs_and_makes_no_dense_stack_for_voting(sam, item):
    proposals = SamAutomaticSource(sam, **RANDOM_SAM).proposals(item)

    assert not proposals.dense  # held as runs: votes, boxes, areas and box masks need no N x H x W stack
    runs, boxes, areas = proposals.mask_runs(), proposals.boxes_xyxy(), proposals.areas
    windows = list(proposals.box_masks())
    assert not proposals.dense
    dense = runs.to_dense()
    assert np.array_equal(areas, dense.sum(axis=(1, 2)))
    assert np.array_equal(boxes, masks_to_boxes_xyxy(dense))
    for index, box, window in windows:
        x0, y0, x1, y1 = box
        assert np.array_equal(window, dense[index, y0 : y1 + 1, x0 : x1 + 1])
    assert np.array_equal(proposals.masks, dense) and proposals.dense


def test_shared_cache_runs_the_encoder_once_per_image(sam, item):
    cache = EmbeddingCache(sam)
    source = SamAutomaticSource(sam, cache=cache, **RANDOM_SAM)
    with EncoderCounter(sam) as counter:
        cache.get(item.id, item.image)  # another stage (e.g. refinement) embedded this image first
        source.proposals(item)
        source.proposals(item)

    assert counter.images == 1 and cache.encoder_calls == 1


def test_cached_embedding_gives_the_uncached_masks(sam, item):
    cached = SamAutomaticSource(sam, cache=EmbeddingCache(sam), **RANDOM_SAM).proposals(item)
    plain = SamAutomaticSource(sam, **RANDOM_SAM).proposals(item)

    assert np.array_equal(cached.masks, plain.masks)
    assert np.allclose(cached.predicted_iou, plain.predicted_iou)


def test_crops_are_encoded_but_the_full_image_comes_from_the_cache(sam, item):
    cache = EmbeddingCache(sam)
    cache.get(item.id, item.image)
    source = SamAutomaticSource(sam, cache=cache, **{**RANDOM_SAM, "crop_n_layers": 1})
    with EncoderCounter(sam) as counter:
        source.proposals(item)

    assert counter.images == 4  # the 2x2 crops of layer 1, not the full image


def test_presets_merge_with_overrides_and_reject_unknown_settings():
    settings = amg_settings("ssa", points_per_side=8)

    assert settings == {**SSA_PRESET, "points_per_side": 8}
    with pytest.raises(TypeError, match="points_per_sid"):
        amg_settings("ssa", points_per_sid=8)
    with pytest.raises(ValueError, match="preset"):
        amg_settings("slow")


def box_detection(box, mask=None, **attributes):
    return SimpleNamespace(bounding_box=box, mask=mask, **attributes)


def test_detections_source_places_box_masks_and_reads_sam_attributes():
    mask = np.array([[1, 0], [1, 1]], bool)
    detections = SimpleNamespace(
        detections=[
            box_detection([0.25, 0.5, 0.5, 0.5], mask, predicted_iou=0.9, point_coords=[[1.0, 2.0]]),
            box_detection([0.0, 0.0, 0.25, 0.25], None, stability_score=0.5, crop_box=[0, 0, 2, 2]),
        ]
    )
    item = SampleItem("s", "x.png", np.zeros((4, 4, 3), np.uint8), {"sa1b": detections})

    proposals = DetectionsSource("sa1b").proposals(item)

    expected = np.zeros((2, 4, 4), bool)
    expected[0, 2:4, 1:3] = mask
    expected[1, 0, 0] = True
    assert np.array_equal(proposals.masks, expected)
    assert proposals.predicted_iou[0] == pytest.approx(0.9) and np.isnan(proposals.predicted_iou[1])
    assert np.isnan(proposals.stability_score[0]) and proposals.stability_score[1] == 0.5
    assert proposals.point_coords[0].tolist() == [1.0, 2.0] and np.isnan(proposals.point_coords[1]).all()
    assert proposals.crop_box.tolist() == [[0, 0, 4, 4], [0, 0, 2, 2]]


def test_detections_source_reads_fiftyone_dynamic_attributes():
    import fiftyone as fo

    det = fo.Detection(
        label="x", bounding_box=[0, 0, 0.5, 0.5], mask=np.ones((2, 2), bool), predicted_iou=0.7
    )
    item = SampleItem("s", "x.png", np.zeros((4, 4, 3), np.uint8), {"f": fo.Detections(detections=[det])})

    proposals = DetectionsSource("f").proposals(item)

    assert proposals.masks[0, :2, :2].all() and proposals.areas.tolist() == [4]
    assert proposals.predicted_iou[0] == pytest.approx(0.7)


def test_detections_source_without_a_value_gives_no_masks():
    item = SampleItem("s", "x.png", np.zeros((3, 5, 3), np.uint8), {"sa1b": None})

    proposals = DetectionsSource("sa1b").proposals(item)

    assert proposals.masks.shape == (0, 3, 5)


@pytest.mark.parametrize("method", ["felzenszwalb", "slic"])
def test_superpixels_partition_the_image(method, item):
    proposals = SuperpixelSource(method).proposals(item)

    assert len(proposals) > 5
    assert (proposals.masks.sum(axis=0) == 1).all()
    assert np.isnan(proposals.predicted_iou).all()


def test_mask_source_for_names(sam):
    from samseg_core.stages.sam_options import MaskSourceOptions, mask_source_for

    def source(**values):
        return mask_source_for(MaskSourceOptions(**MaskSourceOptions.normalize(values)), "cpu")

    assert isinstance(source(masks="sam", sam=sam, amg_preset="fast"), SamAutomaticSource)
    assert source(masks="superpixels").name == "felzenszwalb"
    assert source(masks="slic", mask_options={"n_segments": 10}).params == {"n_segments": 10}
    assert source(masks="field:sa1b").input_fields == ("sa1b",)
    built = SuperpixelSource()
    assert source(masks=built) is built and isinstance(built, MaskSource)


def test_proposals_fill_unknown_fields_with_nan_and_full_image_crop():
    proposals = MaskProposals.from_masks(np.ones((2, 3, 4), bool))

    assert np.isnan(proposals.predicted_iou).all() and np.isnan(proposals.point_coords).all()
    assert proposals.crop_box.tolist() == [[0, 0, 4, 3]] * 2 and proposals.areas.tolist() == [12, 12]


def test_algorithm_modules_do_not_import_fiftyone():
    code = (
        "import sys; import samseg_core.mask_sources, samseg_core.voting, samseg_core.ssa_format, "
        "samseg_core.mask_runs; print('fiftyone' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)

    assert out.stdout.strip() == "False"

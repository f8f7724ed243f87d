"""SSA / SA-1B JSON export: pycocotools reads the masks, fields round-trip, files are strict JSON."""

from __future__ import annotations

import json

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from samseg_core.mask_sources import MaskProposals
from samseg_core.ssa_format import proposals_from_ssa, read_ssa_json, write_ssa_json
from samseg_core.voting import vote_masks


@pytest.fixture
def proposals():
    rng = np.random.default_rng(0)
    masks = rng.random((3, 9, 13)) < 0.4
    masks[2] = False  # an empty mask
    return MaskProposals.from_masks(
        masks,
        predicted_iou=[0.9, np.nan, 0.5],
        stability_score=[0.95, 0.8, np.nan],
        point_coords=[[1.5, 2.0], [np.nan, np.nan], [3.0, 4.0]],
        crop_box=[[0, 0, 13, 9], [0, 0, 7, 5], [6, 4, 7, 5]],
    )


def test_segmentations_decode_with_pycocotools(proposals, tmp_path):
    path = write_ssa_json(tmp_path / "img.json", proposals, image={"image_id": "img"})

    annotations = read_ssa_json(path)["annotations"]

    decoded = np.stack([mask_utils.decode(a["segmentation"]) for a in annotations]).astype(bool)
    assert np.array_equal(decoded, proposals.masks)
    assert [a["area"] for a in annotations] == proposals.areas.tolist()


def test_sam_fields_and_classes_round_trip(proposals, tmp_path):
    path = write_ssa_json(
        tmp_path / "img.json",
        proposals,
        class_names=["car", "road", None],
        class_proposals=[["car", "bus"], ["road"], []],
    )

    record = read_ssa_json(path)
    restored = proposals_from_ssa(record)

    assert np.array_equal(restored.masks, proposals.masks)
    for field in ("predicted_iou", "stability_score", "point_coords", "crop_box"):
        assert np.array_equal(getattr(restored, field), getattr(proposals, field), equal_nan=True)
    assert [a["class_name"] for a in record["annotations"]] == ["car", "road", None]
    assert record["annotations"][0]["class_proposals"] == ["car", "bus"]
    assert record["image"] == {"height": 9, "width": 13}


def test_bbox_is_xywh_of_the_mask(tmp_path):
    masks = np.zeros((1, 6, 8), bool)
    masks[0, 2:5, 1:4] = True

    record = read_ssa_json(write_ssa_json(tmp_path / "a.json", MaskProposals.from_masks(masks)))

    assert record["annotations"][0]["bbox"] == [1, 2, 3, 3]


def test_unknown_values_are_written_as_null(proposals, tmp_path):
    text = write_ssa_json(tmp_path / "img.json", proposals).read_text()

    def refuse(constant):
        raise ValueError(f"non-standard JSON constant {constant}")

    record = json.loads(text, parse_constant=refuse)
    assert (
        record["annotations"][1]["predicted_iou"] is None and record["annotations"][1]["point_coords"] is None
    )


def test_voting_straight_from_the_json_rles_equals_voting_on_masks(proposals, tmp_path):
    baseline = np.random.default_rng(1).integers(0, 4, (9, 13))
    record = read_ssa_json(write_ssa_json(tmp_path / "img.json", proposals))

    from_json = vote_masks([a["segmentation"] for a in record["annotations"]], baseline)

    assert np.array_equal(from_json.semantic, vote_masks(proposals.masks, baseline).semantic)

"""SSA / SA-1B JSON per image: SAM's mask fields plus ``class_name`` and ``class_proposals``, masks as COCO RLE.

Layout (one file per image, as SA-1B and Semantic Segment Anything write it)::

    {"image": {"image_id", "file_name", "height", "width", ...},
     "annotations": [{"id", "segmentation": {"size": [h, w], "counts": str}, "area", "bbox": [x, y, w, h],
                      "predicted_iou", "stability_score", "point_coords": [[x, y]], "crop_box": [x, y, w, h],
                      "class_name", "class_proposals": [...]}, ...]}

Unknown values (nan) are written as ``null`` so the file is strict JSON; ``counts`` is a str, so pycocotools
(``mask.decode``) reads the segmentations directly.
"""

from __future__ import annotations

import json
import math
import os
import pathlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils

from samseg_core.mask_runs import MaskRuns
from samseg_core.mask_sources import MaskProposals
from samseg_core.masks import box_xyxy_to_xywh, rle_decode


def _float_or_none(value: float) -> float | None:
    value = float(value)
    return None if math.isnan(value) else value


def encode_rles(masks: np.ndarray) -> list[dict[str, Any]]:
    """Returns COCO RLEs (``counts`` as str) of ``(N, H, W)`` masks, encoded by pycocotools in one call."""
    masks = np.asarray(masks, dtype=bool)
    if len(masks) == 0:
        return []
    # (H, W, N) in Fortran order is exactly the (N, W, H) C-order layout pycocotools reads
    encoded = mask_utils.encode(np.asfortranarray(masks.transpose(1, 2, 0).astype(np.uint8)))
    return [
        {"size": [int(r["size"][0]), int(r["size"][1])], "counts": r["counts"].decode("ascii")}
        for r in encoded
    ]


def rles_from_runs(runs: MaskRuns) -> list[dict[str, Any]]:
    """Returns COCO RLEs (``counts`` as str) of column-major :class:`MaskRuns`, without a dense mask.

    A mask's uncompressed counts alternate background and foreground lengths from pixel 0: the gap before
    each run, the run, ..., then the background after the last run; pycocotools compresses them.
    """
    if runs.order != "F":
        raise ValueError("COCO RLEs are column-major: pass MaskRuns in order 'F'")
    height, width = runs.shape
    n, pixels = runs.num_masks, height * width
    if n == 0:
        return []
    per_mask = np.bincount(runs.mask_index, minlength=n)
    first_run = np.cumsum(per_mask) - per_mask
    local = np.arange(runs.mask_index.size) - first_run[runs.mask_index]
    prev_end = np.concatenate([[0], runs.end[:-1]])
    prev_end[local == 0] = 0
    offsets = np.cumsum(2 * per_mask + 1) - (2 * per_mask + 1)
    counts = np.empty(int((2 * per_mask + 1).sum()), np.int64)
    at = offsets[runs.mask_index] + 2 * local
    counts[at] = runs.start - prev_end
    counts[at + 1] = runs.length
    last_end = np.zeros(n, np.int64)
    last_end[runs.mask_index] = runs.end  # runs are sorted by mask then start: the last write is the last run
    counts[offsets + 2 * per_mask] = pixels - last_end
    pieces = np.split(counts, offsets[1:])
    encoded = mask_utils.frPyObjects(
        [{"size": [height, width], "counts": piece.tolist()} for piece in pieces], height, width
    )
    return [{"size": [height, width], "counts": r["counts"].decode("ascii")} for r in encoded]


def proposal_rles(proposals: MaskProposals) -> list[dict[str, Any]]:
    """COCO RLEs of the proposals: pycocotools on a dense stack, the label map's runs otherwise."""
    if proposals.dense:
        return encode_rles(proposals.masks)
    return rles_from_runs(proposals.mask_runs("F"))


def ssa_annotations(
    proposals: MaskProposals,
    class_names: Sequence[str | None] | None = None,
    class_proposals: Sequence[Sequence[str]] | None = None,
) -> list[dict[str, Any]]:
    """Returns one SA-1B/SSA annotation dict per proposal (empty masks included, with a zero box).

    Args:
        proposals: the masks and their SAM fields.
        class_names: per mask, its class name (None: not labelled).
        class_proposals: per mask, candidate class names, best first.
    """
    n = len(proposals)
    if class_names is not None and len(class_names) != n:
        raise ValueError(f"{n} masks but {len(class_names)} class names")
    if class_proposals is not None and len(class_proposals) != n:
        raise ValueError(f"{n} masks but {len(class_proposals)} class proposal lists")
    areas = proposals.areas
    boxes = box_xyxy_to_xywh(proposals.boxes_xyxy())
    boxes[areas == 0] = 0
    annotations = []
    for i, rle in enumerate(proposal_rles(proposals)):
        point = proposals.point_coords[i]
        annotation: dict[str, Any] = {
            "id": i,
            "segmentation": rle,
            "area": int(areas[i]),
            "bbox": [int(v) for v in boxes[i]],
            "predicted_iou": _float_or_none(proposals.predicted_iou[i]),
            "stability_score": _float_or_none(proposals.stability_score[i]),
            "point_coords": None if np.isnan(point).any() else [[float(point[0]), float(point[1])]],
            "crop_box": [float(v) for v in proposals.crop_box[i]],
        }
        if class_names is not None:
            annotation["class_name"] = class_names[i]
        if class_proposals is not None:
            annotation["class_proposals"] = [str(c) for c in class_proposals[i]]
        annotations.append(annotation)
    return annotations


def write_ssa_json(
    path: str | os.PathLike,
    proposals: MaskProposals,
    *,
    image: Mapping[str, Any] | None = None,
    class_names: Sequence[str | None] | None = None,
    class_proposals: Sequence[Sequence[str]] | None = None,
) -> pathlib.Path:
    """Writes one image's SSA JSON (atomically) and returns its path.

    Args:
        path: the ``.json`` file to write (parent directories are created).
        proposals: the masks and their SAM fields.
        image: the ``"image"`` record (``image_id``, ``file_name``, ...); height and width are filled in.
        class_names: per mask, its class name.
        class_proposals: per mask, candidate class names, best first.
    """
    height, width = proposals.image_size
    record = {
        "image": {**dict(image or {}), "height": height, "width": width},
        "annotations": ssa_annotations(proposals, class_names, class_proposals),
    }
    out = pathlib.Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps(record, allow_nan=False))
    os.replace(tmp, out)
    return out


def read_ssa_json(path: str | os.PathLike) -> dict[str, Any]:
    """Returns the ``{"image": ..., "annotations": [...]}`` record of an SSA / SA-1B JSON file."""
    record = json.loads(pathlib.Path(path).read_text())
    if not isinstance(record, dict) or "annotations" not in record:
        raise ValueError(f"{path} is not an SSA / SA-1B record (no 'annotations')")
    record.setdefault("image", {})
    return record


def proposals_from_ssa(record: Mapping[str, Any]) -> MaskProposals:
    """Returns the masks and SAM fields of an SSA / SA-1B record (missing or null fields become nan)."""
    annotations = list(record["annotations"])
    image = record.get("image", {})
    if annotations:
        height, width = (int(v) for v in annotations[0]["segmentation"]["size"])
    else:
        height, width = int(image["height"]), int(image["width"])

    def number(annotation: Mapping[str, Any], key: str) -> float:
        value = annotation.get(key)
        return math.nan if value is None else float(value)

    def point(annotation: Mapping[str, Any]) -> list[float]:
        value = annotation.get("point_coords")
        return [math.nan, math.nan] if not value else list(np.asarray(value, float).reshape(-1, 2)[0])

    masks = np.stack([rle_decode(a["segmentation"]) for a in annotations]) if annotations else None
    return MaskProposals.from_masks(
        masks if masks is not None else np.zeros((0, height, width), bool),
        predicted_iou=[number(a, "predicted_iou") for a in annotations],
        stability_score=[number(a, "stability_score") for a in annotations],
        point_coords=np.array([point(a) for a in annotations], np.float32).reshape(-1, 2),
        crop_box=np.array(
            [a.get("crop_box") or [0, 0, width, height] for a in annotations], np.float32
        ).reshape(-1, 4),
    )

"""Conversion between numpy masks and FiftyOne labels (mask-target bookkeeping: :mod:`samseg_core.mask_targets`)."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import fiftyone as fo
import numpy as np

from samseg_core.mask_files import write_png
from samseg_core.masks import masks_of_detections, masks_to_boxes_xyxy


class MaskTargetConflict(ValueError):
    """Raised when new mask targets would rename an existing class id."""


def compact_class_map(mask: np.ndarray) -> np.ndarray:
    """Returns an HxW class-id map as contiguous uint8 (ids below 256) or uint16; raises for other shapes/ids."""
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"expected an HxW class map, got shape {mask.shape}")
    if mask.size and (mask.min() < 0 or mask.max() > np.iinfo(np.uint16).max):
        raise ValueError("class ids must lie in [0, 65535]")
    dtype = np.uint8 if (not mask.size or mask.max() < 256) else np.uint16
    return np.ascontiguousarray(mask, dtype=dtype)


def segmentation_from_array(
    mask: np.ndarray, *, mask_dir: str | os.PathLike | None = None, name: str | None = None
) -> fo.Segmentation:
    """Returns an ``fo.Segmentation`` for an HxW class-id map, stored in the database or as a PNG.

    Args:
        mask: HxW integer class ids (values must fit in uint16).
        mask_dir: when given, the mask is written as ``<mask_dir>/<name>.png`` (atomically, through a uniquely
            named temporary file) and referenced by ``mask_path``. Stages write through
            :meth:`samseg_core.stages.plan.StagePlan.segmentation`, which adds the field's subdirectory.
        name: the PNG's file stem (e.g. the sample id); required with ``mask_dir``.
    """
    compact = compact_class_map(mask)
    if mask_dir is None:
        return fo.Segmentation(mask=compact)
    if not name:
        raise ValueError("segmentation_from_array needs a name when writing to mask_dir")
    path = os.path.abspath(os.path.join(os.fspath(mask_dir), f"{name}.png"))
    return fo.Segmentation(mask_path=write_png(path, compact))


def read_segmentation(label: Any) -> np.ndarray | None:
    """Returns the HxW class-id map of an ``fo.Segmentation`` (in-database or ``mask_path``), or None.

    RGB masks (FiftyOne's hex-colour mask targets) are not supported here and raise a ValueError naming the
    problem, so the caller can record it per sample.
    """
    if label is None:
        return None
    mask = label.get_mask() if hasattr(label, "get_mask") else getattr(label, "mask", None)
    if mask is None:
        return None
    mask = np.asarray(mask)
    if mask.ndim == 3:
        if mask.shape[2] == 1 or np.all(mask == mask[..., :1]):
            mask = mask[..., 0]
        else:
            raise ValueError("RGB segmentation masks are not supported; store class ids (HxW integers)")
    return mask.astype(np.int32, copy=False)


def mask_targets_of(samples: Any, field_name: str) -> dict[int, str]:
    """Returns the mask targets FiftyOne applies to ``field_name`` (field-specific, else the dataset default)."""
    dataset = samples._dataset
    targets = dataset.mask_targets.get(field_name) or dataset.default_mask_targets or {}
    return {int(k): str(v) for k, v in targets.items() if str(k).isdigit()}


def detections_from_masks(
    masks: np.ndarray,
    labels: Sequence[str],
    *,
    confidences: Sequence[float] | None = None,
    attributes: Mapping[str, Sequence[Any]] | None = None,
) -> fo.Detections:
    """Returns ``fo.Detections`` with one box-relative instance mask per full-image mask.

    Args:
        masks: (N, H, W) bool masks at image resolution; empty masks are skipped.
        labels: N class names.
        confidences: N scores (optional).
        attributes: name -> N values, set as dynamic attributes of each detection (numpy scalars converted).
    """
    masks = np.asarray(masks, dtype=bool)
    if masks.ndim != 3:
        raise ValueError(f"expected (N, H, W) masks, got shape {masks.shape}")
    n, height, width = masks.shape
    if len(labels) != n:
        raise ValueError(f"{n} masks but {len(labels)} labels")
    if n == 0:
        return fo.Detections(detections=[])
    boxes = masks_to_boxes_xyxy(masks)
    nonempty = np.flatnonzero(masks.reshape(n, -1).any(axis=1))
    windows = (
        (int(i), boxes[i], masks[i, boxes[i][1] : boxes[i][3] + 1, boxes[i][0] : boxes[i][2] + 1].copy())
        for i in nonempty  # copies: a view would keep the whole (N, H, W) stack alive with the labels
    )
    return detections_from_box_masks(
        windows, labels, (height, width), confidences=confidences, attributes=attributes
    )


def detections_from_box_masks(
    box_masks: Iterable[tuple[int, Sequence[int], np.ndarray]],
    labels: Sequence[str],
    image_size: tuple[int, int],
    *,
    confidences: Sequence[float] | None = None,
    attributes: Mapping[str, Sequence[Any]] | None = None,
) -> fo.Detections:
    """Returns ``fo.Detections`` from masks already cut to their boxes (no full-image mask is needed).

    Args:
        box_masks: ``(index, [x0, y0, x1, y1], mask)`` per detection: the proposal's index into ``labels``,
            ``confidences`` and ``attributes``, its inclusive pixel box and the bool mask inside that box
            (e.g. :meth:`samseg_core.mask_sources.MaskProposals.box_masks`).
        labels: class name per proposal.
        image_size: ``(H, W)`` of the image.
        confidences: score per proposal (optional).
        attributes: name -> value per proposal, set as dynamic attributes (numpy scalars converted).
    """
    height, width = image_size
    detections = []
    for i, box, mask in box_masks:
        x0, y0, x1, y1 = (int(v) for v in box)
        det = fo.Detection(
            label=str(labels[i]),
            bounding_box=[x0 / width, y0 / height, (x1 - x0 + 1) / width, (y1 - y0 + 1) / height],
            mask=np.asarray(mask, dtype=bool),
        )
        if confidences is not None:
            det.confidence = float(confidences[i])
        for key, values in (attributes or {}).items():
            det[key] = to_python(values[i])
        detections.append(det)
    return fo.Detections(detections=detections)


def masks_from_detections(detections: Any, height: int, width: int) -> tuple[np.ndarray, list[Any]]:
    """Returns (N, H, W) bool full-image masks of the detections and those detections.

    Detections without a mask fill their bounding box (a box is the best mask such a label offers).
    """
    return masks_of_detections(detections, height, width), list(getattr(detections, "detections", None) or [])


def to_python(value: Any) -> Any:
    """Converts numpy scalars/arrays (and containers of them) into plain Python values for storage."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Mapping):
        return {str(k): to_python(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_python(v) for v in value]
    return value

"""Mask geometry on numpy arrays: COCO RLE, boxes, connected components, nearest resizing, stacking."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils
from scipy import ndimage

__all__ = [
    "box_xyxy_to_xywh",
    "connected_components",
    "mask_to_box_xyxy",
    "masks_to_boxes_xyxy",
    "resize_mask_nearest",
    "rle_area",
    "rle_decode",
    "rle_encode",
    "stack_masks",
]


def rle_encode(mask: np.ndarray) -> dict[str, Any]:
    """Encode an HxW mask (nonzero = foreground) as compressed COCO RLE ``{"size": [h, w], "counts": str}``.

    ``counts`` is an ASCII str, so the result is JSON-serialisable as is.
    """
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"expected an HxW mask, got shape {mask.shape}")
    encoded = mask_utils.encode(np.asfortranarray(mask != 0, dtype=np.uint8))
    return {
        "size": [int(encoded["size"][0]), int(encoded["size"][1])],
        "counts": encoded["counts"].decode("ascii"),
    }


def _rle_size_counts(rle: dict[str, Any]) -> tuple[int, int, np.ndarray]:
    """Return ``(height, width, run lengths)`` of a COCO RLE whose counts are str, bytes or a list of ints."""
    try:
        height, width = (int(v) for v in rle["size"])
        counts = rle["counts"]
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"not a COCO RLE dict with 'size' [h, w] and 'counts': {rle!r:.200}") from e
    if isinstance(counts, str):
        counts = counts.encode("ascii")
    if isinstance(counts, bytes):
        runs = _runs_from_compressed(counts)
    elif isinstance(counts, list | tuple | np.ndarray):
        runs = np.asarray(counts, dtype=np.int64).ravel()
    else:
        raise ValueError(f"RLE counts must be str, bytes or a list of ints, got {type(counts).__name__}")
    if (runs.size and runs.min() < 0) or runs.sum() != height * width:
        raise ValueError(f"RLE counts do not cover a {height}x{width} mask")
    return height, width, runs


def _runs_from_compressed(counts: bytes) -> np.ndarray:
    """Run lengths of COCO's compressed counts string (pycocotools ``rleFrString``), vectorised.

    Each number is a little-endian sequence of 6-bit chars offset by 48: 5 value bits plus a continuation bit
    (0x20); the last char's bit 0x10 is the sign. From the fourth number on, each is stored as a difference to
    the number two places before it.
    """
    chars = np.frombuffer(counts, dtype=np.uint8).astype(np.int64) - 48
    if chars.size == 0:
        return np.zeros(0, dtype=np.int64)
    if chars.min() < 0 or chars.max() > 63 or chars[-1] & 0x20:
        raise ValueError("malformed compressed RLE counts")
    last = np.flatnonzero((chars & 0x20) == 0)  # index of each number's final char
    starts = np.concatenate(([0], last[:-1] + 1))
    position = np.arange(chars.size) - np.repeat(starts, last - starts + 1)
    values = np.add.reduceat((chars & 0x1F) << (5 * position), starts)
    negative = (chars[last] & 0x10) != 0
    values[negative] -= np.int64(1) << (5 * (last - starts + 1))[negative]
    runs = values.copy()
    runs[1::2] = np.cumsum(values[1::2])
    runs[2::2] = np.cumsum(values[2::2])
    return runs


def rle_decode(rle: dict[str, Any]) -> np.ndarray:
    """Decode a COCO RLE (counts as str, bytes, or an uncompressed list) to a bool HxW mask."""
    # Decoded here rather than by pycocotools, whose decode emits a numpy 2 DeprecationWarning on every call.
    height, width, runs = _rle_size_counts(rle)
    if runs.size == 0:
        return np.zeros((height, width), dtype=bool)
    column_major = np.repeat(np.arange(runs.size) % 2 == 1, runs)
    return np.ascontiguousarray(column_major.reshape(width, height).T)


def rle_area(rle: dict[str, Any]) -> int:
    """Number of foreground pixels of a COCO RLE, without decoding it."""
    return int(_rle_size_counts(rle)[2][1::2].sum())


def masks_to_boxes_xyxy(masks: np.ndarray) -> np.ndarray:
    """Tight boxes of (N, H, W) masks as (N, 4) int64 ``[x0, y0, x1, y1]``, x1/y1 inclusive; empty: 0s."""
    masks = np.asarray(masks)
    if masks.ndim != 3:
        raise ValueError(f"expected (N, H, W) masks, got shape {masks.shape}")
    masks = masks.astype(bool, copy=False)
    n, height, width = masks.shape
    rows = masks.any(axis=2)  # (N, H): which rows hold foreground
    cols = masks.any(axis=1)  # (N, W)
    # argmax returns the first True; on the reversed axis it finds the last one.
    y0 = rows.argmax(axis=1)
    y1 = height - 1 - rows[:, ::-1].argmax(axis=1)
    x0 = cols.argmax(axis=1)
    x1 = width - 1 - cols[:, ::-1].argmax(axis=1)
    boxes = np.stack([x0, y0, x1, y1], axis=1).astype(np.int64).reshape(n, 4)
    boxes[~rows.any(axis=1)] = 0
    return boxes


def mask_to_box_xyxy(mask: np.ndarray) -> np.ndarray:
    """Tight box of one HxW mask as (4,) int64 ``[x0, y0, x1, y1]``, x1/y1 inclusive; empty -> zeros."""
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"expected an HxW mask, got shape {mask.shape}")
    return masks_to_boxes_xyxy(mask[None])[0]


def box_xyxy_to_xywh(box: np.ndarray | Sequence[int]) -> np.ndarray:
    """Convert inclusive ``[x0, y0, x1, y1]`` boxes (..., 4) to COCO ``[x, y, w, h]`` with w = x1 - x0 + 1.

    An empty mask's box ``[0, 0, 0, 0]`` becomes ``[0, 0, 1, 1]``; check the mask area to tell it apart.
    """
    b = np.asarray(box)
    if b.shape[-1:] != (4,):
        raise ValueError(f"expected box(es) of shape (..., 4), got {b.shape}")
    x0, y0, x1, y1 = b[..., 0], b[..., 1], b[..., 2], b[..., 3]
    return np.stack([x0, y0, x1 - x0 + 1, y1 - y0 + 1], axis=-1)


def connected_components(
    mask: np.ndarray, connectivity: int = 8, min_area: int = 0
) -> tuple[np.ndarray, int]:
    """Label the connected regions of an HxW mask; return an int32 label image and the number of regions.

    0 is background. Regions with fewer than ``min_area`` pixels are dropped; the others are numbered 1..n
    by decreasing area, ties broken by the raster-order position of their first pixel. ``connectivity`` is 4
    or 8.
    """
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"expected an HxW mask, got shape {mask.shape}")
    if connectivity not in (4, 8):
        raise ValueError(f"connectivity must be 4 or 8, got {connectivity}")
    structure = ndimage.generate_binary_structure(2, 1 if connectivity == 4 else 2)
    labels, n = ndimage.label(mask != 0, structure=structure)
    if n == 0:
        return np.zeros(mask.shape, dtype=np.int32), 0
    flat = labels.ravel()
    areas = np.bincount(flat, minlength=n + 1)[1:]
    foreground = np.flatnonzero(flat)
    first = np.full(n + 1, flat.size, dtype=np.int64)
    np.minimum.at(first, flat[foreground], foreground)
    first = first[1:]
    kept = np.flatnonzero(areas >= min_area)
    order = kept[np.lexsort((first[kept], -areas[kept]))]
    lut = np.zeros(n + 1, dtype=np.int32)
    lut[order + 1] = np.arange(1, order.size + 1, dtype=np.int32)
    return lut[labels], int(order.size)


def resize_mask_nearest(mask: np.ndarray, size_hw: tuple[int, int]) -> np.ndarray:
    """Resize a (..., H, W) mask of any dtype to ``size_hw`` by nearest neighbour, keeping its dtype.

    Output pixel i samples input pixel ``floor((i + 0.5) * in / out)`` (pixel-centre alignment, as
    ``torch`` ``"nearest-exact"``), in exact integer arithmetic: an integer upscale repeats every pixel
    exactly.
    """
    mask = np.asarray(mask)
    if mask.ndim < 2:
        raise ValueError(f"expected a (..., H, W) mask, got shape {mask.shape}")
    out_h, out_w = (int(s) for s in size_hw)
    if out_h < 1 or out_w < 1:
        raise ValueError(f"size_hw must be positive, got {size_hw}")
    in_h, in_w = mask.shape[-2:]
    if in_h == 0 or in_w == 0:
        raise ValueError(f"cannot resize an empty mask of shape {mask.shape}")
    rows = ((2 * np.arange(out_h, dtype=np.int64) + 1) * in_h) // (2 * out_h)
    cols = ((2 * np.arange(out_w, dtype=np.int64) + 1) * in_w) // (2 * out_w)
    return np.ascontiguousarray(mask[..., rows[:, None], cols[None, :]])


def stack_masks(masks: Sequence[np.ndarray], shape: tuple[int, int] | None = None) -> np.ndarray:
    """Stack HxW masks into an (N, H, W) bool array; ``shape`` (H, W) is required when ``masks`` is empty."""
    if len(masks) == 0:
        if shape is None:
            raise ValueError("stack_masks needs shape=(H, W) to stack an empty sequence")
        return np.zeros((0, int(shape[0]), int(shape[1])), dtype=bool)
    arrays = [np.asarray(m) for m in masks]
    shapes = {a.shape for a in arrays}
    if len(shapes) != 1 or arrays[0].ndim != 2:
        raise ValueError(f"masks must all be HxW with one shape, got shapes {sorted(shapes)}")
    if shape is not None and arrays[0].shape != tuple(shape):
        raise ValueError(f"masks have shape {arrays[0].shape}, expected {tuple(shape)}")
    return np.stack([a != 0 for a in arrays])


def masks_of_detections(detections: Any, height: int, width: int) -> np.ndarray:
    """Returns ``(N, H, W)`` full-image masks of detections with relative boxes and box-sized masks.

    Duck-typed on FiftyOne's ``Detections`` (``.detections``, ``.bounding_box`` relative XYWH, box-sized
    ``.mask`` or ``get_mask()``) so it needs no FiftyOne import: a detection without a mask fills its box; a mask
    of another size than its box is resized (nearest).
    """
    dets = list(getattr(detections, "detections", None) or [])
    out = np.zeros((len(dets), height, width), dtype=bool)
    for i, det in enumerate(dets):  # a Detections field holds box-sized crops: one paste per object
        bx, by, bw, bh = det.bounding_box
        x0, y0 = round(bx * width), round(by * height)
        x1, y1 = round((bx + bw) * width), round((by + bh) * height)
        x0, y0 = min(max(x0, 0), width), min(max(y0, 0), height)
        x1, y1 = min(max(x1, x0), width), min(max(y1, y0), height)
        mask = det.get_mask() if hasattr(det, "get_mask") else getattr(det, "mask", None)
        if mask is None:
            out[i, y0:y1, x0:x1] = True
            continue
        mask = np.asarray(mask).astype(bool)
        if mask.ndim == 3:
            mask = mask[..., 0]
        h, w = y1 - y0, x1 - x0
        if h <= 0 or w <= 0:
            continue
        if mask.shape != (h, w):
            rows = (np.arange(h) * mask.shape[0] // h).clip(0, mask.shape[0] - 1)
            cols = (np.arange(w) * mask.shape[1] // w).clip(0, mask.shape[1] - 1)
            mask = mask[rows][:, cols]
        out[i, y0:y1, x0:x1] = mask
    return out

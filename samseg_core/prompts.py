"""SAM prompts from a semantic mask: points, tight and loose boxes, extreme points, mask prompts, mixes.

Every geometric quantity is computed for all regions of a label image at once (bincounts and one stable sort
of the foreground pixels), so building prompts for an image with hundreds of regions costs a few array passes.

Conventions:

- Points are ``(x, y)`` = ``(column, row)`` pixel indices in the original image frame, as ``SamPredictor``
  takes them (it adds 0.5 to reach the pixel centre). Labels are 1 (foreground).
- Boxes are ``[x0, y0, x1, y1]`` with inclusive pixel indices (SAM's ``batched_mask_to_box`` convention).
- A *single point* is the centroid of the largest connected region. When the centroid falls outside the region
  (C shapes, rings) it moves to the region's *deepest* pixel: the maximum of the distance to the region's
  boundary, ties broken by nearness to the centroid (so a one-pixel-wide region gets its pixel nearest to the
  centroid). A point is always a pixel of its region.
- A *loose box* moves each side of the tight box outward by ``margin`` times the box's width (left/right) or
  height (top/bottom), then clips to the image: ``margin=0.2`` makes a box up to 1.4x as wide.
- *Extreme points* are the top, bottom, left and right pixels of a region; among several pixels on the
  extreme row/column the middle one (lower median) is taken.
- A *mask prompt* is the region in SAM's low-resolution mask-input frame: the image resized so its longest
  side is the encoder size (``ResizeLongestSide``), padded bottom/right to a square, downsampled 4x (256x256
  for the 1024-pixel SAM encoders). Each low-res pixel samples the image pixel under its centre (nearest);
  values are ``+mask_logit`` inside and ``-mask_logit`` outside (SAM's mask input is logits).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
from scipy import ndimage

from samseg_core.masks import connected_components

__all__ = [
    "PROMPT_TYPES",
    "Granularity",
    "PromptSet",
    "RegionGeometry",
    "extreme_points",
    "loose_box",
    "mask_prompt",
    "mask_prompt_frame",
    "multiple_points",
    "normalize_prompts",
    "prompt_sets_from_semantic",
    "region_geometry",
    "single_point",
    "tight_box",
]

#: Prompt types, combinable: single point, one point per region, tight box, loose box, extreme points, mask.
PROMPT_TYPES = ("point", "points", "box", "loose_box", "extreme_points", "mask")
Granularity = Literal["class", "region"]

DEFAULT_MIN_REGION_AREA = 16
DEFAULT_MASK_LOGIT = 10.0


@dataclass
class PromptSet:
    """The prompts SAM gets for one baseline region (a whole class, or one connected region of it).

    Attributes:
        class_id: the baseline class the region belongs to.
        region_mask: (H, W) bool, the baseline pixels the prompts were made from (what selection and the
            no-harm gate compare candidates with).
        points: (K, 2) float32 ``(x, y)`` points; K may be 0.
        point_labels: (K,) int32, 1 = foreground.
        box: (4,) float32 ``[x0, y0, x1, y1]`` (inclusive pixel indices) or None.
        mask_input: (S, S) float32 logits in SAM's low-res frame (S = encoder size / 4) or None.
    """

    class_id: int
    region_mask: np.ndarray
    points: np.ndarray
    point_labels: np.ndarray
    box: np.ndarray | None = None
    mask_input: np.ndarray | None = None


@dataclass
class RegionGeometry:
    """Per-region geometry of a label image (regions 1..n; index i describes region i + 1).

    Attributes:
        areas: (n,) int64 pixel counts.
        boxes: (n, 4) int64 tight boxes ``[x0, y0, x1, y1]``, inclusive.
        inside_points: (n, 2) int64 ``(x, y)``: centroid, or the deepest pixel when the centroid is outside.
        extreme_points: (n, 4, 2) int64 ``(x, y)`` of the top, bottom, left and right pixels.
    """

    areas: np.ndarray
    boxes: np.ndarray
    inside_points: np.ndarray
    extreme_points: np.ndarray


def normalize_prompts(prompts: str | Iterable[str]) -> tuple[str, ...]:
    """Returns the prompt types as a tuple in canonical order; accepts ``"points,box"`` or ``"points+box"``.

    ``"point"`` is dropped when ``"points"`` is present (the single point is one of the multiple points).
    Raises ValueError for unknown names, an empty selection, or both box kinds (SAM takes one box).
    """
    if isinstance(prompts, str):
        prompts = prompts.replace("+", ",").split(",")
    names = {str(p).strip().lower() for p in prompts if str(p).strip()}
    unknown = names - set(PROMPT_TYPES)
    if unknown:
        raise ValueError(f"unknown prompt type(s) {sorted(unknown)}; valid: {', '.join(PROMPT_TYPES)}")
    if not names:
        raise ValueError(f"choose at least one prompt type of {', '.join(PROMPT_TYPES)}")
    if {"box", "loose_box"} <= names:
        raise ValueError("SAM takes one box per prompt: choose 'box' or 'loose_box', not both")
    if "points" in names:
        names.discard("point")
    return tuple(p for p in PROMPT_TYPES if p in names)


def _sorted_foreground(labels: np.ndarray, column_major: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Foreground (label, y, x) sorted by label, then raster (or column-major) order within each label."""
    height, width = labels.shape
    source = labels.T if column_major else labels
    flat = np.flatnonzero(source)
    ids = source.ravel()[flat]
    order = np.argsort(ids, kind="stable")  # stable keeps the scan order inside each label
    flat, ids = flat[order], ids[order]
    if column_major:
        xs, ys = np.divmod(flat, height)
    else:
        ys, xs = np.divmod(flat, width)
    return ids, ys, xs


def _deepest_points(labels: np.ndarray, wanted: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """(len(wanted), 2) ``(x, y)`` of each wanted region's pixel farthest from its boundary (ties: nearest to
    the centroid, then first in raster order)."""
    padded = np.pad(labels, 1, mode="constant", constant_values=0)
    center = padded[1:-1, 1:-1]
    interior = (
        (center > 0)
        & (padded[:-2, 1:-1] == center)
        & (padded[2:, 1:-1] == center)
        & (padded[1:-1, :-2] == center)
        & (padded[1:-1, 2:] == center)
    )
    depth = ndimage.distance_transform_edt(interior)
    lookup = np.full(int(labels.max()) + 1, -1, dtype=np.int64)
    lookup[wanted] = np.arange(wanted.size)
    ys, xs = np.nonzero(lookup[labels] >= 0)
    slot = lookup[labels[ys, xs]]
    cy, cx = centroids[slot, 1], centroids[slot, 0]
    near = -((ys - cy) ** 2 + (xs - cx) ** 2)
    order = np.lexsort((near, depth[ys, xs], slot))  # last of each slot = deepest, then nearest
    last = np.r_[np.flatnonzero(np.diff(slot[order])), order.size - 1]
    best = order[last]
    out = np.empty((wanted.size, 2), dtype=np.int64)
    out[slot[best], 0] = xs[best]
    out[slot[best], 1] = ys[best]
    return out


def region_geometry(
    labels: np.ndarray, num_regions: int | None = None, *, extremes: bool = True
) -> RegionGeometry:
    """Returns areas, tight boxes, inside points and extreme points of regions 1..n of an int label image.

    Args:
        labels: (H, W) non-negative ints, 0 = no region.
        num_regions: n (default ``labels.max()``); regions without pixels get area 0 and zero geometry.
        extremes: also compute the left/right extreme points (one more sort of the foreground); without it
            ``extreme_points[:, 2:]`` are zeros.
    """
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"expected an HxW label image, got shape {labels.shape}")
    labels = labels.astype(np.int64, copy=False)
    n = int(labels.max()) if num_regions is None else int(num_regions)
    boxes = np.zeros((n, 4), dtype=np.int64)
    points = np.zeros((n, 2), dtype=np.int64)
    ext = np.zeros((n, 4, 2), dtype=np.int64)
    ids, ys, xs = _sorted_foreground(labels, column_major=False)
    areas = np.bincount(ids, minlength=n + 1)[1 : n + 1].astype(np.int64)
    present = np.flatnonzero(areas) + 1
    if present.size == 0:
        return RegionGeometry(areas, boxes, points, ext)
    start = np.searchsorted(ids, present, side="left")
    end = np.searchsorted(ids, present, side="right")  # exclusive
    rows = present - 1
    # Raster order: a region's first pixel is on its top row, its last on its bottom row.
    top_y, bottom_y = ys[start], ys[end - 1]
    n_top = np.bincount(ids[ys == top_y[np.searchsorted(present, ids)]], minlength=n + 1)[present]
    n_bottom = np.bincount(ids[ys == bottom_y[np.searchsorted(present, ids)]], minlength=n + 1)[present]
    top = start + (n_top - 1) // 2
    bottom = end - n_bottom + (n_bottom - 1) // 2
    ext[rows, 0] = np.stack([xs[top], ys[top]], axis=1)
    ext[rows, 1] = np.stack([xs[bottom], ys[bottom]], axis=1)
    boxes[rows, 1], boxes[rows, 3] = top_y, bottom_y
    if extremes:
        cids, cys, cxs = _sorted_foreground(labels, column_major=True)
        cstart, cend = start, end  # same per-label counts, same positions
        left_x, right_x = cxs[cstart], cxs[cend - 1]
        slot = np.searchsorted(present, cids)
        n_left = np.bincount(cids[cxs == left_x[slot]], minlength=n + 1)[present]
        n_right = np.bincount(cids[cxs == right_x[slot]], minlength=n + 1)[present]
        left = cstart + (n_left - 1) // 2
        right = cend - n_right + (n_right - 1) // 2
        ext[rows, 2] = np.stack([cxs[left], cys[left]], axis=1)
        ext[rows, 3] = np.stack([cxs[right], cys[right]], axis=1)
        boxes[rows, 0], boxes[rows, 2] = left_x, right_x
    else:
        x_min = np.full(n + 1, np.iinfo(np.int64).max, dtype=np.int64)
        x_max = np.full(n + 1, -1, dtype=np.int64)
        np.minimum.at(x_min, ids, xs)
        np.maximum.at(x_max, ids, xs)
        boxes[rows, 0], boxes[rows, 2] = x_min[present], x_max[present]

    cy = np.bincount(ids, weights=ys, minlength=n + 1)[present] / areas[rows]
    cx = np.bincount(ids, weights=xs, minlength=n + 1)[present] / areas[rows]
    centroid = np.stack([cx, cy], axis=1)
    rounded = np.rint(centroid).astype(np.int64)
    inside = labels[rounded[:, 1], rounded[:, 0]] == present
    points[rows] = rounded
    if not inside.all():
        points[rows[~inside]] = _deepest_points(labels, present[~inside], centroid[~inside])
    return RegionGeometry(areas, boxes, points, ext)


def mask_prompt_frame(
    image_hw: tuple[int, int], encoder_size: int = 1024, pad: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """Returns (rows, cols): for each low-res mask-input row/column the image row/column under its centre,
    -1 in the padding. The low-res side is ``encoder_size // 4``. ``pad=False`` is SAM 2's frame: the image is
    resized to the whole square, so there is no padding."""
    height, width = (int(s) for s in image_hw)
    scale = encoder_size / max(height, width)
    input_h, input_w = int(height * scale + 0.5), int(width * scale + 0.5)  # ResizeLongestSide's rounding
    if not pad:
        input_h = input_w = encoder_size
    side = encoder_size // 4
    factor = encoder_size // side

    def axis(size: int, input_size: int) -> np.ndarray:
        centre2 = 2 * factor * np.arange(side, dtype=np.int64) + factor  # twice the centre, encoder frame
        index = centre2 * size // (2 * input_size)
        return np.where(centre2 < 2 * input_size, np.minimum(index, size - 1), -1)

    return axis(height, input_h), axis(width, input_w)


def _lowres_labels(labels: np.ndarray, encoder_size: int, pad: bool = True) -> np.ndarray:
    rows, cols = mask_prompt_frame(labels.shape, encoder_size, pad)
    sampled = labels[np.maximum(rows, 0)[:, None], np.maximum(cols, 0)[None, :]]
    sampled[rows < 0, :] = 0
    sampled[:, cols < 0] = 0
    return sampled


def _check_mask(mask: np.ndarray) -> np.ndarray:
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"expected an HxW mask, got shape {mask.shape}")
    if not mask.any():
        raise ValueError("the mask is empty: no prompt can be made from it")
    return mask != 0


def single_point(mask: np.ndarray) -> np.ndarray:
    """Returns (1, 2) ``(x, y)``: the centroid of the mask's largest connected region, moved to the region's
    deepest pixel when the centroid falls outside it."""
    components, _ = connected_components(_check_mask(mask))
    geometry = region_geometry(np.where(components == 1, 1, 0), 1, extremes=False)
    return geometry.inside_points.astype(np.float32)


def multiple_points(mask: np.ndarray, min_area: int = DEFAULT_MIN_REGION_AREA) -> np.ndarray:
    """Returns (K, 2) ``(x, y)``: one inside point per connected region with at least ``min_area`` pixels,
    largest region first; the largest region's point when no region is that large."""
    components, count = connected_components(_check_mask(mask))
    geometry = region_geometry(components, count, extremes=False)
    keep = geometry.areas >= min_area
    keep[0] = keep[0] or not keep.any()
    return geometry.inside_points[keep].astype(np.float32)


def tight_box(mask: np.ndarray) -> np.ndarray:
    """Returns (4,) float32 ``[x0, y0, x1, y1]``, the inclusive tight box of the mask."""
    return region_geometry(_check_mask(mask).astype(np.int64), 1, extremes=False).boxes[0].astype(np.float32)


def _loosen(boxes: np.ndarray, margin: float, image_hw: tuple[int, int]) -> np.ndarray:
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    size = boxes[:, 2:] - boxes[:, :2] + 1.0  # (w, h) in pixels
    grown = np.concatenate([boxes[:, :2] - margin * size, boxes[:, 2:] + margin * size], axis=1)
    upper = np.array([image_hw[1] - 1, image_hw[0] - 1] * 2, dtype=np.float32)
    return np.clip(grown, 0.0, upper).astype(np.float32)


def loose_box(mask: np.ndarray, margin: float = 0.2) -> np.ndarray:
    """Returns (4,) float32: the tight box with each side moved out by ``margin`` x the box's width (left,
    right) or height (top, bottom), clipped to the image."""
    if margin < 0:
        raise ValueError(f"margin must be >= 0, got {margin}")
    return _loosen(tight_box(mask), margin, np.shape(mask))[0]


def extreme_points(mask: np.ndarray) -> np.ndarray:
    """Returns (4, 2) float32 ``(x, y)`` of the mask's top, bottom, left and right pixels (middle of ties)."""
    return region_geometry(_check_mask(mask).astype(np.int64), 1).extreme_points[0].astype(np.float32)


def mask_prompt(
    mask: np.ndarray, encoder_size: int = 1024, mask_logit: float = DEFAULT_MASK_LOGIT, pad: bool = True
) -> np.ndarray:
    """Returns the mask as SAM's (S, S) float32 mask input (S = encoder_size / 4): ``+mask_logit`` inside,
    ``-mask_logit`` outside and in the padding (see the module docstring for the frame; ``pad=False``: SAM 2)."""
    lowres = _lowres_labels(np.asarray(mask) != 0, encoder_size, pad)
    return np.where(lowres, mask_logit, -mask_logit).astype(np.float32)


def _class_components(
    semantic: np.ndarray, classes: np.ndarray, connectivity: int
) -> tuple[np.ndarray, np.ndarray]:
    """Returns a label image of the connected regions of every class (numbered per class by decreasing area,
    classes in the order given) and the class of each region."""
    components = np.zeros(semantic.shape, dtype=np.int64)
    region_class: list[np.ndarray] = []
    offset = 0
    # One labelling per class, inside the class's bounding box (find_objects finds all boxes in one pass).
    slices = ndimage.find_objects(semantic.astype(np.int64) + 1)
    for class_id in classes:
        window = slices[int(class_id)]
        labels, count = connected_components(semantic[window] == class_id, connectivity=connectivity)
        target = components[window]
        target[labels > 0] = labels[labels > 0] + offset
        region_class.append(np.full(count, class_id, dtype=np.int64))
        offset += count
    return components, (np.concatenate(region_class) if region_class else np.zeros(0, dtype=np.int64))


def prompt_sets_from_semantic(
    semantic: np.ndarray,
    prompts: str | Sequence[str] = ("points", "box"),
    granularity: Granularity = "class",
    loose_margin: float = 0.2,
    min_region_area: int = DEFAULT_MIN_REGION_AREA,
    ignore_classes: Iterable[int] = (255,),
    *,
    encoder_size: int = 1024,
    pad: bool = True,
    mask_logit: float = DEFAULT_MASK_LOGIT,
    connectivity: int = 8,
) -> list[PromptSet]:
    """Returns the prompt sets for every class (or connected region) of a semantic map.

    Args:
        semantic: (H, W) integer class map (the baseline prediction).
        prompts: any combination of :data:`PROMPT_TYPES` (see :func:`normalize_prompts`).
        granularity: ``"class"``: one prompt set per class, its region the whole class mask (the workshop
            study); ``"region"``: one per connected region with at least ``min_region_area`` pixels, so
            several objects of one class get separate boxes.
        loose_margin: per-side margin of ``"loose_box"`` as a fraction of the box's width/height.
        min_region_area: regions smaller than this get no point (``"points"``) and, per region, no prompt
            set. A class whose regions are all smaller still gets the point of its largest region.
        ignore_classes: class ids that get no prompts (e.g. 255 = unlabeled).
        encoder_size: SAM's encoder input side (1024 for the released models), for ``"mask"``.
        pad: whether the model pads its input to the square (SAM, SAM-HQ) or stretches it (SAM 2), for ``"mask"``.
        mask_logit: magnitude of the mask prompt's logits.
        connectivity: 4 or 8, for connected regions.

    Returns:
        prompt sets ordered by class id, then (per region) by decreasing region area.
    """
    kinds = normalize_prompts(prompts)
    if granularity not in ("class", "region"):
        raise ValueError(f"granularity must be 'class' or 'region', got {granularity!r}")
    if loose_margin < 0:
        raise ValueError(f"loose_margin must be >= 0, got {loose_margin}")
    semantic = np.asarray(semantic)
    if semantic.ndim != 2:
        raise ValueError(f"expected an HxW class map, got shape {semantic.shape}")
    if semantic.size == 0:
        return []
    if semantic.min() < 0:
        raise ValueError("class ids must be non-negative")
    classes = np.unique(semantic)
    classes = classes[~np.isin(classes, np.asarray(list(ignore_classes), dtype=np.int64))]
    if classes.size == 0:
        return []

    components, region_class = _class_components(semantic, classes, connectivity)
    needs_points = bool({"point", "points"} & set(kinds))
    geometry = region_geometry(components, region_class.size, extremes=False) if needs_points else None

    if granularity == "region":
        areas = np.bincount(components.ravel(), minlength=region_class.size + 1)[1:]
        kept = np.flatnonzero(areas >= min_region_area)
        unit_labels = components
        unit_ids = kept + 1
        unit_class = region_class[kept]
        unit_points = [geometry.inside_points[[i]] for i in kept] if geometry else None
    else:
        lut = np.zeros(int(semantic.max()) + 1, dtype=np.int64)
        lut[classes] = np.arange(1, classes.size + 1)
        unit_labels = lut[semantic]
        unit_ids = np.arange(1, classes.size + 1)
        unit_class = classes.astype(np.int64)
        unit_points = (
            _class_points(kinds, geometry, region_class, classes, min_region_area) if geometry else None
        )

    need_unit_geometry = bool({"box", "loose_box", "extreme_points"} & set(kinds))
    unit_geometry = (
        region_geometry(unit_labels, int(unit_labels.max()), extremes="extreme_points" in kinds)
        if need_unit_geometry
        else None
    )
    masks = unit_labels[None] == unit_ids[:, None, None]
    lowres = _lowres_labels(unit_labels, encoder_size, pad) if "mask" in kinds else None

    out = []
    for k, (uid, class_id) in enumerate(zip(unit_ids, unit_class)):
        pts = [unit_points[k]] if unit_points is not None else []
        box = None
        if unit_geometry is not None:
            if "extreme_points" in kinds:
                pts.append(unit_geometry.extreme_points[uid - 1])
            if "box" in kinds:
                box = unit_geometry.boxes[uid - 1].astype(np.float32)
            elif "loose_box" in kinds:
                box = _loosen(unit_geometry.boxes[uid - 1], loose_margin, semantic.shape)[0]
        points = np.concatenate(pts).astype(np.float32) if pts else np.zeros((0, 2), dtype=np.float32)
        mask_input = (
            np.where(lowres == uid, mask_logit, -mask_logit).astype(np.float32)
            if lowres is not None
            else None
        )
        out.append(
            PromptSet(
                class_id=int(class_id),
                region_mask=masks[k],
                points=points,
                point_labels=np.ones(len(points), dtype=np.int32),
                box=box,
                mask_input=mask_input,
            )
        )
    return out


def _class_points(
    kinds: tuple[str, ...],
    geometry: RegionGeometry,
    region_class: np.ndarray,
    classes: np.ndarray,
    min_area: int,
) -> list[np.ndarray]:
    """Per class: the largest region's point (``"point"``) or one point per large-enough region."""
    # Regions are numbered class by class, largest first, so a class's first region is its largest.
    first = np.searchsorted(region_class, classes, side="left")
    if "points" not in kinds:
        return [geometry.inside_points[[i]] for i in first]
    keep = geometry.areas >= min_area
    keep[first] = True  # a class always keeps its largest region's point
    bounds = np.searchsorted(region_class, classes, side="right")
    return [geometry.inside_points[lo:hi][keep[lo:hi]] for lo, hi in zip(first, bounds)]

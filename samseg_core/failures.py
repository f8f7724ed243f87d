"""Failure modes of a semantic prediction per ground-truth object: missing, incomplete, overlapping or ok.

Objects are the ground-truth instances (given as masks) or the connected regions of each class of a semantic
map. The prediction is a semantic label map; its *regions* are its connected same-class components. All
quantities come from one joint histogram of (object id, region id) pixel pairs, so the cost is a few passes over
the image whatever the number of objects.

Per object ``o`` of class ``c`` (areas in pixels, ignored ground-truth pixels never count):

- ``coverage`` = |o ∩ (pred == c)| / |o|.
- The object's *prediction* ``P_o`` is the union of the class-``c`` regions attributed to it: a region ``r``
  is attributed to ``o`` when |o ∩ r| >= ``attribution_min`` * min(|o|, |r|) (so a huge region that only
  touches the object is not its prediction, but one that swallows it is).
- ``iou`` = |o ∩ P_o| / |o ∪ P_o|.
- ``spill`` = |P_o \\ o| / |P_o|: the share of the object's prediction lying on other objects, other classes
  or unlabelled pixels.
- ``spans_objects``: one class-``c`` region holds at least ``span_min_share`` of ``o`` *and* of another
  class-``c`` object (one predicted mask spanning several ground-truth objects).

Modes, first match wins: ``missing`` (coverage < ``missing_below``), ``overlapping`` (spill > ``spill_above``
or spans_objects), ``incomplete`` (coverage < ``complete_above``), else ``ok``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
from scipy import ndimage
from skimage.measure import label as label_regions

MISSING, INCOMPLETE, OVERLAPPING, OK = "missing", "incomplete", "overlapping", "ok"
FAILURE_MODES = (MISSING, INCOMPLETE, OVERLAPPING)
ALL_MODES = (*FAILURE_MODES, OK)


@dataclass(frozen=True)
class FailureThresholds:
    """Thresholds of the failure modes (fractions in [0, 1]; see the module docstring for the quantities).

    Attributes:
        missing_below: coverage below this is ``missing`` (the prediction barely touches the object).
        complete_above: coverage below this (and not missing) is ``incomplete``; boundary wobble of a good
            prediction typically leaves 85-95 % coverage, hence 0.8.
        spill_above: spill above this is ``overlapping``: more than this share of the object's prediction lies
            outside it (two merged same-size objects give ~0.5; a boundary wobble ~0.1-0.25).
        span_min_share: a region "holds" an object when it covers at least this share of it; a region holding
            two or more objects makes them all ``overlapping``.
        attribution_min: a region is part of an object's prediction when their overlap is at least this share
            of the smaller of the two.
        min_object_area: ground-truth objects smaller than this many pixels are not assessed.
    """

    missing_below: float = 0.1
    complete_above: float = 0.8
    spill_above: float = 0.35
    span_min_share: float = 0.5
    attribution_min: float = 0.1
    min_object_area: int = 8

    def to_dict(self) -> dict[str, float]:
        """Plain dict (for run configs and results)."""
        return asdict(self)


@dataclass
class FailureReport:
    """Per-object assessment of one image; arrays are indexed by object (object ``i`` has label ``i + 1``).

    Attributes:
        labels: HxW int32 object label image (0 = no assessed object).
        class_ids: (N,) class id of each object.
        source_index: (N,) index of the input instance of each object (semantic mode: -1).
        areas: (N,) object areas in pixels.
        coverage, iou, spill: (N,) float64 per-object figures (see the module docstring).
        spans_objects: (N,) bool, the object shares a predicted region with another object of its class.
        modes: (N,) failure mode names.
    """

    labels: np.ndarray
    class_ids: np.ndarray
    source_index: np.ndarray
    areas: np.ndarray
    coverage: np.ndarray
    iou: np.ndarray
    spill: np.ndarray
    spans_objects: np.ndarray
    modes: np.ndarray
    boxes: list[tuple[slice, slice]] = field(default_factory=list)

    def __len__(self) -> int:
        return int(self.class_ids.size)

    def counts(self) -> dict[str, int]:
        """Number of objects per mode (every mode present as a key)."""
        return {mode: int(np.count_nonzero(self.modes == mode)) for mode in ALL_MODES}

    def object_mask(self, index: int) -> tuple[tuple[slice, slice], np.ndarray]:
        """Returns the bounding slices of object ``index`` and its bool mask inside them."""
        box = self.boxes[index]
        return box, self.labels[box] == index + 1


def objects_from_semantic(
    gt: np.ndarray,
    *,
    ignore_index: int | None = 255,
    skip_classes: Sequence[int] = (0,),
    min_area: int = 8,
    connectivity: int = 2,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Connected regions of each class of a semantic map as objects.

    Args:
        gt: HxW integer class map.
        ignore_index: value of unlabelled pixels (never an object).
        skip_classes: classes that are not objects (default: background 0).
        min_area: regions smaller than this are dropped.
        connectivity: 1 (4-neighbours) or 2 (8-neighbours).

    Returns:
        ``(labels, class_ids, source_index)``: an HxW int32 label image numbering objects 1..N, their classes,
        and -1 for each (objects of a semantic map have no source instance).
    """
    gt = np.asarray(gt).astype(np.int64, copy=False)
    excluded = np.isin(gt, np.asarray(list(skip_classes), dtype=np.int64))
    if ignore_index is not None:
        excluded |= gt == ignore_index
    marked = np.where(excluded | (gt < 0), -1, gt)
    regions = label_regions(marked, background=-1, connectivity=connectivity)
    labels, kept = _drop_small(regions, min_area)
    class_ids = _region_values(regions, marked)[kept]
    return labels, class_ids, np.full(class_ids.size, -1, dtype=np.int64)


def objects_from_instances(
    masks: np.ndarray, class_ids: Sequence[int], *, min_area: int = 8
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Instance masks as objects, painted largest first so that a smaller instance wins where two overlap.

    Args:
        masks: (N, H, W) bool instance masks.
        class_ids: N class ids.
        min_area: objects with fewer visible pixels are dropped.

    Returns:
        ``(labels, class_ids, source_index)`` as :func:`objects_from_semantic`; ``source_index`` gives each
        object's index in ``masks``.
    """
    masks = np.asarray(masks, dtype=bool)
    classes = np.asarray(class_ids, dtype=np.int64)
    if masks.ndim != 3 or masks.shape[0] != classes.size:
        raise ValueError(f"expected (N, H, W) masks and N class ids, got {masks.shape} and {classes.size}")
    n = masks.shape[0]
    if n == 0:
        return np.zeros(masks.shape[1:], np.int32), classes, np.zeros(0, np.int64)
    order = np.argsort(-masks.reshape(n, -1).sum(axis=1), kind="stable")  # largest first
    painted = masks[order]
    covered = painted.any(axis=0)
    last = n - 1 - np.argmax(painted[::-1], axis=0)  # the last painted (smallest) mask covering each pixel
    owner = np.where(covered, order[last] + 1, 0).astype(np.int64)
    labels, kept = _drop_small(owner, min_area)
    return labels, classes[kept], kept.astype(np.int64)


def _drop_small(labels: np.ndarray, min_area: int) -> tuple[np.ndarray, np.ndarray]:
    """Renumbers a label image to 1..K keeping labels with at least ``min_area`` pixels; returns it and the
    kept original labels minus one (i.e. their 0-based indices)."""
    areas = np.bincount(labels.ravel(), minlength=1)
    keep = np.flatnonzero(areas >= max(min_area, 1))
    keep = keep[keep > 0]
    lut = np.zeros(areas.size, dtype=np.int32)
    lut[keep] = np.arange(1, keep.size + 1, dtype=np.int32)
    return lut[labels], keep - 1


def _region_values(regions: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Value of each region 1..R of a label image (regions are uniform in ``values``); index r-1."""
    out = np.zeros(int(regions.max(initial=0)) + 1, dtype=np.int64)
    out[regions.ravel()] = values.ravel()
    return out[1:]


def assess_objects(
    labels: np.ndarray,
    class_ids: np.ndarray,
    pred: np.ndarray,
    *,
    source_index: np.ndarray | None = None,
    valid: np.ndarray | None = None,
    ignore_index: int | None = 255,
    thresholds: FailureThresholds | None = None,
    connectivity: int = 2,
) -> FailureReport:
    """Assesses every object of an object label image against a semantic prediction.

    Args:
        labels: HxW object label image (1..N, 0 = no object), e.g. from :func:`objects_from_semantic`.
        class_ids: (N,) class of each object.
        pred: HxW predicted class map; ``ignore_index`` and negative values predict nothing.
        source_index: (N,) passed through to the report.
        valid: HxW bool, False where the ground truth is unlabelled (such pixels count nowhere).
        ignore_index: the prediction's "no class" value.
        thresholds: see :class:`FailureThresholds`.
        connectivity: connectivity of predicted regions, 1 or 2.

    Returns:
        a :class:`FailureReport`.
    """
    t = thresholds or FailureThresholds()
    labels = np.asarray(labels).astype(np.int64, copy=False)
    pred = np.asarray(pred).astype(np.int64, copy=False)
    if labels.shape != pred.shape or labels.ndim != 2:
        raise ValueError(f"object labels {labels.shape} and prediction {pred.shape} must be one HxW shape")
    class_ids = np.asarray(class_ids, dtype=np.int64)
    n = class_ids.size
    valid = np.ones(labels.shape, bool) if valid is None else np.asarray(valid, bool)
    labels = np.where(valid, labels, 0)

    marked = pred.copy()
    if ignore_index is not None:
        marked[pred == ignore_index] = -1
    marked[pred < 0] = -1
    regions = label_regions(marked, background=-1, connectivity=connectivity).astype(np.int64)
    r_count = int(regions.max(initial=0))
    region_class = np.concatenate([[-1], _region_values(regions, marked)])
    region_area = np.bincount(regions[valid], minlength=r_count + 1)  # unlabelled gt pixels count nowhere

    obj_area = np.bincount(labels.ravel(), minlength=n + 1)
    obj_class = np.concatenate([[-2], class_ids])
    both = (labels > 0) & (regions > 0)
    pair_codes, pair_counts = np.unique(labels[both] * (r_count + 1) + regions[both], return_counts=True)
    o, r = np.divmod(pair_codes, r_count + 1)
    same = region_class[r] == obj_class[o]

    covered = np.bincount(o[same], weights=pair_counts[same], minlength=n + 1)
    attributed = same & (pair_counts >= t.attribution_min * np.minimum(obj_area[o], region_area[r]))
    pred_area = np.bincount(o[attributed], weights=region_area[r[attributed]], minlength=n + 1)
    inter = np.bincount(o[attributed], weights=pair_counts[attributed], minlength=n + 1)

    holds = same & (pair_counts >= t.span_min_share * obj_area[o])
    held_per_region = np.bincount(r[holds], minlength=r_count + 1)
    spans = np.zeros(n + 1, dtype=bool)
    spans[o[holds & (held_per_region[r] >= 2)]] = True

    with np.errstate(divide="ignore", invalid="ignore"):
        coverage = np.where(obj_area > 0, covered / np.maximum(obj_area, 1), 0.0)[1:]
        union = obj_area + pred_area - inter
        iou = np.where(union > 0, inter / np.maximum(union, 1), 0.0)[1:]
        spill = np.where(pred_area > 0, (pred_area - inter) / np.maximum(pred_area, 1), 0.0)[1:]
    spans = spans[1:]

    modes = np.full(n, OK, dtype=object)
    modes[coverage < t.complete_above] = INCOMPLETE
    modes[(spill > t.spill_above) | spans] = OVERLAPPING
    modes[coverage < t.missing_below] = MISSING

    boxes = ndimage.find_objects(labels.astype(np.int32), max_label=n) if n else []
    return FailureReport(
        labels=labels.astype(np.int32),
        class_ids=class_ids,
        source_index=np.full(n, -1, np.int64) if source_index is None else np.asarray(source_index, np.int64),
        areas=obj_area[1:],
        coverage=coverage,
        iou=iou,
        spill=spill,
        spans_objects=spans,
        modes=modes.astype(str),
        boxes=list(boxes),
    )


def detect_failures_in_image(
    pred: np.ndarray,
    gt: np.ndarray | None = None,
    *,
    instance_masks: np.ndarray | None = None,
    instance_classes: Sequence[int] | None = None,
    ignore_index: int | None = 255,
    skip_classes: Sequence[int] = (0,),
    thresholds: FailureThresholds | None = None,
) -> FailureReport:
    """Failure modes of one image's prediction, objects from instances when given, else from ``gt``'s regions.

    Args:
        pred: HxW predicted class map.
        gt: HxW ground-truth class map; its ``ignore_index`` pixels are left out everywhere. Required
            without instances.
        instance_masks: (N, H, W) bool ground-truth instance masks (then ``skip_classes`` does not apply).
        instance_classes: N class ids of the instances (in the prediction's id space).
        ignore_index: unlabelled value of ``gt`` and "no class" value of ``pred``.
        skip_classes: classes of ``gt`` that are not objects (semantic mode).
        thresholds: see :class:`FailureThresholds`.
    """
    t = thresholds or FailureThresholds()
    pred = np.asarray(pred)
    valid = None
    if gt is not None:
        gt = np.asarray(gt)
        if gt.shape != pred.shape:
            raise ValueError(f"ground truth {gt.shape} and prediction {pred.shape} differ in shape")
        valid = gt != ignore_index if ignore_index is not None else None
    if instance_masks is not None:
        if instance_classes is None:
            raise ValueError("instance_masks need instance_classes")
        masks = np.asarray(instance_masks, bool)
        if masks.shape[1:] != pred.shape:
            raise ValueError(f"instance masks {masks.shape[1:]} and prediction {pred.shape} differ in shape")
        labels, classes, source = objects_from_instances(masks, instance_classes, min_area=t.min_object_area)
    elif gt is not None:
        labels, classes, source = objects_from_semantic(
            gt, ignore_index=ignore_index, skip_classes=skip_classes, min_area=t.min_object_area
        )
    else:
        raise ValueError("detect_failures_in_image needs gt or instance_masks")
    return assess_objects(
        labels, classes, pred, source_index=source, valid=valid, ignore_index=ignore_index, thresholds=t
    )

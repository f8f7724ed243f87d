"""Semantic segmentation metrics: confusion matrix, IoU, mIoU, accuracies, boundary IoU, dataset accumulation.

Conventions (shared by every function here):

- Label maps are integer HxW arrays of class ids; confusion matrix rows are ground truth, columns predictions.
- A pixel is *ignored* when its ground truth equals ``ignore_index`` or is outside ``[0, num_classes)``.
- ``reduce_zero_label=True`` (mmseg's option) rewrites the ground truth only: 0 becomes ignored and every
  other id is decremented by 1 (pixels equal to ``ignore_index`` stay ignored). Predictions must already use
  reduced ids.
- A non-ignored pixel whose *prediction* is outside ``[0, num_classes)`` (including ``ignore_index``) is
  wrong: a false negative of its ground-truth class and a false positive of no class, as in mmseg. A square
  confusion matrix cannot hold such pixels, so they are counted per ground-truth class in a separate
  ``missed`` vector (:func:`confusion_and_missed`); :func:`segmentation_scores` and
  :class:`DatasetIoUAccumulator` include them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage

__all__ = [
    "DatasetIoUAccumulator",
    "SegmentationScores",
    "binary_boundary_iou",
    "boundary_iou",
    "confusion_and_missed",
    "confusion_matrix",
    "scores_from_confusion",
    "segmentation_scores",
]


def _label_map(name: str, values: np.ndarray) -> np.ndarray:
    """Return an integer label map as int64, refusing float maps (silent truncation would hide bugs)."""
    arr = np.asarray(values)
    if not (np.issubdtype(arr.dtype, np.integer) or arr.dtype == bool):
        raise ValueError(f"{name} must be an integer label map, got dtype {arr.dtype}")
    return arr.astype(np.int64, copy=False)


def confusion_and_missed(
    gt: np.ndarray,
    pred: np.ndarray,
    num_classes: int,
    ignore_index: int | None = 255,
    reduce_zero_label: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Confusion matrix plus, per ground-truth class, the pixels whose prediction is out of range.

    Returns ``(cm, missed)``: ``cm`` is (num_classes, num_classes) int64 (rows gt, columns pred) and
    ``missed`` is (num_classes,) int64. See the module docstring for ignored pixels and ``reduce_zero_label``.
    """
    if num_classes < 1:
        raise ValueError(f"num_classes must be positive, got {num_classes}")
    gt_arr = _label_map("gt", gt)
    pred_arr = _label_map("pred", pred)
    if gt_arr.shape != pred_arr.shape:
        raise ValueError(f"gt and pred shapes differ: gt {gt_arr.shape} vs pred {pred_arr.shape}")
    gt_flat = gt_arr.ravel()
    pred_flat = pred_arr.ravel()
    ignored = gt_flat == ignore_index if ignore_index is not None else np.zeros(gt_flat.shape, dtype=bool)
    if reduce_zero_label:
        ignored |= gt_flat == 0
        gt_flat = gt_flat - 1
    valid = ~ignored & (gt_flat >= 0) & (gt_flat < num_classes)
    pred_ok = (pred_flat >= 0) & (pred_flat < num_classes)
    counted = valid & pred_ok
    cm = np.bincount(
        gt_flat[counted] * num_classes + pred_flat[counted], minlength=num_classes * num_classes
    ).reshape(num_classes, num_classes)
    missed = np.bincount(gt_flat[valid & ~pred_ok], minlength=num_classes)
    return cm.astype(np.int64, copy=False), missed.astype(np.int64, copy=False)


def confusion_matrix(
    gt: np.ndarray,
    pred: np.ndarray,
    num_classes: int,
    ignore_index: int | None = 255,
    reduce_zero_label: bool = False,
) -> np.ndarray:
    """(num_classes, num_classes) int64 confusion matrix, rows = gt, columns = pred.

    Pixels with an out-of-range prediction are not in it; use :func:`confusion_and_missed` to keep them.
    """
    return confusion_and_missed(gt, pred, num_classes, ignore_index, reduce_zero_label)[0]


def _nanmean(values: np.ndarray) -> float:
    """Mean of the non-nan values, nan (without a RuntimeWarning) when there are none."""
    present = values[~np.isnan(values)]
    return float(present.mean()) if present.size else math.nan


def _plain(value: float) -> float | None:
    """A python float for storage, with nan as None."""
    return None if math.isnan(value) else float(value)


@dataclass(frozen=True, eq=False)
class SegmentationScores:
    """Scores of one confusion matrix; nan marks an undefined value.

    ``per_class_iou`` is nan for a class absent from both gt and pred, ``per_class_accuracy`` (recall) for a
    class absent from gt. ``miou`` and ``mean_accuracy`` average the non-nan entries of ``classes`` (all
    classes when None); ``pixel_accuracy`` covers every non-ignored pixel.
    """

    per_class_iou: np.ndarray
    per_class_accuracy: np.ndarray
    miou: float
    pixel_accuracy: float
    mean_accuracy: float
    classes: tuple[int, ...] | None = None

    def to_dict(self, class_names: Mapping[int, str] | None = None) -> dict[str, Any]:
        """Plain-python dict for storage: floats with nan as None, per-class dicts keyed by class name.

        Keys are ``class_names[i]`` when given (``str(i)`` for ids it lacks), else ``str(i)``: string keys
        keep the dict valid for JSON and MongoDB.
        """
        names = class_names or {}

        def per_class(values: np.ndarray) -> dict[str, float | None]:
            return {str(names.get(i, i)): _plain(float(v)) for i, v in enumerate(values)}

        return {
            "miou": _plain(self.miou),
            "pixel_accuracy": _plain(self.pixel_accuracy),
            "mean_accuracy": _plain(self.mean_accuracy),
            "per_class_iou": per_class(self.per_class_iou),
            "per_class_accuracy": per_class(self.per_class_accuracy),
        }


def scores_from_confusion(
    cm: np.ndarray, missed: np.ndarray | None = None, classes: Sequence[int] | None = None
) -> SegmentationScores:
    """Scores of a confusion matrix (rows gt).

    ``missed`` counts, per gt class, pixels whose prediction was out of range (false negatives not in
    ``cm``); ``classes`` is the subset ``miou`` and ``mean_accuracy`` average over (all classes when None).
    """
    cm = np.asarray(cm, dtype=np.int64)
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1]:
        raise ValueError(f"confusion matrix must be square, got shape {cm.shape}")
    num_classes = cm.shape[0]
    missed_arr = (
        np.zeros(num_classes, dtype=np.int64) if missed is None else np.asarray(missed, dtype=np.int64)
    )
    if missed_arr.shape != (num_classes,):
        raise ValueError(f"missed must have shape ({num_classes},), got {missed_arr.shape}")
    subset = _check_classes(classes, num_classes)

    tp = np.diag(cm).astype(np.float64)
    gt_total = cm.sum(axis=1) + missed_arr
    pred_total = cm.sum(axis=0)
    union = gt_total + pred_total - tp
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = np.where(union > 0, tp / union, np.nan)
        accuracy = np.where(gt_total > 0, tp / gt_total, np.nan)
    pixels = int(gt_total.sum())
    index = np.arange(num_classes) if subset is None else np.asarray(subset, dtype=np.int64)
    return SegmentationScores(
        per_class_iou=iou,
        per_class_accuracy=accuracy,
        miou=_nanmean(iou[index]),
        pixel_accuracy=float(tp.sum() / pixels) if pixels else math.nan,
        mean_accuracy=_nanmean(accuracy[index]),
        classes=subset,
    )


def _check_classes(classes: Sequence[int] | None, num_classes: int) -> tuple[int, ...] | None:
    """Validate a class subset against num_classes; None means all classes."""
    if classes is None:
        return None
    subset = tuple(int(c) for c in classes)
    bad = [c for c in subset if not 0 <= c < num_classes]
    if bad:
        raise ValueError(f"classes {bad} are outside [0, {num_classes})")
    return subset


def segmentation_scores(
    gt: np.ndarray,
    pred: np.ndarray,
    num_classes: int,
    ignore_index: int | None = 255,
    reduce_zero_label: bool = False,
    classes: Sequence[int] | None = None,
) -> SegmentationScores:
    """Per-class IoU/accuracy, mIoU, pixel and mean accuracy of one prediction against its ground truth.

    ``classes`` restricts the averages (``miou``, ``mean_accuracy``); every class keeps its per-class values.
    """
    cm, missed = confusion_and_missed(gt, pred, num_classes, ignore_index, reduce_zero_label)
    return scores_from_confusion(cm, missed, classes)


def _boundary(mask: np.ndarray, width: int) -> np.ndarray:
    """Pixels of ``mask`` within ``width`` pixels of its outside, the image border counting as outside.

    Equals ``mask & ~binary_erosion(mask, 3x3 square, iterations=width, border_value=0)``, computed with one
    chessboard distance transform because iterated erosion costs ``width`` passes (54 for a 1500x2250 image).
    """
    padded = np.pad(mask, 1, constant_values=False)
    distance = ndimage.distance_transform_cdt(padded, metric="chessboard")[1:-1, 1:-1]
    return mask & (distance <= width)


def _boundary_width(shape: tuple[int, ...], dilation_ratio: float) -> int:
    """Boundary width of Cheng et al. 2021: ``max(1, round(dilation_ratio * image diagonal))`` pixels."""
    height, width = shape[:2]
    return max(1, int(round(dilation_ratio * math.hypot(height, width))))


def binary_boundary_iou(gt_mask: np.ndarray, pred_mask: np.ndarray, dilation_ratio: float = 0.02) -> float:
    """Boundary IoU (Cheng et al. 2021) of two HxW binary masks; nan when both masks are empty."""
    gt_b = np.asarray(gt_mask) != 0
    pred_b = np.asarray(pred_mask) != 0
    if gt_b.shape != pred_b.shape or gt_b.ndim != 2:
        raise ValueError(f"expected two HxW masks of one shape, got {gt_b.shape} and {pred_b.shape}")
    width = _boundary_width(gt_b.shape, dilation_ratio)
    gt_edge = _boundary(gt_b, width)
    pred_edge = _boundary(pred_b, width)
    union = np.count_nonzero(gt_edge | pred_edge)
    return np.count_nonzero(gt_edge & pred_edge) / union if union else math.nan


def boundary_iou(
    gt: np.ndarray, pred: np.ndarray, dilation_ratio: float = 0.02, ignore_index: int | None = 255
) -> float:
    """Mean over classes of the binary boundary IoU of two HxW label maps; nan when no class is present.

    A class counts when its gt or pred boundary has a non-ignored pixel (``ignore_index`` is never a class).
    Boundaries are taken from the full class masks; pixels whose gt is ``ignore_index`` are then left out of
    the intersection and union, so ignored regions neither create nor hide boundary.
    """
    gt_arr = _label_map("gt", gt)
    pred_arr = _label_map("pred", pred)
    if gt_arr.shape != pred_arr.shape or gt_arr.ndim != 2:
        raise ValueError(
            f"expected two HxW label maps of one shape, got gt {gt_arr.shape} vs pred {pred_arr.shape}"
        )
    valid = gt_arr != ignore_index if ignore_index is not None else np.ones(gt_arr.shape, dtype=bool)
    width = _boundary_width(gt_arr.shape, dilation_ratio)
    gt_edge = _label_boundary(gt_arr, width) & valid
    pred_edge = _label_boundary(pred_arr, width) & valid
    both = gt_edge & pred_edge & (gt_arr == pred_arr)
    # Count boundary pixels per class in one pass: every pixel belongs to exactly one class of each map.
    gt_ids, pred_ids, both_ids, labels = _compact_ids(gt_arr[gt_edge], pred_arr[pred_edge], gt_arr[both])
    gt_count = np.bincount(gt_ids, minlength=labels.size)
    pred_count = np.bincount(pred_ids, minlength=labels.size)
    inter = np.bincount(both_ids, minlength=labels.size)
    union = gt_count + pred_count - inter
    keep = union > 0
    if ignore_index is not None:
        keep &= labels != ignore_index
    return float(np.mean(inter[keep] / union[keep])) if keep.any() else math.nan


def _label_boundary(labels: np.ndarray, width: int) -> np.ndarray:
    """Pixels within ``width`` (chessboard) of a pixel of another label or of the image border.

    Restricted to class c's pixels this is ``_boundary(labels == c, width)``, for all classes at once: a pixel
    is interior only when its whole (2 width + 1)^2 window, padded with a label no pixel has, is uniform.
    """
    outside = int(labels.min()) - 1
    size = 2 * width + 1
    low = ndimage.minimum_filter(labels, size=size, mode="constant", cval=outside)
    high = ndimage.maximum_filter(labels, size=size, mode="constant", cval=outside)
    return low != high


def _compact_ids(*arrays: np.ndarray) -> tuple[np.ndarray, ...]:
    """Map labels of several arrays to shared ids 0..k-1; return the mapped arrays, then the k labels."""
    nonempty = [a for a in arrays if a.size]
    if not nonempty:
        return (*(np.zeros(0, dtype=np.int64) for _ in arrays), np.zeros(0, dtype=np.int64))
    low = min(int(a.min()) for a in nonempty)
    high = max(int(a.max()) for a in nonempty)
    if high - low < 1 << 20:  # the usual case: a shift is enough and avoids sorting millions of pixels
        return (*(a - low for a in arrays), np.arange(low, high + 1, dtype=np.int64))
    labels, inverse = np.unique(np.concatenate(arrays), return_inverse=True)
    bounds = np.cumsum([a.size for a in arrays])[:-1]
    return (*np.split(inverse.ravel(), bounds), labels)


class DatasetIoUAccumulator:
    """Accumulate per-image confusion matrices for dataset-level scores.

    :meth:`summed` scores the sum of all confusion matrices (the mmseg / SSA reduction);
    :meth:`mean_of_images` averages the per-image mIoUs, weighing every image equally whatever its size and
    class mix.
    """

    def __init__(
        self,
        num_classes: int,
        ignore_index: int | None = 255,
        reduce_zero_label: bool = False,
        classes: Sequence[int] | None = None,
    ) -> None:
        if num_classes < 1:
            raise ValueError(f"num_classes must be positive, got {num_classes}")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.reduce_zero_label = reduce_zero_label
        self.classes = _check_classes(classes, num_classes)
        self.confusion = np.zeros((num_classes, num_classes), dtype=np.int64)
        self.missed = np.zeros(num_classes, dtype=np.int64)
        self.image_mious: list[float] = []

    def add(self, gt: np.ndarray, pred: np.ndarray) -> SegmentationScores:
        """Add one image's label maps; return that image's scores."""
        cm, missed = confusion_and_missed(
            gt, pred, self.num_classes, self.ignore_index, self.reduce_zero_label
        )
        return self.add_confusion(cm, missed)

    def add_confusion(self, cm: np.ndarray, missed: np.ndarray | None = None) -> SegmentationScores:
        """Add one image's confusion matrix (and out-of-range prediction counts); return its scores."""
        scores = scores_from_confusion(cm, missed, self.classes)
        if scores.per_class_iou.shape != (self.num_classes,):
            raise ValueError(
                f"confusion matrix must be {self.num_classes}x{self.num_classes}, got {np.shape(cm)}"
            )
        self.confusion += np.asarray(cm, dtype=np.int64)
        if missed is not None:
            self.missed += np.asarray(missed, dtype=np.int64)
        self.image_mious.append(scores.miou)
        return scores

    @property
    def num_images(self) -> int:
        """Number of images added so far."""
        return len(self.image_mious)

    def summed(self) -> SegmentationScores:
        """Scores of the summed confusion matrix over all images added."""
        return scores_from_confusion(self.confusion, self.missed, self.classes)

    def mean_of_images(self) -> float:
        """Mean of the per-image mIoUs, skipping images whose mIoU is nan; nan when none is left."""
        return _nanmean(np.asarray(self.image_mious, dtype=np.float64))

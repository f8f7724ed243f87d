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
    "MAX_CLASSES",
    "ConfusionAccumulator",
    "DatasetIoUAccumulator",
    "ImageScores",
    "IoUOptions",
    "class_iou_dict",
    "score_masks",
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


#: Pixels per row band when a whole-image computation would need several copies of a large image.
BAND_PIXELS = 1 << 22

#: Class ids at or above this are not classes: in ground truth they are ignored, in a prediction they are wrong
#: (a stray 65535 must not make a 65536 x 65536 confusion matrix).
MAX_CLASSES = 4096


def _integer_map(name: str, values: np.ndarray) -> np.ndarray:
    """An integer (or bool) label map as it is, without a copy; float maps are refused."""
    arr = np.asarray(values)
    if not (np.issubdtype(arr.dtype, np.integer) or arr.dtype == bool):
        raise ValueError(f"{name} must be an integer label map, got dtype {arr.dtype}")
    return arr


def row_bands(shape: tuple[int, ...], band_pixels: int = BAND_PIXELS) -> list[tuple[int, int]]:
    """``[(row0, row1), ...]`` covering the rows of an HxW image in bands of about ``band_pixels`` pixels."""
    height, width = int(shape[0]), max(int(shape[1]), 1)
    rows = max(1, band_pixels // width)
    return [(r, min(r + rows, height)) for r in range(0, height, rows)] or [(0, 0)]


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
    gt: np.ndarray,
    pred: np.ndarray,
    dilation_ratio: float = 0.02,
    ignore_index: int | None = 255,
    band_pixels: int = BAND_PIXELS,
) -> float:
    """Mean over classes of the binary boundary IoU of two HxW label maps; nan when no class is present.

    A class counts when its gt or pred boundary has a non-ignored pixel (``ignore_index`` is never a class).
    Boundaries are taken from the full class masks; pixels whose gt is ``ignore_index`` are then left out of
    the intersection and union, so ignored regions neither create nor hide boundary.

    The image is processed in row bands of about ``band_pixels`` pixels, each with ``width`` rows of context
    above and below, so a 64-megapixel image needs tens of MB instead of several GB; the result is the same.
    """
    gt_arr, pred_arr = _integer_map("gt", gt), _integer_map("pred", pred)
    if gt_arr.shape != pred_arr.shape or gt_arr.ndim != 2:
        raise ValueError(
            f"expected two HxW label maps of one shape, got gt {gt_arr.shape} vs pred {pred_arr.shape}"
        )
    width = _boundary_width(gt_arr.shape, dilation_ratio)
    counts = np.zeros((3, 0), np.int64)  # gt edge, pred edge, both; per label
    for r0, r1 in row_bands(gt_arr.shape, band_pixels):
        c0, c1 = max(0, r0 - width), min(gt_arr.shape[0], r1 + width)
        counts = _add_counts(
            counts,
            _band_boundary_counts(gt_arr[c0:c1], pred_arr[c0:c1], width, r0 - c0, r1 - c0, ignore_index),
        )
    gt_count, pred_count, inter = counts
    labels = np.arange(counts.shape[1])
    union = gt_count + pred_count - inter
    keep = union > 0
    if ignore_index is not None:
        keep &= labels != ignore_index
    return float(np.mean(inter[keep] / union[keep])) if keep.any() else math.nan


def _band_boundary_counts(
    gt: np.ndarray, pred: np.ndarray, width: int, keep0: int, keep1: int, ignore_index: int | None
) -> np.ndarray:
    """Per-label boundary pixel counts (gt, pred, both) of rows ``keep0:keep1`` of a window with context."""
    gt_w = gt.astype(np.int64, copy=False)
    pred_w = pred.astype(np.int64, copy=False)
    gt_edge = _label_boundary(gt_w, width)[keep0:keep1]
    pred_edge = _label_boundary(pred_w, width)[keep0:keep1]
    gt_b, pred_b = gt_w[keep0:keep1], pred_w[keep0:keep1]
    if ignore_index is not None:
        valid = gt_b != ignore_index
        gt_edge &= valid
        pred_edge &= valid
    both = gt_edge & pred_edge & (gt_b == pred_b)
    values = [v[v >= 0] for v in (gt_b[gt_edge], pred_b[pred_edge], gt_b[both])]  # negatives are no class
    size = max((int(v.max()) + 1 for v in values if v.size), default=0)
    return np.stack([np.bincount(v, minlength=size) for v in values]) if size else np.zeros((3, 0), np.int64)


def _add_counts(total: np.ndarray, part: np.ndarray) -> np.ndarray:
    size = max(total.shape[1], part.shape[1])
    return np.pad(total, ((0, 0), (0, size - total.shape[1]))) + np.pad(
        part, ((0, 0), (0, size - part.shape[1]))
    )


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


# ------------------------------------------------------------------------------------ per-image IoU scoring


@dataclass(frozen=True)
class IoUOptions:
    """How label maps are scored (see the module docstring for the conventions).

    Attributes:
        known_classes: class count known from mask targets (ids observed in the maps are added to it).
        ignore_index: ground-truth id that is not scored; in a prediction it counts as wrong.
        reduce_zero_label: mmseg's option (ground truth 0 ignored, other ids decremented).
        classes: the subset mIoU averages over (None: all).
        boundary: also compute boundary IoU.
        dilation_ratio: boundary width as a share of the image diagonal.
    """

    known_classes: int = 0
    ignore_index: int | None = 255
    reduce_zero_label: bool = False
    classes: tuple[int, ...] | None = None
    boundary: bool = True
    dilation_ratio: float = 0.02


@dataclass
class ImageScores:
    """Scores of one prediction against one ground truth, with the confusion data to accumulate."""

    confusion: np.ndarray
    missed: np.ndarray
    scores: SegmentationScores
    boundary_iou: float


def _observed_max(values: np.ndarray, ignore_index: int | None, band_pixels: int) -> int:
    """The largest class id in a map below :data:`MAX_CLASSES` (``ignore_index`` excluded), -1 if none."""
    largest = -1
    for r0, r1 in row_bands(values.shape, band_pixels):
        band = values[r0:r1]
        keep = (band >= 0) & (band < MAX_CLASSES)
        if ignore_index is not None:
            keep &= band != ignore_index
        if keep.any():
            largest = max(largest, int(band[keep].max()))
    return largest


def score_masks(
    gt: np.ndarray, pred: np.ndarray, options: IoUOptions, *, band_pixels: int = BAND_PIXELS
) -> ImageScores:
    """Scores one HxW prediction against its HxW ground truth, in row bands (bounded memory).

    The number of classes is the largest of ``options.known_classes``, the ids observed in either map (below
    :data:`MAX_CLASSES`) and the class subset, so an id no mask target names still counts. Raises ValueError
    when the shapes differ.
    """
    gt, pred = _integer_map("gt", gt), _integer_map("pred", pred)
    if gt.shape != pred.shape:
        raise ValueError(f"ground truth mask {gt.shape} and prediction mask {pred.shape} differ in shape")
    shift = 1 if options.reduce_zero_label else 0
    num_classes = max(
        options.known_classes,
        _observed_max(gt, options.ignore_index, band_pixels) + 1 - shift,
        _observed_max(pred, options.ignore_index, band_pixels) + 1,
        max(options.classes, default=-1) + 1 if options.classes else 0,
        1,
    )
    cm = np.zeros((num_classes, num_classes), np.int64)
    missed = np.zeros(num_classes, np.int64)
    for r0, r1 in row_bands(gt.shape, band_pixels):
        band_cm, band_missed = confusion_and_missed(
            gt[r0:r1], pred[r0:r1], num_classes, options.ignore_index, options.reduce_zero_label
        )
        cm += band_cm
        missed += band_missed
    scores = scores_from_confusion(cm, missed, options.classes)
    b_iou = (
        _scored_boundary_iou(gt, pred, num_classes, options, band_pixels) if options.boundary else math.nan
    )
    return ImageScores(cm, missed, scores, b_iou)


def _scored_boundary_iou(
    gt: np.ndarray, pred: np.ndarray, num_classes: int, options: IoUOptions, band_pixels: int
) -> float:
    """Boundary IoU with the scoring conventions: ignored and out-of-range ground truth become -1 (ignored)."""
    shift = 1 if options.reduce_zero_label else 0
    reduced = np.empty(gt.shape, np.int32)
    for r0, r1 in row_bands(gt.shape, band_pixels):
        band = gt[r0:r1].astype(np.int64) - shift
        ignored = (band < 0) | (band >= num_classes)
        if options.ignore_index is not None:
            ignored |= gt[r0:r1] == options.ignore_index
        reduced[r0:r1] = np.where(ignored, -1, band)
    return boundary_iou(reduced, pred, options.dilation_ratio, ignore_index=-1, band_pixels=band_pixels)


def _safe_key(name: str) -> str:
    """A class name usable as a MongoDB dict key (no dots, no leading $)."""
    return str(name).replace(".", "_").lstrip("$") or "_"


def class_iou_dict(scores: SegmentationScores, names: Mapping[int, str]) -> dict[str, float]:
    """``{class name: IoU}`` of the classes present in ground truth or prediction (unnamed ids by number)."""
    iou = scores.per_class_iou
    return {_safe_key(names.get(i, str(i))): float(iou[i]) for i in np.flatnonzero(~np.isnan(iou))}


class ConfusionAccumulator:
    """Dataset totals of per-image :class:`ImageScores` whose confusion matrices grow with the classes seen.

    The matrix never exceeds :data:`MAX_CLASSES` squared (ids above it are never classes, see
    :func:`score_masks`). :meth:`summary` gives both reductions: ``summed`` (one confusion matrix over all
    images, as mmseg and SSA report) and ``mean_of_images`` (the mean of per-image mIoUs).
    """

    def __init__(self, classes: tuple[int, ...] | None = None) -> None:
        self.classes = classes
        self.confusion = np.zeros((0, 0), dtype=np.int64)
        self.missed = np.zeros(0, dtype=np.int64)
        self.image_mious: list[float] = []
        self.image_boundary: list[float] = []
        self.missing_predictions = 0

    def add(self, image: ImageScores) -> None:
        """Adds one image's scores."""
        n = max(self.confusion.shape[0], image.confusion.shape[0])
        if n > MAX_CLASSES:
            raise ValueError(f"{n} classes exceed MAX_CLASSES={MAX_CLASSES}")
        self.confusion = _pad_square(self.confusion, n) + _pad_square(image.confusion, n)
        self.missed = np.pad(self.missed, (0, n - self.missed.size)) + np.pad(
            image.missed, (0, n - image.missed.size)
        )
        self.image_mious.append(image.scores.miou)
        self.image_boundary.append(image.boundary_iou)

    @property
    def num_images(self) -> int:
        """Number of images added."""
        return len(self.image_mious)

    def summed(self) -> SegmentationScores | None:
        """Scores of the summed confusion matrix (None before the first image)."""
        if not self.confusion.size:
            return None
        n = self.confusion.shape[0]
        subset = None if self.classes is None else tuple(c for c in self.classes if c < n)
        return scores_from_confusion(self.confusion, self.missed, subset)

    def summary(self, names: Mapping[int, str]) -> dict[str, Any]:
        """The summed (mmseg/SSA) and mean-of-images reductions as plain values."""
        summed = self.summed()
        return {
            "num_images": self.num_images,
            "missing_predictions": self.missing_predictions,
            "mean_of_images": _plain(_nanmean(np.asarray(self.image_mious, np.float64))),
            "boundary_iou_mean": _plain(_nanmean(np.asarray(self.image_boundary, np.float64))),
            "summed": None if summed is None else summed.to_dict(dict(names)),
        }


def _pad_square(cm: np.ndarray, n: int) -> np.ndarray:
    return np.pad(cm, ((0, n - cm.shape[0]), (0, n - cm.shape[1])))

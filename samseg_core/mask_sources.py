"""Mask proposals of an image from one interface: SAM's automatic mask generator, stored masks, superpixels.

Voting (:mod:`samseg_core.voting`) and the SSA-engine consume :class:`MaskProposals`; a stage picks a
:class:`MaskSource` (``samseg_core.stages.sam_options.mask_source_for``) and asks it for the proposals of each
sample. No FiftyOne
import here: stored ``Detections`` are read duck-typed (``.detections``, ``.bounding_box``, ``.mask``).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Iterator, Mapping
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch

from samseg_core.amg import AutomaticMaskGenerator, GeneratedMasks
from samseg_core.mask_runs import MaskRuns, Order, runs_from_dense, runs_from_labels
from samseg_core.masks import masks_of_detections, masks_to_boxes_xyxy
from samseg_core.models.promptable import PromptableModel
from samseg_core.runner import SampleItem

SSA_PRESET: dict[str, Any] = dict(
    points_per_side=64,
    pred_iou_thresh=0.86,
    stability_score_thresh=0.92,
    crop_n_layers=1,
    crop_n_points_downscale_factor=2,
    min_mask_region_area=100,
)
"""Semantic Segment Anything's generator settings (with vit_h): 4096 prompts plus one layer of 4 crops."""

FAST_PRESET: dict[str, Any] = dict(
    points_per_side=32,
    points_per_batch=128,
    pred_iou_thresh=0.86,
    stability_score_thresh=0.92,
    crop_n_layers=0,
    min_mask_region_area=0,
)
"""About 10x less work than SSA's: 1024 prompts, no crops (one encoder pass, shareable), no small-region cleanup."""

AMG_PRESETS: dict[str, dict[str, Any]] = {"ssa": SSA_PRESET, "fast": FAST_PRESET}
SUPERPIXEL_METHODS = ("felzenszwalb", "slic")


class MaskProposals:
    """All mask proposals of one image, with SAM's per-mask fields (nan where a source does not know them).

    The masks are held as a dense ``(N, H, W)`` stack (stored masks), as runs (:class:`MaskRuns`: samseg's
    automatic mask generator) or, for a partition of the image (superpixels), as one ``(H, W)`` label map whose
    region ``k`` is mask ``k``. For runs and label maps nothing of size N x H x W is made unless :attr:`masks` is
    read: voting (:meth:`mask_runs`), boxes, box-relative masks (:meth:`box_masks`) and areas work on every form
    without a dense stack.

    Attributes:
        predicted_iou: ``(N,)`` float32 SAM's predicted mask quality.
        stability_score: ``(N,)`` float32 SAM's stability under threshold changes.
        point_coords: ``(N, 2)`` float32 ``(x, y)`` prompt point in image pixels.
        crop_box: ``(N, 4)`` float32 ``[x, y, w, h]`` crop the mask was predicted in.
        regions: the ``(H, W)`` label map of a partition, or None for a dense stack.
    """

    def __init__(
        self,
        masks: np.ndarray | None = None,
        predicted_iou: Any = None,
        stability_score: Any = None,
        point_coords: Any = None,
        crop_box: Any = None,
        *,
        regions: np.ndarray | None = None,
        num_regions: int | None = None,
        runs: MaskRuns | None = None,
    ) -> None:
        if sum(x is not None for x in (masks, regions, runs)) != 1:
            raise ValueError("MaskProposals needs one of masks (N, H, W), regions (H, W) or runs")
        self._runs: MaskRuns | None = None
        if runs is not None:
            if runs.order != "C":
                raise ValueError("MaskProposals keeps row-major ('C') runs")
            self.regions, self._masks, self._runs = None, None, runs
            self._count, self._size = int(runs.num_masks), (int(runs.shape[0]), int(runs.shape[1]))
        elif regions is not None:
            self.regions: np.ndarray | None = _region_map(regions)
            self._masks: np.ndarray | None = None
            self._count = int(num_regions if num_regions is not None else _region_count(self.regions))
            self._size = (int(self.regions.shape[0]), int(self.regions.shape[1]))
        else:
            self.regions = None
            self._masks = np.asarray(masks, dtype=bool)
            if self._masks.ndim != 3:
                raise ValueError(f"masks must be (N, H, W), got shape {self._masks.shape}")
            self._count = len(self._masks)
            self._size = (int(self._masks.shape[1]), int(self._masks.shape[2]))
        n = self._count
        self.predicted_iou = np.asarray(predicted_iou, np.float32).reshape(n)
        self.stability_score = np.asarray(stability_score, np.float32).reshape(n)
        self.point_coords = np.asarray(point_coords, np.float32).reshape(n, 2)
        self.crop_box = np.asarray(crop_box, np.float32).reshape(n, 4)

    @classmethod
    def from_masks(cls, masks: np.ndarray, **fields: Any) -> MaskProposals:
        """Returns proposals of ``masks`` with unknown SAM fields set to nan and the full image as crop box."""
        masks = np.asarray(masks, dtype=bool)
        n, height, width = masks.shape
        return cls(masks=masks, **_default_fields(n, height, width, fields))

    @classmethod
    def from_runs(cls, runs: MaskRuns, **fields: Any) -> MaskProposals:
        """Returns proposals of row-major ``runs`` (no dense stack); unknown SAM fields are nan."""
        height, width = runs.shape
        return cls(runs=runs, **_default_fields(runs.num_masks, height, width, fields))

    @classmethod
    def from_regions(
        cls, regions: np.ndarray, num_regions: int | None = None, **fields: Any
    ) -> MaskProposals:
        """Returns one proposal per region of an ``(H, W)`` label map ``0..n-1`` (no dense stack)."""
        regions = _region_map(regions)
        n = int(num_regions if num_regions is not None else _region_count(regions))
        height, width = regions.shape
        return cls(regions=regions, num_regions=n, **_default_fields(n, height, width, fields))

    @property
    def masks(self) -> np.ndarray:
        """``(N, H, W)`` bool masks at image resolution; from a label map this builds N x H x W bytes."""
        if self._masks is None and self.regions is None:
            self._masks = self._runs.to_dense()
        elif self._masks is None:
            self._masks = (
                self.regions[None] == np.arange(self._count, dtype=self.regions.dtype)[:, None, None]
            )
        return self._masks

    @property
    def dense(self) -> bool:
        """Whether the masks are held as a dense stack (False: runs or a region label map)."""
        return self._masks is not None and self.regions is None

    def mask_runs(self, order: Order = "C") -> MaskRuns:
        """The masks as :class:`~samseg_core.mask_runs.MaskRuns` (``"F"``: COCO RLE order)."""
        if order == "C" and self._runs is not None:
            return self._runs
        if self.regions is not None:
            runs = runs_from_labels(self.regions, self._count, order)
        elif self._masks is None:  # held as runs: column-major order only for SSA's JSON export
            runs = runs_from_dense(self.masks.transpose(0, 2, 1))
            runs.order, runs.shape = "F", self._size
        elif order == "C":
            runs = runs_from_dense(self._masks)
        else:
            runs = runs_from_dense(self._masks.transpose(0, 2, 1))
            runs.order, runs.shape = "F", self._size
        if order == "C":
            self._runs = runs
        return runs

    @property
    def areas(self) -> np.ndarray:
        """``(N,)`` int64 pixels per mask."""
        if not self.dense:
            return self.mask_runs().areas()
        return self._masks.sum(axis=(1, 2), dtype=np.int64)

    def boxes_xyxy(self) -> np.ndarray:
        """``(N, 4)`` int64 tight boxes ``[x0, y0, x1, y1]`` (inclusive); empty masks: 0s."""
        if not self.dense:
            return self.mask_runs().boxes_xyxy()
        return masks_to_boxes_xyxy(self._masks)

    def box_masks(self) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
        """Yields ``(index, box, mask)`` per non-empty mask: its inclusive xyxy box and its bool mask in it.

        For a label map each mask is cut from the map inside its box, so the cost is the boxes' area.
        """
        boxes, areas = self.boxes_xyxy(), self.areas
        for i in np.flatnonzero(areas > 0):
            x0, y0, x1, y1 = (int(v) for v in boxes[i])
            window = (slice(y0, y1 + 1), slice(x0, x1 + 1))
            if self.regions is not None:
                yield int(i), boxes[i], self.regions[window] == i
            elif self._masks is None:
                yield int(i), boxes[i], _box_mask_of_runs(self._runs, int(i), boxes[i])
            else:
                yield int(i), boxes[i], self._masks[i][window].copy()

    @property
    def image_size(self) -> tuple[int, int]:
        """``(H, W)`` of the image."""
        return self._size

    def __len__(self) -> int:
        return self._count


def _box_mask_of_runs(runs: MaskRuns, index: int, box: np.ndarray) -> np.ndarray:
    """Mask ``index`` of row-major ``runs`` inside its inclusive xyxy ``box`` (cost: the mask's area)."""
    x0, y0, x1, y1 = (int(v) for v in box)
    lo, hi = np.searchsorted(runs.mask_index, [index, index + 1])
    starts, lengths = runs.start[lo:hi], runs.length[lo:hi]
    offsets = np.arange(int(lengths.sum())) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    pixels = np.repeat(starts, lengths) + offsets
    width = runs.shape[1]
    window = np.zeros((y1 - y0 + 1, x1 - x0 + 1), bool)
    window[pixels // width - y0, pixels % width - x0] = True
    return window


def _region_map(regions: Any) -> np.ndarray:
    regions = np.asarray(regions)
    if regions.ndim != 2 or not np.issubdtype(regions.dtype, np.integer):
        raise ValueError(f"regions must be an (H, W) integer label map, got {regions.dtype} {regions.shape}")
    return regions


def _region_count(regions: np.ndarray) -> int:
    return int(regions.max()) + 1 if regions.size else 0


def _default_fields(n: int, height: int, width: int, fields: Mapping[str, Any]) -> dict[str, Any]:
    """SAM's per-mask fields for masks a source knows nothing about (nan, and the full image as crop box)."""
    defaults = {
        "predicted_iou": np.full(n, np.nan, np.float32),
        "stability_score": np.full(n, np.nan, np.float32),
        "point_coords": np.full((n, 2), np.nan, np.float32),
        "crop_box": np.tile(np.array([0, 0, width, height], np.float32), (n, 1)),
    }
    defaults.update({k: v for k, v in fields.items() if v is not None})
    return defaults


@runtime_checkable
class MaskSource(Protocol):
    """Anything that gives the mask proposals of a sample."""

    name: str
    input_fields: tuple[str, ...]  # sample fields the runner must read for it

    def proposals(self, item: SampleItem) -> MaskProposals:
        """Returns the proposals of ``item`` (its RGB image is in ``item.image``)."""
        ...


def _image_of(item: SampleItem) -> np.ndarray:
    if item.image is None:
        raise ValueError(f"sample {item.id} has no decoded image; mask sources need it")
    return item.image


# --------------------------------------------------------------------------------------------------- SAM


def resolve_sam(
    sam: Any = "vit_b", *, checkpoint: str | None = None, device: str | torch.device | None = None
) -> PromptableModel:
    """Returns the SAM-family model a ``sam=`` spec names (type, checkpoint, hub id, directory, ``module:function``
    or a built model) behind the promptable interface."""
    from samseg_core.models.factory import build_from_spec, is_factory_spec
    from samseg_core.models.sam_family import load_sam_family

    if is_factory_spec(sam):
        sam = build_from_spec(sam)
    return load_sam_family(sam, checkpoint=checkpoint, device=device)


def amg_settings(preset: str | None = "ssa", **overrides: Any) -> dict[str, Any]:
    """Returns automatic mask generator keyword arguments: a preset's (None: segment_anything's) + overrides.

    Raises:
        ValueError: for an unknown preset; TypeError for a setting the generator does not have.
    """
    if preset is not None and preset not in AMG_PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {sorted(AMG_PRESETS)} or None")
    valid = set(inspect.signature(AutomaticMaskGenerator.__init__).parameters) - {"self", "model"}
    unknown = sorted(set(overrides) - valid)
    if unknown:
        raise TypeError(f"unknown automatic mask generator settings {unknown}; valid: {sorted(valid)}")
    settings = {**(AMG_PRESETS[preset] if preset else {}), **overrides}
    if settings.get("point_grids") is not None:
        settings["points_per_side"] = None
    return settings


class SamAutomaticSource:
    """samseg's automatic mask generator (:class:`~samseg_core.amg.AutomaticMaskGenerator`, the settings and
    semantics of ``segment_anything.SamAutomaticMaskGenerator``) as a mask source, for any SAM-family backend.

    Args:
        sam: a ``PromptableModel``, or anything :func:`resolve_sam` accepts (type, checkpoint path, hub id,
            directory, factory spec, a built model).
        preset: ``"ssa"`` (:data:`SSA_PRESET`), ``"fast"`` (:data:`FAST_PRESET`) or None (segment_anything's
            defaults).
        cache: an :class:`~samseg_core.sam_embedding.EmbeddingCache` of this model: the full-image crop reuses the
            embedding cached under the sample id (computed once per image, shared with other stages).
        device: device for a model given by name.
        **amg_overrides: any generator setting (``points_per_side``, ``points_per_batch``, ``pred_iou_thresh``,
            ``stability_score_thresh``, ``stability_score_offset``, ``box_nms_thresh``, ``crop_n_layers``,
            ``crop_nms_thresh``, ``crop_overlap_ratio``, ``crop_n_points_downscale_factor``, ``point_grids``,
            ``min_mask_region_area``).

    Attributes:
        oom_halvings: the new ``points_per_batch`` of each CUDA out-of-memory halving so far (for run summaries).
    """

    name = "sam"
    input_fields: tuple[str, ...] = ()

    def __init__(
        self,
        sam: Any,
        *,
        preset: str | None = "ssa",
        cache: Any = None,
        device: str | torch.device | None = None,
        **amg_overrides: Any,
    ) -> None:
        if cache is not None and cache.owns(sam):
            self.model = cache.model
        else:
            self.model = sam if isinstance(sam, PromptableModel) else resolve_sam(sam, device=device)
        if cache is not None and cache.model is not self.model:
            raise ValueError("the embedding cache belongs to another SAM model")
        self.settings = amg_settings(preset, **amg_overrides)
        self.cache = cache
        self.generator = AutomaticMaskGenerator(self.model, **self.settings)

    @property
    def oom_halvings(self) -> list[int]:
        """The new ``points_per_batch`` of each out-of-memory halving so far."""
        return list(self.generator.oom_halvings)

    @torch.inference_mode()
    def proposals(self, item: SampleItem) -> MaskProposals:
        """Runs the generator on ``item.image``; the full-image embedding comes from the cache when there is one."""
        image = _image_of(item)
        embeddings = self.cache.get(item.id, image).embeddings if self.cache is not None else None
        return proposals_from_generated(self.generator.generate(image, embeddings=embeddings))


def proposals_from_generated(masks: GeneratedMasks) -> MaskProposals:
    """Returns proposals of the generator's output, kept as runs (no dense stack)."""
    return MaskProposals.from_runs(
        masks.runs,
        predicted_iou=masks.predicted_iou,
        stability_score=masks.stability_score,
        point_coords=masks.point_coords,
        crop_box=masks.crop_box,
    )


# --------------------------------------------------------------------------------------------------- stored


def _attribute(obj: Any, name: str) -> Any:
    """A detection's attribute (FiftyOne dynamic attribute, plain attribute or dict key), None when absent."""
    if isinstance(obj, Mapping):
        return obj.get(name)
    try:
        return getattr(obj, name)
    except AttributeError:
        return None


def _number(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


class DetectionsSource:
    """Masks already stored in a ``Detections`` field (SA-1B imports, FiftyOne zoo SAM output, an earlier run).

    Reads the optional attributes ``predicted_iou``, ``stability_score``, ``point_coords`` (``[x, y]`` or
    ``[[x, y]]``) and ``crop_box`` (``[x, y, w, h]`` pixels) of each detection.

    Args:
        field: the sample field holding the detections.
    """

    def __init__(self, field: str) -> None:
        if not field:
            raise ValueError("DetectionsSource needs a field name")
        self.field = field
        self.name = f"field:{field}"
        self.input_fields = (field,)

    def proposals(self, item: SampleItem) -> MaskProposals:
        """Returns the proposals stored in ``item.inputs[field]`` (no detections: no proposals)."""
        height, width = _image_of(item).shape[:2]
        detections = item.inputs.get(self.field)
        dets = list(getattr(detections, "detections", None) or [])
        masks = masks_of_detections(detections, height, width)
        points = np.full((len(dets), 2), np.nan, np.float32)
        crops = np.tile(np.array([0, 0, width, height], np.float32), (len(dets), 1))
        for i, det in enumerate(dets):
            point = _attribute(det, "point_coords")
            if point is not None:
                points[i] = np.asarray(point, np.float32).reshape(-1, 2)[0]
            crop = _attribute(det, "crop_box")
            if crop is not None:
                crops[i] = np.asarray(crop, np.float32).reshape(4)
        return MaskProposals(
            masks=masks,
            predicted_iou=[_number(_attribute(d, "predicted_iou")) for d in dets],
            stability_score=[_number(_attribute(d, "stability_score")) for d in dets],
            point_coords=points,
            crop_box=crops,
        )


# --------------------------------------------------------------------------------------------------- superpixels


class SuperpixelSource:
    """Weight-free proposals: scikit-image superpixels (for CPU-only or offline use, and tests).

    Superpixels partition the image, so voting over them is a majority filter inside colour-coherent regions.
    The proposals carry the region label map, not one dense mask per region: memory is the map (2 bytes a
    pixel below 65536 regions) plus its runs, whatever the number of regions.

    Args:
        method: ``"felzenszwalb"`` or ``"slic"``.
        max_side: superpixels are computed on a copy whose longest side is at most this, and their labels
            upsampled (nearest) to the image: the cost and memory of a 64-megapixel image stay those of a
            few megapixels.
        **params: arguments of ``skimage.segmentation.felzenszwalb`` (default ``scale=200, sigma=0.8``,
            ``min_size`` = image area / 400) or ``slic`` (default ``n_segments=250, compactness=10``).
    """

    input_fields: tuple[str, ...] = ()

    def __init__(self, method: str = "felzenszwalb", *, max_side: int = 1024, **params: Any) -> None:
        if method not in SUPERPIXEL_METHODS:
            raise ValueError(f"unknown superpixel method {method!r}; choose one of {SUPERPIXEL_METHODS}")
        if int(max_side) < 1:
            raise ValueError(f"max_side must be positive, got {max_side}")
        self.method = method
        self.name = method
        self.max_side = int(max_side)
        self.params = params

    def labels(self, image: np.ndarray) -> np.ndarray:
        """Returns the ``(H, W)`` region ids ``0..n-1`` of ``image`` (computed at most ``max_side`` wide)."""
        from samseg_core.images import downscale_longest_side
        from samseg_core.masks import resize_mask_nearest

        small, scale = downscale_longest_side(image, self.max_side)
        regions = self._labels_at(small)
        count = int(regions.max()) + 1 if regions.size else 0
        regions = regions.astype(np.uint16 if count <= 1 << 16 else np.int32)  # upsampled: keep it small
        return regions if scale == 1.0 else resize_mask_nearest(regions, image.shape[:2])

    def _labels_at(self, image: np.ndarray) -> np.ndarray:
        from skimage import segmentation

        height, width = image.shape[:2]
        if self.method == "felzenszwalb":
            params = {"scale": 200.0, "sigma": 0.8, "min_size": max(20, height * width // 400), **self.params}
            regions = segmentation.felzenszwalb(image, **params)
        else:
            params = {"n_segments": 250, "compactness": 10.0, "start_label": 0, **self.params}
            regions = segmentation.slic(image, **params)
        return np.unique(regions, return_inverse=True)[1].reshape(height, width)

    def proposals(self, item: SampleItem) -> MaskProposals:
        """Returns one proposal per superpixel of ``item.image``, held as the region label map."""
        return MaskProposals.from_regions(self.labels(_image_of(item)))

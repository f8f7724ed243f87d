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
from segment_anything import SamAutomaticMaskGenerator, SamPredictor
from segment_anything.modeling import Sam

from samseg_core.mask_runs import MaskRuns, Order, runs_from_dense, runs_from_labels
from samseg_core.masks import masks_of_detections, masks_to_boxes_xyxy
from samseg_core.runner import SampleItem
from samseg_core.sam_embedding import EmbeddingCache, ImageEmbedding

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

    The masks are held either as a dense ``(N, H, W)`` stack (SAM, stored masks) or, for a partition of the
    image (superpixels), as one ``(H, W)`` label map whose region ``k`` is mask ``k``: then nothing of size
    N x H x W is made unless :attr:`masks` is read. Voting (:meth:`mask_runs`), boxes, box-relative masks
    (:meth:`box_masks`) and areas work on either form without a dense stack of a label map.

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
    ) -> None:
        if (masks is None) == (regions is None):
            raise ValueError("MaskProposals needs either masks (N, H, W) or regions (H, W)")
        self._runs: MaskRuns | None = None
        if regions is not None:
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
        if self._masks is None:
            self._masks = (
                self.regions[None] == np.arange(self._count, dtype=self.regions.dtype)[:, None, None]
            )
        return self._masks

    @property
    def dense(self) -> bool:
        """Whether the masks are held as a dense stack (False: a region label map)."""
        return self.regions is None

    def mask_runs(self, order: Order = "C") -> MaskRuns:
        """The masks as :class:`~samseg_core.mask_runs.MaskRuns` (``"F"``: COCO RLE order)."""
        if order == "C" and self._runs is not None:
            return self._runs
        if self.regions is not None:
            runs = runs_from_labels(self.regions, self._count, order)
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
        if self.regions is not None:
            return self.mask_runs().areas()
        return self._masks.sum(axis=(1, 2), dtype=np.int64)

    def boxes_xyxy(self) -> np.ndarray:
        """``(N, 4)`` int64 tight boxes ``[x0, y0, x1, y1]`` (inclusive); empty masks: 0s."""
        if self.regions is not None:
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
            else:
                yield int(i), boxes[i], self._masks[i][window].copy()

    @property
    def image_size(self) -> tuple[int, int]:
        """``(H, W)`` of the image."""
        return self._size

    def __len__(self) -> int:
        return self._count


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
):
    """Returns a ``segment_anything`` Sam in eval mode from a type, checkpoint path, ``module:function`` or model."""
    from samseg_core.models.factory import build_from_spec, is_factory_spec
    from samseg_core.models.sam import load_sam

    if is_factory_spec(sam):
        sam = build_from_spec(sam)
    return load_sam(sam, checkpoint=checkpoint, device=device).eval()


def amg_settings(preset: str | None = "ssa", **overrides: Any) -> dict[str, Any]:
    """Returns ``SamAutomaticMaskGenerator`` keyword arguments: a preset's (None: segment_anything's) + overrides.

    Raises:
        ValueError: for an unknown preset; TypeError for a setting the generator does not have.
    """
    if preset is not None and preset not in AMG_PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {sorted(AMG_PRESETS)} or None")
    valid = set(inspect.signature(SamAutomaticMaskGenerator.__init__).parameters) - {"self", "model"}
    unknown = sorted(set(overrides) - valid)
    if unknown:
        raise TypeError(f"unknown automatic mask generator settings {unknown}; valid: {sorted(valid)}")
    settings = {**(AMG_PRESETS[preset] if preset else {}), **overrides}
    if settings.get("point_grids") is not None:
        settings["points_per_side"] = None
    settings["output_mode"] = "binary_mask"
    return settings


class _PrimedPredictor(SamPredictor):
    """A ``SamPredictor`` whose ``set_image`` takes a cached embedding instead of running the image encoder."""

    def __init__(self, sam: Any, embedding: ImageEmbedding) -> None:
        super().__init__(sam)
        self.embedding = embedding

    def set_image(self, image: np.ndarray, image_format: str = "RGB") -> None:
        """Sets the cached embedding after checking that it is for an image of this size."""
        if tuple(image.shape[:2]) != tuple(self.embedding.original_size):
            raise ValueError(
                f"cached embedding is for size {self.embedding.original_size}, not {image.shape[:2]}"
            )
        self.reset_image()
        self.features = self.embedding.features
        self.original_size = tuple(self.embedding.original_size)
        self.input_size = tuple(self.embedding.input_size)
        self.is_image_set = True


class _CachedGenerator(SamAutomaticMaskGenerator):
    """The automatic mask generator, taking the full-image embedding from an EmbeddingCache (crops still encode)."""

    cache: EmbeddingCache | None = None
    key: str | None = None

    def _process_crop(self, image, crop_box, crop_layer_idx, orig_size):  # upstream signature
        whole = list(crop_box) == [0, 0, orig_size[1], orig_size[0]]
        if self.cache is None or self.key is None or not whole:
            return super()._process_crop(image, crop_box, crop_layer_idx, orig_size)
        own = self.predictor
        self.predictor = _PrimedPredictor(own.model, self.cache.get(self.key, image))
        try:
            return super()._process_crop(image, crop_box, crop_layer_idx, orig_size)
        finally:
            self.predictor = own


class SamAutomaticSource:
    """SAM's automatic mask generator (``segment_anything.SamAutomaticMaskGenerator``) as a mask source.

    Args:
        sam: a ``Sam`` model, or anything :func:`resolve_sam` accepts (type, checkpoint path, factory spec).
        preset: ``"ssa"`` (:data:`SSA_PRESET`), ``"fast"`` (:data:`FAST_PRESET`) or None (segment_anything's
            defaults).
        cache: an :class:`~samseg_core.sam_embedding.EmbeddingCache` of this model: the full-image crop reuses the
            embedding cached under the sample id (computed once per image, shared with other stages).
        device: device for a model given by name.
        **amg_overrides: any ``SamAutomaticMaskGenerator`` setting (``points_per_side``, ``points_per_batch``,
            ``pred_iou_thresh``, ``stability_score_thresh``, ``stability_score_offset``, ``box_nms_thresh``,
            ``crop_n_layers``, ``crop_nms_thresh``, ``crop_overlap_ratio``, ``crop_n_points_downscale_factor``,
            ``point_grids``, ``min_mask_region_area``).
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
        self.sam = sam if isinstance(sam, Sam) else resolve_sam(sam, device=device)
        if cache is not None and cache.sam is not self.sam:
            raise ValueError("the embedding cache belongs to another SAM model")
        self.settings = amg_settings(preset, **amg_overrides)
        self.cache = cache
        self.generator = _CachedGenerator(self.sam, **self.settings)
        self.generator.cache = cache

    @torch.inference_mode()
    def proposals(self, item: SampleItem) -> MaskProposals:
        """Runs the generator on ``item.image``; the full-image embedding comes from the cache when there is one."""
        image = _image_of(item)
        self.generator.key = item.id
        try:
            records = self.generator.generate(image)
        finally:
            self.generator.key = None
        return proposals_from_sam_records(records, image.shape[:2])


def proposals_from_sam_records(records: list[Mapping[str, Any]], size: tuple[int, int]) -> MaskProposals:
    """Returns proposals from ``SamAutomaticMaskGenerator.generate`` records (binary-mask output mode)."""
    height, width = size
    if not records:
        return MaskProposals.from_masks(np.zeros((0, height, width), bool))
    return MaskProposals(
        masks=np.stack([np.asarray(r["segmentation"], bool) for r in records]),
        predicted_iou=[r["predicted_iou"] for r in records],
        stability_score=[r["stability_score"] for r in records],
        point_coords=[r["point_coords"][0] for r in records],
        crop_box=[r["crop_box"] for r in records],
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

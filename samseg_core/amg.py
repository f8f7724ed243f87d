"""samseg's automatic mask generator: ``SamAutomaticMaskGenerator``'s masks from any :class:`PromptableModel`.

Same settings and semantics as ``segment_anything.SamAutomaticMaskGenerator`` (point grids per crop layer, crop
boxes, predicted-IoU and stability filters, crop-edge filter, box NMS within and across crops, optional
small-region cleanup), and, on the same model, the same masks. What differs is where the work happens:

* everything up to the final runs stays on the model's device: filters, stability, boxes and NMS are batched
  tensor ops, with no per-mask Python loop and no copy of a mask to the host per batch;
* masks are filtered by predicted IoU *before* upscaling, so only the survivors' low-res logits are upscaled
  to the crop (the reference upscales all ``3 x points_per_batch`` masks of a batch first); the stability
  score is computed on the same upscaled float32 logits as the reference's;
* on the CPU the three threshold comparisons of a mask look only at the window of the crop where its logits
  can exceed the lowest threshold (bilinear upscaling is a convex combination of neighbouring low-res
  logits), and chunks are sized to stay in cache;
* only the low-res logits of the masks that pass the filters are kept (a few hundred KB each, not a
  full-resolution mask); once both NMS passes are done, the final masks alone are upscaled again, crop by
  crop, and become runs (:class:`~samseg_core.mask_runs.MaskRuns`) in the image frame: no RLE per mask and
  no ``N x H x W`` stack on the host;
* the crops of one layer are embedded in one ``embed`` call, and a caller's embedding of the full image
  (an embedding cache) can stand in for the first crop's encoder pass;
* decoding runs under bf16 autocast on CUDA; a CUDA out-of-memory error halves ``points_per_batch`` and
  retries the same batch (each halving is recorded).

This module imports no FiftyOne.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from segment_anything.utils.amg import (
    batched_mask_to_box,
    build_all_layer_point_grids,
    calculate_stability_score,
    generate_crop_boxes,
    is_box_near_crop_edge,
    remove_small_regions,
)
from torchvision.ops.boxes import batched_nms, box_area

from samseg_core.mask_runs import MaskRuns, runs_from_dense
from samseg_core.models.device import autocast_context
from samseg_core.models.promptable import (
    Embeddings,
    PromptableModel,
    SegmentAnythingBackend,
    TransformersSamBackend,
    preprocess_shape,
)

__all__ = ["AutomaticMaskGenerator", "GeneratedMasks", "concat_runs", "take_runs", "uncrop_runs"]

logger = logging.getLogger(__name__)

# Upscaled float32 logits held at once (elements): bounds the stability pass's memory. On the CPU a few MB,
# so that each chunk's three comparisons read it from cache (2-3x faster than one pass over a large stack).
_UPSCALE_BUDGET_CPU = 1 << 21
_UPSCALE_BUDGET_CUDA = 1 << 26
# Masks expanded to dense at once by the small-region cleanup and by records().
_DENSE_CHUNK = 16


@dataclass
class GeneratedMasks:
    """The masks of one image, as :meth:`AutomaticMaskGenerator.generate` returns them.

    Mask ``i`` is row ``i`` of every array and mask ``i`` of :attr:`runs`. Order: as the reference's output
    (each crop's masks in its NMS order, by predicted IoU; with crops, the cross-crop NMS order, smaller
    crops first; after small-region cleanup, unchanged masks first).

    Attributes:
        runs: Row-major runs of the masks in the image frame.
        predicted_iou: ``(N,)`` float32 the model's predicted IoU.
        stability_score: ``(N,)`` float32 stability score.
        point_coords: ``(N, 2)`` float64 xy of the prompt point, image pixels.
        crop_box: ``(N, 4)`` int64 crop the mask came from, ``[x, y, w, h]`` as the reference records it.
        boxes_xyxy: ``(N, 4)`` int64 ``[x0, y0, x1, y1]`` box of the mask, inclusive (``batched_mask_to_box``).
        area: ``(N,)`` int64 pixels of each mask.
        image_size: ``(H, W)`` of the image.
        points_per_batch_used: The prompt batch size at the end of the call (smaller than the setting after
            an out-of-memory halving).
        oom_halvings: The new batch size of each out-of-memory halving during the call.
    """

    runs: MaskRuns
    predicted_iou: np.ndarray
    stability_score: np.ndarray
    point_coords: np.ndarray
    crop_box: np.ndarray
    boxes_xyxy: np.ndarray
    area: np.ndarray
    image_size: tuple[int, int]
    points_per_batch_used: int
    oom_halvings: list[int] = field(default_factory=list)

    def __len__(self) -> int:
        """Number of masks."""
        return int(self.runs.num_masks)

    def records(self) -> list[dict[str, Any]]:
        """The masks as ``SamAutomaticMaskGenerator.generate`` records (``output_mode="binary_mask"``).

        Expands every mask to a dense ``(H, W)`` bool array: for tests and comparisons, not for large images.
        """
        out = []
        for first in range(0, len(self), _DENSE_CHUNK):
            rows = np.arange(first, min(first + _DENSE_CHUNK, len(self)))
            dense = take_runs(self.runs, rows).to_dense()
            for k, i in enumerate(rows):
                x0, y0, x1, y1 = (int(v) for v in self.boxes_xyxy[i])
                out.append(
                    {
                        "segmentation": dense[k],
                        "area": int(self.area[i]),
                        "bbox": [x0, y0, x1 - x0, y1 - y0],
                        "predicted_iou": float(self.predicted_iou[i]),
                        "point_coords": [[float(v) for v in self.point_coords[i]]],
                        "stability_score": float(self.stability_score[i]),
                        "crop_box": [int(v) for v in self.crop_box[i]],
                    }
                )
        return out


@dataclass
class _CropMasks:
    """The masks one crop contributes: low-res logits and boxes on the device, the rest host arrays."""

    low_res: torch.Tensor  # (K, L, L) float32 logits, upscaled again (to the crop) once the masks are final
    boxes: torch.Tensor  # (K, 4) int64 xyxy, image frame
    iou: np.ndarray
    stability: np.ndarray
    points: np.ndarray
    crop_box: list[int]


class AutomaticMaskGenerator:
    """Masks for a whole image from a grid of point prompts, as ``SamAutomaticMaskGenerator`` makes them.

    Attributes:
        oom_halvings: The new ``points_per_batch`` of every out-of-memory halving over this generator's
            life (a later call starts from the reduced size).
    """

    def __init__(
        self,
        model: PromptableModel,
        points_per_side: int | None = 32,
        points_per_batch: int = 64,
        pred_iou_thresh: float = 0.88,
        stability_score_thresh: float = 0.95,
        stability_score_offset: float = 1.0,
        box_nms_thresh: float = 0.7,
        crop_n_layers: int = 0,
        crop_nms_thresh: float = 0.7,
        crop_overlap_ratio: float = 512 / 1500,
        crop_n_points_downscale_factor: int = 1,
        point_grids: list[np.ndarray] | None = None,
        min_mask_region_area: int = 0,
        autocast: bool = True,
    ) -> None:
        """Set up the generator; the arguments are ``SamAutomaticMaskGenerator``'s, with the same meaning.

        Args:
            model: The promptable model (any backend of :mod:`samseg_core.models.promptable`).
            points_per_side: Points sampled along each side of a crop (``points_per_side**2`` prompts);
                ``None`` when ``point_grids`` is given.
            points_per_batch: Prompts decoded together (halved on a CUDA out-of-memory error).
            pred_iou_thresh: Keep masks whose predicted IoU is above this (0 disables the filter).
            stability_score_thresh: Keep masks whose stability score is at least this (0 disables it).
            stability_score_offset: Logit offset of the stability score's two thresholds.
            box_nms_thresh: Box IoU above which NMS drops a duplicate within a crop.
            crop_n_layers: Crop layers after the full image; layer ``i`` has ``(2**i)**2`` crops.
            crop_nms_thresh: Box IoU above which NMS drops a duplicate between crops (smaller crops win).
            crop_overlap_ratio: Overlap of first-layer crops as a fraction of the image's short side.
            crop_n_points_downscale_factor: Points per side in layer ``n`` are divided by this ``**n``.
            point_grids: Explicit ``(P, 2)`` point grids in ``[0, 1]``, one per layer; excludes points_per_side.
            min_mask_region_area: If > 0, fill holes and remove islands smaller than this (needs OpenCV).
            autocast: Decode under bf16 autocast on CUDA (no effect elsewhere).

        Raises:
            ValueError: both or neither of ``points_per_side`` and ``point_grids``; too few grids for the
                layers; ``points_per_batch`` < 1.
        """
        if (points_per_side is None) == (point_grids is None):
            raise ValueError("give exactly one of points_per_side and point_grids")
        if points_per_side is not None:
            grids = build_all_layer_point_grids(
                points_per_side, crop_n_layers, crop_n_points_downscale_factor
            )
        else:
            grids = [np.asarray(g, dtype=np.float64) for g in point_grids or []]
        if any(len(grid) == 0 for grid in grids):
            raise ValueError(
                "every crop layer needs at least one point (check crop_n_points_downscale_factor)"
            )
        if len(grids) < crop_n_layers + 1:
            raise ValueError(
                f"point_grids has {len(grids)} grid(s) but {crop_n_layers + 1} layer(s) need one each"
            )
        if points_per_batch < 1:
            raise ValueError(f"points_per_batch must be at least 1, got {points_per_batch}")
        if min_mask_region_area > 0:
            import cv2  # noqa: F401  (fail now, not after the model ran)
        self.model = model
        self.point_grids = grids
        self.points_per_batch = int(points_per_batch)
        self.pred_iou_thresh = float(pred_iou_thresh)
        self.stability_score_thresh = float(stability_score_thresh)
        self.stability_score_offset = float(stability_score_offset)
        self.box_nms_thresh = float(box_nms_thresh)
        self.crop_n_layers = int(crop_n_layers)
        self.crop_nms_thresh = float(crop_nms_thresh)
        self.crop_overlap_ratio = float(crop_overlap_ratio)
        self.crop_n_points_downscale_factor = int(crop_n_points_downscale_factor)
        self.min_mask_region_area = int(min_mask_region_area)
        self.autocast = bool(autocast)
        self.oom_halvings: list[int] = []
        self._batch_size = self.points_per_batch
        self._geometry = _upscale_geometry(model)

    @torch.no_grad()
    def generate(
        self, image: np.ndarray, embeddings: Embeddings | None = None, index: int = 0
    ) -> GeneratedMasks:
        """Generate the masks of one image.

        Args:
            image: ``(H, W, 3)`` uint8 RGB image.
            embeddings: Optional embeddings that contain this full image (``model.embed([image])`` or a cached
                batch): the full-image crop uses row ``index`` instead of running the encoder. Other crops
                are always embedded.
            index: Row of ``embeddings`` holding this image.

        Returns:
            :class:`GeneratedMasks`, masks in the image frame.

        Raises:
            ValueError: ``image`` is not HxWx3 uint8, or ``embeddings[index]`` is of another image size.
        """
        image = _check_image(image)
        size = (int(image.shape[0]), int(image.shape[1]))
        if embeddings is not None and tuple(embeddings.original_sizes[index]) != size:
            raise ValueError(
                f"embeddings[{index}] is of a {embeddings.original_sizes[index]} image, not of this {size} one"
            )
        halvings_before = len(self.oom_halvings)
        crop_boxes, layer_idxs = generate_crop_boxes(size, self.crop_n_layers, self.crop_overlap_ratio)
        crops: list[_CropMasks] = []
        for layer in sorted(set(layer_idxs)):
            boxes = [box for box, idx in zip(crop_boxes, layer_idxs) if idx == layer]
            if layer == 0 and embeddings is not None:
                layer_embeddings, rows = embeddings, [index]
            else:
                layer_embeddings = self.model.embed([image[y0:y1, x0:x1] for x0, y0, x1, y1 in boxes])
                rows = list(range(len(boxes)))
            for box, row in zip(boxes, rows):
                crops.append(self._process_crop(layer_embeddings, row, box, layer, size))
            del layer_embeddings
        result = self._merge_crops(crops, size, len(crop_boxes) > 1)
        if self.min_mask_region_area > 0:
            result = self._remove_small_regions(result)
        result.oom_halvings = self.oom_halvings[halvings_before:]
        result.points_per_batch_used = self._batch_size
        return result

    def _process_crop(
        self, embeddings: Embeddings, row: int, crop_box: list[int], layer: int, image_size: tuple[int, int]
    ) -> _CropMasks:
        """Decode the layer's point grid on one crop, filter and NMS; boxes and points in the image frame."""
        x0, y0, x1, y1 = crop_box
        points = self.point_grids[layer] * np.array([x1 - x0, y1 - y0], dtype=np.float64)[None, :]
        data = self._decode_crop(embeddings, row, points, crop_box, image_size)
        keep = batched_nms(
            data["boxes"].float(),
            data["iou"],
            torch.zeros_like(data["iou"]),
            iou_threshold=self.box_nms_thresh,
        )
        data = {key: value[keep] for key, value in data.items()}
        offset = torch.tensor([[x0, y0, x0, y0]], device=data["boxes"].device)
        return _CropMasks(
            low_res=data["low_res"],
            boxes=data["boxes"] + offset,
            iou=data["iou"].cpu().numpy(),
            stability=data["stability"].cpu().numpy(),
            points=points[data["point"].cpu().numpy()] + np.array([x0, y0], dtype=np.float64),
            crop_box=list(crop_box),
        )

    def _decode_crop(
        self,
        embeddings: Embeddings,
        row: int,
        points: np.ndarray,
        crop_box: list[int],
        image_size: tuple[int, int],
    ) -> dict[str, torch.Tensor]:
        """Run every batch of ``points`` on one crop, halving the batch and retrying on out-of-memory errors.

        Returns the kept masks' ``low_res`` logits, crop-frame ``boxes``, ``iou``, ``stability`` and ``point``
        (index into ``points``), in prompt order, on the device.
        """
        x0, y0, x1, y1 = crop_box
        parts: list[dict[str, torch.Tensor]] = []
        start = 0
        while start < len(points):
            stop = min(start + self._batch_size, len(points))
            try:
                part = self._process_batch(
                    embeddings, row, points[start:stop], (y1 - y0, x1 - x0), crop_box, image_size
                )
            except (torch.cuda.OutOfMemoryError, RuntimeError) as err:
                if not _is_oom(err) or self._batch_size == 1:
                    raise
                self._halve_batch(err)
                continue
            part["point"] += start
            parts.append(part)
            start = stop
        return {key: torch.cat([p[key] for p in parts]) for key in parts[0]}

    def _halve_batch(self, err: BaseException) -> None:
        """Halve the prompt batch after an out-of-memory error, free the CUDA cache, and record it."""
        self._batch_size = max(1, self._batch_size // 2)
        self.oom_halvings.append(self._batch_size)
        if self.model.device.type == "cuda":
            torch.cuda.empty_cache()
        logger.warning(
            "out of memory decoding prompts (%s); retrying with points_per_batch=%d", err, self._batch_size
        )

    def _process_batch(
        self,
        embeddings: Embeddings,
        row: int,
        points: np.ndarray,
        crop_size: tuple[int, int],
        crop_box: list[int],
        image_size: tuple[int, int],
    ) -> dict[str, torch.Tensor]:
        """Decode one batch of points and keep the masks that pass the filters (on the device).

        Returns tensors of the kept masks: ``low_res (K, L, L)`` logits, ``boxes (K, 4)`` crop-frame xyxy,
        ``iou``, ``stability`` and ``point`` (the prompt's index in the batch).
        """
        device = self.model.device
        coords = torch.as_tensor(points, dtype=torch.float32, device=device)[:, None, :]
        labels = torch.ones(coords.shape[:2], dtype=torch.int64, device=device)
        with autocast_context(device, self.autocast):
            decoded = self.model.decode(embeddings, row, points=coords, point_labels=labels, multimask=True)
        low_res = decoded.low_res_logits.float()
        num_masks = low_res.shape[1]
        low_res = low_res.flatten(0, 1)
        iou = decoded.iou_predictions.float().flatten(0, 1)
        point = torch.arange(len(points), device=device).repeat_interleave(num_masks)
        if self.pred_iou_thresh > 0.0:  # before upscaling: only the survivors are upscaled
            keep = iou > self.pred_iou_thresh
            low_res, iou, point = low_res[keep], iou[keep], point[keep]
        kept = self._upscale_and_filter(low_res, crop_size, crop_box, image_size)
        index = kept.pop("index")
        return {**kept, "low_res": low_res[index], "iou": iou[index], "point": point[index]}

    def _upscale_and_filter(
        self,
        low_res: torch.Tensor,
        crop_size: tuple[int, int],
        crop_box: list[int],
        image_size: tuple[int, int],
    ) -> dict[str, torch.Tensor]:
        """Upscale ``(K, L, L)`` logits to the crop a few at a time, filter by stability and crop edges.

        On the CPU each chunk is a few MB, so its comparisons and box reductions read it from cache. The
        masks themselves are dropped: the final ones are upscaled again (:meth:`_final_runs`).

        Returns tensors ``boxes (K', 4)`` crop-frame xyxy, ``stability`` and ``index`` (of each kept mask in
        ``low_res``).
        """
        chunk = self._upscale_chunk(low_res.device, crop_size)
        height, width = image_size
        parts: dict[str, list[torch.Tensor]] = {"boxes": [], "stability": [], "index": []}
        for first in range(0, low_res.shape[0], chunk):
            low = low_res[first : first + chunk]
            logits = self.model.upscale(low[:, None], crop_size)[:, 0].float()
            window = self._window(low, crop_size)
            if window is not None:  # only pixels that can pass a threshold are compared and counted
                logits = logits[:, window[0], window[1]]
            stability = calculate_stability_score(
                logits, self.model.mask_threshold, self.stability_score_offset
            )
            masks = logits > self.model.mask_threshold
            del logits
            index = torch.arange(first, first + masks.shape[0], device=masks.device)
            if self.stability_score_thresh > 0.0:
                keep = stability >= self.stability_score_thresh
                masks, stability, index = masks[keep], stability[keep], index[keep]
            boxes = _boxes_in_window(masks, window)
            keep = ~is_box_near_crop_edge(boxes, list(crop_box), [0, 0, width, height])
            if not bool(keep.all()):
                boxes, stability, index = boxes[keep], stability[keep], index[keep]
            for key, value in zip(parts, (boxes, stability, index)):
                parts[key].append(value)
        if not parts["index"]:  # no prompt passed the predicted-IoU filter
            empty = torch.zeros(0, dtype=torch.int64, device=low_res.device)
            return {"boxes": empty.reshape(0, 4), "stability": empty.float(), "index": empty}
        return {key: torch.cat(values) for key, values in parts.items()}

    def _window(self, low_res: torch.Tensor, crop_size: tuple[int, int]) -> tuple[slice, slice] | None:
        """The part of the upscaled crop where any of these masks' logits can exceed the lowest threshold.

        A bilinear resize is a convex combination of neighbouring sources, so an output pixel can exceed a
        threshold only near a low-res cell that does (less a margin for rounding); the window covers those
        cells grown by two cells and the resizes' support. CPU only (it needs the window on the host), and
        only for the backends' known upscale geometry; ``None``: compare the whole crop.
        """
        if low_res.device.type != "cpu" or self._geometry is None or low_res.shape[0] == 0:
            return None
        threshold = self.model.mask_threshold
        lowest = min(
            threshold - self.stability_score_offset, threshold, threshold + self.stability_score_offset
        )
        margin = 1e-4 * (1.0 + float(low_res.abs().amax()))
        candidate = low_res > lowest - margin
        rows = torch.nonzero(candidate.any(2).any(0)).reshape(-1)
        cols = torch.nonzero(candidate.any(1).any(0)).reshape(-1)
        if rows.numel() == 0:
            return slice(0, 0), slice(0, 0)
        side = low_res.shape[-1]
        bounds = []
        for axis, (lo, hi) in enumerate(((rows[0], rows[-1]), (cols[0], cols[-1]))):
            out = int(crop_size[axis])
            stretch, support = self._stretch(crop_size, axis)
            per_cell = stretch * out / side  # output pixels per low-res cell
            start = max(0, math.floor((int(lo) - 2) * per_cell) - support)
            bounds.append(slice(start, min(out, math.ceil((int(hi) + 3) * per_cell) + support)))
        return bounds[0], bounds[1]

    def _stretch(self, crop_size: tuple[int, int], axis: int) -> tuple[float, int]:
        """``(stretch, support)`` of the upscale along ``axis`` (0: rows, 1: columns) of the crop.

        ``stretch``: the padded square's side over the crop's resized side (1 for SAM 2's plain resize);
        ``support``: output pixels the resizes' 2-tap support can reach beyond that.
        """
        if self._geometry == "square":
            return 1.0, 3
        resized = preprocess_shape(crop_size, self.model.input_size)[axis]
        return self.model.input_size / resized, 2 + math.ceil(int(crop_size[axis]) / resized)

    def _upscale_chunk(self, device: torch.device, crop_size: tuple[int, int]) -> int:
        """Masks upscaled at once to a crop of ``crop_size`` (the intermediate square counted too)."""
        per_mask = int(crop_size[0]) * int(crop_size[1]) + self.model.input_size**2
        budget = _UPSCALE_BUDGET_CUDA if device.type == "cuda" else _UPSCALE_BUDGET_CPU
        return max(1, budget // per_mask)

    def _crop_runs(self, low_res: torch.Tensor, crop_box: list[int], image_size: tuple[int, int]) -> MaskRuns:
        """Runs, in the image frame, of the masks of ``(K, L, L)`` logits of one crop (upscaled again)."""
        x0, y0, x1, y1 = crop_box
        crop_size = (y1 - y0, x1 - x0)
        chunk = self._upscale_chunk(low_res.device, crop_size)
        parts = [MaskRuns(*(np.zeros(0, np.int64),) * 3, 0, crop_size)]
        for first in range(0, low_res.shape[0], chunk):
            logits = self.model.upscale(low_res[first : first + chunk, None], crop_size)[:, 0]
            parts.append(runs_from_dense(logits.float() > self.model.mask_threshold))
        return uncrop_runs(concat_runs(parts), crop_box, image_size)

    def _merge_crops(
        self, crops: list[_CropMasks], image_size: tuple[int, int], several: bool
    ) -> GeneratedMasks:
        """Concatenate the crops' masks and, with several crops, drop duplicates between crops (NMS)."""
        boxes = torch.cat([c.boxes for c in crops])
        crop_xyxy = np.concatenate(
            [np.tile(np.asarray(c.crop_box, np.int64), (len(c.iou), 1)) for c in crops]
        ).reshape(-1, 4)
        order = np.arange(len(boxes))
        if several:  # prefer masks from smaller crops, as the reference
            scores = (1 / box_area(torch.from_numpy(crop_xyxy))).to(boxes.device)
            keep = batched_nms(
                boxes.float(), scores, torch.zeros_like(scores), iou_threshold=self.crop_nms_thresh
            )
            order = keep.cpu().numpy()
        runs = self._final_runs(crops, order, image_size)
        crop_xywh = crop_xyxy[order].copy()
        crop_xywh[:, 2:] -= crop_xywh[:, :2]
        return GeneratedMasks(
            runs=runs,
            predicted_iou=np.concatenate([c.iou for c in crops])[order].astype(np.float32),
            stability_score=np.concatenate([c.stability for c in crops])[order].astype(np.float32),
            point_coords=np.concatenate([c.points for c in crops]).reshape(-1, 2)[order],
            crop_box=crop_xywh,
            boxes_xyxy=boxes.cpu().numpy().astype(np.int64)[order],
            area=runs.areas(),
            image_size=image_size,
            points_per_batch_used=self._batch_size,
        )

    def _final_runs(
        self, crops: list[_CropMasks], order: np.ndarray, image_size: tuple[int, int]
    ) -> MaskRuns:
        """Runs of masks ``order`` of the crops' concatenated masks, in that order, upscaling only those."""
        sizes = np.array([len(c.iou) for c in crops], dtype=np.int64)
        first = np.cumsum(sizes) - sizes
        ascending = np.sort(order)
        crop_of = np.searchsorted(first, ascending, side="right") - 1
        parts = [MaskRuns(*(np.zeros(0, np.int64),) * 3, 0, image_size)]
        for i in np.unique(crop_of):
            rows = torch.as_tensor(ascending[crop_of == i] - first[i], device=crops[i].low_res.device)
            parts.append(self._crop_runs(crops[i].low_res[rows], crops[i].crop_box, image_size))
        return take_runs(concat_runs(parts), np.searchsorted(ascending, order))

    def _remove_small_regions(self, result: GeneratedMasks) -> GeneratedMasks:
        """Fill small holes and remove small islands of every mask, then NMS preferring unchanged masks.

        As ``SamAutomaticMaskGenerator.postprocess_small_regions``; on the host with OpenCV, one mask at a time
        (expanded from runs a few at a time), keeping the runs of unchanged masks as they are.
        """
        if len(result) == 0:
            return result
        boxes = result.boxes_xyxy.copy()
        unchanged = np.ones(len(result), dtype=bool)
        new_runs: dict[int, MaskRuns] = {}
        for first in range(0, len(result), _DENSE_CHUNK):
            rows = np.arange(first, min(first + _DENSE_CHUNK, len(result)))
            for k, dense in zip(rows, take_runs(result.runs, rows).to_dense()):
                mask, holes = remove_small_regions(dense, self.min_mask_region_area, mode="holes")
                mask, islands = remove_small_regions(mask, self.min_mask_region_area, mode="islands")
                if holes or islands:
                    unchanged[k] = False
                    mask_tensor = torch.from_numpy(np.ascontiguousarray(mask))[None]
                    boxes[k] = batched_mask_to_box(mask_tensor)[0].numpy()
                    new_runs[int(k)] = runs_from_dense(mask_tensor)
        scores = torch.from_numpy(unchanged.astype(np.float32))
        threshold = max(self.box_nms_thresh, self.crop_nms_thresh)
        boxes_t = torch.from_numpy(boxes).float()
        keep = batched_nms(boxes_t, scores, torch.zeros_like(scores), iou_threshold=threshold).numpy()
        changed = sorted(new_runs)  # runs of all masks, then of the changed ones: pick each kept mask's
        position = {k: len(result) + j for j, k in enumerate(changed)}
        source = np.array([position.get(int(i), int(i)) for i in keep], dtype=np.int64)
        runs = take_runs(concat_runs([result.runs, *(new_runs[k] for k in changed)]), source)
        return GeneratedMasks(
            runs=runs,
            predicted_iou=result.predicted_iou[keep],
            stability_score=result.stability_score[keep],
            point_coords=result.point_coords[keep],
            crop_box=result.crop_box[keep],
            boxes_xyxy=boxes[keep],
            area=runs.areas(),
            image_size=result.image_size,
            points_per_batch_used=result.points_per_batch_used,
        )


def _boxes_in_window(masks: torch.Tensor, window: tuple[slice, slice] | None) -> torch.Tensor:
    """``(K, 4)`` int64 xyxy boxes of masks cut to ``window``, in the crop frame (empty masks: zeros)."""
    boxes = batched_mask_to_box(masks).to(torch.int64)
    if window is None:
        return boxes
    offset = torch.tensor([[window[1].start, window[0].start] * 2], dtype=torch.int64, device=boxes.device)
    return boxes + offset * masks.any(-1).any(-1)[:, None]


def _upscale_geometry(model: PromptableModel) -> str | None:
    """``"padded"`` (resize to the padded square, crop, resize), ``"square"`` (SAM 2: one resize) or ``None``."""
    upscale = type(model).upscale
    if upscale in (PromptableModel.upscale, SegmentAnythingBackend.upscale):
        return "padded"
    if upscale is TransformersSamBackend.upscale:
        return "square" if getattr(model, "kind", None) == "sam2" else "padded"
    return None


def _is_oom(err: BaseException) -> bool:
    """Whether ``err`` is an out-of-memory error (CUDA's own, or a RuntimeError saying so)."""
    return isinstance(err, torch.cuda.OutOfMemoryError) or "out of memory" in str(err).lower()


def _check_image(image: Any) -> np.ndarray:
    """Return ``image`` as a contiguous HxWx3 uint8 array, or raise ValueError."""
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        desc = f"{image.dtype} {image.shape}" if isinstance(image, np.ndarray) else type(image).__name__
        raise ValueError(f"image must be an HxWx3 uint8 numpy array, got {desc}")
    return np.ascontiguousarray(image)


def uncrop_runs(runs: MaskRuns, crop_box: Sequence[int], image_size: Sequence[int]) -> MaskRuns:
    """Return row-major runs of masks of the ``[x0, y0, x1, y1]`` crop as runs of the full ``(H, W)`` image.

    A crop narrower than the image breaks each run at its crop rows; a crop as wide as the image shifts them.
    """
    if runs.order != "C":
        raise ValueError("uncrop_runs needs row-major ('C') runs")
    x0, y0, x1, y1 = (int(v) for v in crop_box)
    height, width = int(image_size[0]), int(image_size[1])
    crop_w = x1 - x0
    if (runs.shape[0], runs.shape[1]) != (y1 - y0, crop_w):
        raise ValueError(f"runs of a {runs.shape} mask do not fit the crop {list(crop_box)}")
    if crop_w == width:
        return MaskRuns(
            runs.mask_index, runs.start + y0 * width, runs.length, runs.num_masks, (height, width)
        )
    first_row, last_row = runs.start // crop_w, (runs.end - 1) // crop_w
    pieces = last_row - first_row + 1
    run = np.repeat(np.arange(runs.start.size), pieces)
    row = first_row[run] + np.arange(run.size) - np.repeat(np.cumsum(pieces) - pieces, pieces)
    lo = np.where(row == first_row[run], runs.start[run] - row * crop_w, 0)
    hi = np.where(row == last_row[run], runs.end[run] - row * crop_w, crop_w)
    start = (row + y0) * width + x0 + lo
    return MaskRuns(runs.mask_index[run], start, hi - lo, runs.num_masks, (height, width))


def take_runs(runs: MaskRuns, masks: Sequence[int] | np.ndarray) -> MaskRuns:
    """Return the runs of masks ``masks`` (in that order, repeats allowed) as masks ``0 .. len(masks) - 1``."""
    masks = np.asarray(masks, dtype=np.int64).reshape(-1)
    counts = np.bincount(runs.mask_index, minlength=runs.num_masks)
    first = np.cumsum(counts) - counts
    taken = counts[masks]
    new_mask = np.repeat(np.arange(masks.size), taken)
    run = first[masks][new_mask] + np.arange(new_mask.size) - np.repeat(np.cumsum(taken) - taken, taken)
    return MaskRuns(new_mask, runs.start[run], runs.length[run], int(masks.size), runs.shape, runs.order)


def concat_runs(parts: Sequence[MaskRuns]) -> MaskRuns:
    """Return the masks of ``parts`` (same shape and order) one after the other."""
    if not parts:
        raise ValueError("concat_runs needs at least one MaskRuns")
    shapes = {(tuple(p.shape), p.order) for p in parts}
    if len(shapes) != 1:
        raise ValueError(f"runs of different shapes or orders cannot be concatenated: {sorted(shapes)}")
    offsets = np.cumsum([0] + [p.num_masks for p in parts])
    return MaskRuns(
        np.concatenate([p.mask_index + off for p, off in zip(parts, offsets)]).astype(np.int64),
        np.concatenate([p.start for p in parts]).astype(np.int64),
        np.concatenate([p.length for p in parts]).astype(np.int64),
        int(offsets[-1]),
        parts[0].shape,
        parts[0].order,
    )

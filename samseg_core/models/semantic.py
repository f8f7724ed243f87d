"""Semantic segmenters from transformers (SegFormer and Mask2Former/OneFormer families), full-size labels."""

from __future__ import annotations

import bisect
import inspect
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch

from samseg_core.models.device import autocast_context, resolve_device

# Model types whose outputs are per-query class logits and mask logits (MaskFormer family).
UNIVERSAL_MODEL_TYPES = frozenset({"mask2former", "maskformer", "oneformer"})
# Universal-segmentation models whose processors need a tokenizer for task inputs.
TASK_CONDITIONED_MODEL_TYPES = frozenset({"oneformer"})

ConfidenceMode = Literal["max", "softmax", "normalize"]


class SemanticModelNotFound(OSError):
    """Raised when a semantic model name is neither a local directory nor a reachable hub model."""


@dataclass
class SemanticPrediction:
    """One image's semantic segmentation.

    Attributes:
        labels: ``(H, W)`` int32 class ids at the original image size.
        confidence: ``(H, W)`` float16 probability of the predicted class, or None.
        probs_lowres: ``(C, h, w)`` float32 class probabilities at model resolution over the image region
            (padding removed), on CPU, or None.
    """

    labels: np.ndarray
    confidence: np.ndarray | None = None
    probs_lowres: torch.Tensor | None = None


def _interp_indices(out_size: int, extent: float, limit: int, device: torch.device):
    """Source indices and weights of bilinear, align_corners=False resampling (as in torch's CPU kernel)."""
    scale = torch.tensor(float(extent), dtype=torch.float32) / torch.tensor(
        float(out_size), dtype=torch.float32
    )
    dst = torch.arange(out_size, dtype=torch.float32, device=device)
    src = ((dst + 0.5) * scale.to(device) - 0.5).clamp_(min=0.0)
    i0 = src.floor().long().clamp_(max=limit - 1)
    w1 = (src - i0.to(torch.float32)).clamp_(0.0, 1.0)
    i1 = torch.where(i0 < limit - 1, i0 + 1, i0)
    return i0, i1, 1.0 - w1, w1


# Elements per tile on CPU, where a tile this size (8 MB) stays in cache while it is resampled and reduced:
# for 150 classes at 1024x2048, 2**20 to 2**22 were about equally fast, 2**23 1.3-1.6x slower. Other devices
# use max_elements.
_CPU_TILE_ELEMENTS = 2**21


def _row_bands(r0: list[int], r1: list[int], max_rows: int) -> list[tuple[int, int]]:
    """Bands ``(top, bottom)`` of at most ``max_rows`` output rows, each reading at most ``max(max_rows, 2)``
    source rows."""
    bands, top, out_h = [], 0, len(r0)
    while top < out_h:
        last_source = r0[top] + max(max_rows, 2) - 1
        bottom = min(top + max_rows, bisect.bisect_right(r1, last_source, lo=top))
        bottom = max(bottom, top + 1)
        bands.append((top, bottom))
        top = bottom
    return bands


def upsample_argmax(
    scores: torch.Tensor,
    out_hw: tuple[int, int],
    *,
    max_elements: int = 2**24,
    return_confidence: bool = False,
    confidence: ConfidenceMode = "max",
    source_extent: tuple[float, float] | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Return the argmax (and max) of bilinearly upsampled scores without building the full C x H x W tensor.

    Equivalent to ``F.interpolate(scores[None], out_hw, mode="bilinear", align_corners=False)[0].argmax(0)``
    up to float rounding (ties go to the lowest class index), computed one tile (a chunk of classes times a
    band of output rows) at a time, classes last: the band's source rows are resampled along the columns,
    then each output row is the weighted sum of its two source rows. The arithmetic is that of
    :func:`_upsample_argmax_reference` (same indices, weights and operation order), so the upsampled scores
    are bitwise the same; only sums over classes (softmax and normalize confidences) may round differently.

    Args:
        scores: ``(C, h, w)`` class scores (logits or probabilities).
        out_hw: Output ``(H, W)``.
        max_elements: Upper bound on the elements of each intermediate tensor (at least one class times one
            output row of two source rows, ``2 * W``, is always used).
        return_confidence: Whether to also return a per-pixel confidence.
        confidence: How the confidence is computed from the upsampled scores: ``"max"`` (max score),
            ``"softmax"`` (max softmax probability; for logits) or ``"normalize"`` (max score / sum of scores;
            for non-negative scores).
        source_extent: ``(height, width)`` in score pixels of the top-left region of ``scores`` that covers
            the output (may be fractional, e.g. when the input was padded); defaults to all of ``scores``.

    Returns:
        ``(labels, conf)``: ``(H, W)`` int64 labels and ``(H, W)`` float32 confidence (or None), on the
        device of ``scores``.
    """
    num_classes, out_h, out_w, ext_h, ext_w = _check_upsample_args(scores, out_hw, confidence, source_extent)
    device = scores.device
    labels = torch.empty((out_h, out_w), dtype=torch.long, device=device)
    conf = torch.empty((out_h, out_w), dtype=torch.float32, device=device) if return_confidence else None
    if out_h == 0 or out_w == 0:
        return labels, conf

    source = scores.float()[:, : math.ceil(ext_h), : math.ceil(ext_w)]
    r0, r1, rw0, rw1 = _interp_indices(out_h, ext_h, source.shape[1], device)
    c0, c1, cw0, cw1 = _interp_indices(out_w, ext_w, source.shape[2], device)
    rw0, rw1, cw0, cw1 = rw0[:, None, None], rw1[:, None, None], cw0[:, None], cw1[:, None]
    budget = min(max_elements, _CPU_TILE_ELEMENTS) if device.type == "cpu" else max_elements
    chunk = min(num_classes, max(1, budget // (2 * out_w)))
    first_rows, second_rows = r0.tolist(), r1.tolist()

    for top, bottom in _row_bands(first_rows, second_rows, max(1, budget // (chunk * out_w))):
        lo, hi = first_rows[top], second_rows[bottom - 1] + 1
        upper_rows, lower_rows = r0[top:bottom] - lo, r1[top:bottom] - lo
        best = band_labels = total = None
        for first in range(0, num_classes, chunk):
            # Classes last, so that every gather below copies runs of ``chunk`` floats: the band's source rows
            # (hi - lo, w, chunk) are resampled along the columns, then along the rows to (rows, W, chunk).
            rows = source[first : first + chunk, lo:hi].permute(1, 2, 0).contiguous()
            resampled = rows.index_select(1, c0).mul_(cw0).add_(rows.index_select(1, c1).mul_(cw1))
            del rows
            values = resampled.index_select(0, upper_rows).mul_(rw0[top:bottom])
            values.add_(resampled.index_select(0, lower_rows).mul_(rw1[top:bottom]))
            del resampled
            chunk_best, chunk_labels = values.max(dim=-1)
            chunk_total = None
            if conf is not None and confidence == "softmax":
                chunk_total = values.sub_(chunk_best[..., None]).exp_().sum(dim=-1)
            elif conf is not None and confidence == "normalize":
                chunk_total = values.sum(dim=-1)
            del values
            if best is None:
                best, band_labels, total = chunk_best, chunk_labels, chunk_total
                continue
            # Strict '>' keeps the earlier (lower) class on exact ties, as argmax over all classes does.
            band_labels = torch.where(chunk_best > best, chunk_labels + first, band_labels)
            merged = torch.maximum(best, chunk_best)
            if confidence == "softmax" and total is not None:  # sums of exp(score - max) rebased to merged
                total = total * torch.exp(best - merged) + chunk_total * torch.exp(chunk_best - merged)
            elif total is not None:
                total = total + chunk_total
            best = merged
        labels[top:bottom] = band_labels
        if conf is not None:
            if confidence == "softmax":
                conf[top:bottom] = 1.0 / total
            elif confidence == "normalize":
                conf[top:bottom] = best / total.clamp_min(torch.finfo(torch.float32).tiny)
            else:
                conf[top:bottom] = best
    return labels, conf


def _check_upsample_args(
    scores: torch.Tensor,
    out_hw: tuple[int, int],
    confidence: ConfidenceMode,
    source_extent: tuple[float, float] | None,
) -> tuple[int, int, int, float, float]:
    """Validate :func:`upsample_argmax`'s arguments; return ``(C, H, W, extent_h, extent_w)``."""
    if scores.ndim != 3:
        raise ValueError(f"scores must be (C, h, w), got shape {tuple(scores.shape)}")
    if confidence not in ("max", "softmax", "normalize"):
        raise ValueError(f"Unknown confidence mode {confidence!r}; use 'max', 'softmax' or 'normalize'")
    num_classes, h, w = scores.shape
    ext_h, ext_w = (float(h), float(w)) if source_extent is None else map(float, source_extent)
    if not (0 < ext_h <= h and 0 < ext_w <= w):
        raise ValueError(f"source_extent {source_extent} must lie within the score map {(h, w)}")
    return num_classes, int(out_hw[0]), int(out_hw[1]), ext_h, ext_w


def _upsample_argmax_reference(
    scores: torch.Tensor,
    out_hw: tuple[int, int],
    *,
    max_elements: int = 2**24,
    return_confidence: bool = False,
    confidence: ConfidenceMode = "max",
    source_extent: tuple[float, float] | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """:func:`upsample_argmax` by explicit gathers, all classes one band of rows at a time (slow, exact).

    The executable specification the tiled implementation is tested and benchmarked against; same arguments
    and results, except that ``max_elements`` bounds ``C * band_rows * W``.
    """
    num_classes, out_h, out_w, ext_h, ext_w = _check_upsample_args(scores, out_hw, confidence, source_extent)
    device = scores.device
    labels = torch.empty((out_h, out_w), dtype=torch.long, device=device)
    conf = torch.empty((out_h, out_w), dtype=torch.float32, device=device) if return_confidence else None
    if out_h == 0 or out_w == 0:
        return labels, conf

    scores = scores.float()
    row_limit, col_limit = math.ceil(ext_h), math.ceil(ext_w)
    r0, r1, rw0, rw1 = _interp_indices(out_h, ext_h, row_limit, device)
    c0, c1, cw0, cw1 = _interp_indices(out_w, ext_w, col_limit, device)
    band = max(1, min(out_h, max_elements // max(1, num_classes * out_w)))

    for top in range(0, out_h, band):
        rows = slice(top, min(top + band, out_h))
        upper = scores[:, r0[rows], :]
        lower = scores[:, r1[rows], :]
        upper = upper[:, :, c0] * cw0 + upper[:, :, c1] * cw1
        lower = lower[:, :, c0] * cw0 + lower[:, :, c1] * cw1
        values = upper * rw0[rows, None] + lower * rw1[rows, None]
        del upper, lower
        best, labels[rows] = values.max(dim=0)
        if conf is not None:
            if confidence == "softmax":
                conf[rows] = 1.0 / torch.exp(values - best).sum(dim=0)
            elif confidence == "normalize":
                conf[rows] = best / values.sum(dim=0).clamp_min(torch.finfo(torch.float32).tiny)
            else:
                conf[rows] = best
    return labels, conf


def _as_rgb_uint8(image: np.ndarray) -> np.ndarray:
    array = np.asarray(image)
    if array.ndim == 2:
        array = np.repeat(array[:, :, None], 3, axis=2)
    if array.ndim != 3 or array.shape[2] not in (3, 4):
        raise ValueError(f"Expected an HxWx3 RGB image, got shape {array.shape}")
    if array.dtype != np.uint8:
        raise ValueError(f"Expected a uint8 RGB image, got dtype {array.dtype}")
    return np.ascontiguousarray(array[:, :, :3])


def _image_processor_of(processor: Any) -> Any:
    return getattr(processor, "image_processor", processor)


class SemanticSegmenter:
    """A transformers segmentation model with its processor; predicts labels at the original image size."""

    def __init__(
        self,
        model: torch.nn.Module,
        processor: Any,
        *,
        device: str | torch.device | None = None,
        task: str = "semantic",
        max_elements: int = 2**24,
        autocast: bool = True,
    ):
        """Wrap a model and processor.

        Args:
            model: A transformers ``PreTrainedModel`` for semantic or universal segmentation.
            processor: Its image processor (or, for OneFormer, its ``OneFormerProcessor``).
            device: Device to run on; ``None`` picks CUDA when available.
            task: Task input for task-conditioned models (OneFormer).
            max_elements: Bound on intermediate tensor size when upsampling scores to full resolution.
            autocast: Whether to run in bfloat16 autocast on CUDA.
        """
        self.device = resolve_device(device)
        self.model = model.to(self.device).eval()
        self.processor = processor
        self.task = task
        self.max_elements = max_elements
        self.autocast = autocast
        config = model.config
        self.model_type: str = getattr(config, "model_type", "")
        self.is_universal = self.model_type in UNIVERSAL_MODEL_TYPES
        self.id2label: dict[int, str] = {int(k): str(v) for k, v in dict(config.id2label).items()}
        self.num_classes = len(self.id2label)
        self._forward_params = set(inspect.signature(model.forward).parameters)

    def _preprocess(self, images: list[np.ndarray]) -> tuple[dict[str, torch.Tensor], list[tuple[int, int]]]:
        """Process each image, then pad them into one batch; return the inputs and each valid input size."""
        kwargs: dict[str, Any] = {"return_tensors": "pt", "input_data_format": "channels_last"}
        if getattr(_image_processor_of(self.processor), "do_center_crop", False):
            kwargs["do_center_crop"] = False  # a crop would lose the image border we must label
        if self.model_type in TASK_CONDITIONED_MODEL_TYPES:
            kwargs["task_inputs"] = [self.task]

        pixel_values, valid, extras = [], [], {}
        for image in images:
            encoded = self.processor(images=[image], **kwargs)
            pv = encoded["pixel_values"]
            pixel_values.append(pv[0])
            mask = encoded.get("pixel_mask")
            if mask is not None:
                mask = mask[0].bool()
                valid.append((int(mask.any(dim=1).sum()), int(mask.any(dim=0).sum())))
            else:
                valid.append((int(pv.shape[-2]), int(pv.shape[-1])))
            for key, value in encoded.items():
                if key not in ("pixel_values", "pixel_mask") and isinstance(value, torch.Tensor):
                    extras.setdefault(key, []).append(value)

        pad_h = max(pv.shape[-2] for pv in pixel_values)
        pad_w = max(pv.shape[-1] for pv in pixel_values)
        batch = torch.zeros(
            (len(images), pixel_values[0].shape[0], pad_h, pad_w), dtype=pixel_values[0].dtype
        )
        pixel_mask = torch.zeros((len(images), pad_h, pad_w), dtype=torch.long)
        for i, (pv, (vh, vw)) in enumerate(zip(pixel_values, valid)):
            batch[i, :, : pv.shape[-2], : pv.shape[-1]] = pv
            pixel_mask[i, :vh, :vw] = 1
        inputs = {"pixel_values": batch}
        if "pixel_mask" in self._forward_params:
            inputs["pixel_mask"] = pixel_mask
        for key, values in extras.items():
            if key in self._forward_params:
                inputs[key] = torch.cat(values, dim=0)
        return inputs, valid

    def _scores(self, outputs: Any) -> tuple[torch.Tensor, ConfidenceMode]:
        """Return ``(B, C, h, w)`` float scores and how to turn them into probabilities."""
        if self.is_universal or hasattr(outputs, "class_queries_logits"):
            class_probs = outputs.class_queries_logits.float().softmax(dim=-1)[..., :-1]
            mask_probs = outputs.masks_queries_logits.float().sigmoid()
            # Same scores as transformers' post_process_semantic_segmentation, but at mask resolution.
            return torch.einsum("bqc,bqhw->bchw", class_probs, mask_probs), "normalize"
        return outputs.logits.float(), "softmax"

    def predict(
        self, images: Sequence[np.ndarray], *, return_confidence: bool = False
    ) -> list[SemanticPrediction]:
        """Segment RGB images in one forward pass.

        Args:
            images: ``HxWx3`` uint8 RGB arrays (sizes may differ).
            return_confidence: Also return the per-pixel confidence and the low-resolution probabilities.

        Returns:
            One :class:`SemanticPrediction` per image, labels at the image's original size.
        """
        rgb = [_as_rgb_uint8(image) for image in images]
        if not rgb:
            return []
        inputs, valid = self._preprocess(rgb)
        inputs = {k: v.to(self.device) for k, v in inputs.items()}
        with torch.inference_mode():
            with autocast_context(self.device, self.autocast):
                outputs = self.model(**inputs)
            # Outside autocast: einsum would run in bfloat16 and blur the argmax between close classes.
            scores, mode = self._scores(outputs)
            pad_h, pad_w = inputs["pixel_values"].shape[-2:]
            _, _, score_h, score_w = scores.shape
            predictions = []
            for i, image in enumerate(rgb):
                extent = (valid[i][0] * score_h / pad_h, valid[i][1] * score_w / pad_w)
                labels, conf = upsample_argmax(
                    scores[i],
                    image.shape[:2],
                    max_elements=self.max_elements,
                    return_confidence=return_confidence,
                    confidence=mode,
                    source_extent=extent,
                )
                prediction = SemanticPrediction(labels=labels.to(torch.int32).cpu().numpy())
                if return_confidence:
                    prediction.confidence = conf.to(torch.float16).cpu().numpy()
                    region = scores[i, :, : math.ceil(extent[0]), : math.ceil(extent[1])]
                    prediction.probs_lowres = _to_probabilities(region, mode).cpu()
                predictions.append(prediction)
        return predictions

    def __repr__(self) -> str:
        name = type(self.model).__name__
        return f"SemanticSegmenter({name}, num_classes={self.num_classes}, device={self.device})"


def _to_probabilities(scores: torch.Tensor, mode: ConfidenceMode) -> torch.Tensor:
    if mode == "softmax":
        return scores.softmax(dim=0)
    return scores / scores.sum(dim=0, keepdim=True).clamp_min(torch.finfo(torch.float32).tiny)


def default_image_processor(config: Any) -> Any:
    """Return the default-configured image processor for a transformers model config.

    Raises:
        ValueError: If transformers knows no image processor for the model type, or it needs a tokenizer.
    """
    import transformers
    from transformers.models.auto.image_processing_auto import IMAGE_PROCESSOR_MAPPING_NAMES

    model_type = getattr(config, "model_type", None)
    if model_type in TASK_CONDITIONED_MODEL_TYPES:
        raise ValueError(
            f"{model_type} needs its processor (image processor + tokenizer files); pass processor=... or a "
            "directory/hub id that contains them"
        )
    entry = IMAGE_PROCESSOR_MAPPING_NAMES.get(model_type)
    # transformers 5 maps backend -> class name; 4.x mapped to a (slow, fast) tuple.
    names = (
        list(entry.values())
        if isinstance(entry, dict)
        else [entry]
        if isinstance(entry, str)
        else entry or []
    )
    for name in names:
        cls = getattr(transformers, name, None) if name else None
        if cls is not None:
            return cls()
    raise ValueError(f"No default image processor known for model type {model_type!r}; pass processor=...")


def _from_pretrained_or_explain(loader: Any, name: str, **kwargs: Any) -> Any:
    try:
        return loader.from_pretrained(name, **kwargs)
    except (OSError, ValueError) as err:
        offline = os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0")
        raise SemanticModelNotFound(
            f"Cannot load {name!r}: it is not a local directory saved with save_pretrained, and the "
            f"Hugging Face hub {'is disabled (HF_HUB_OFFLINE=1)' if offline else 'could not provide it'}. "
            "Without internet, "
            "download the model elsewhere (or into the HF cache) and pass its local directory. "
            f"Cause: {type(err).__name__}: {err}"
        ) from err


def _resolve_processor(processor: Any, model_name: str | None, config: Any) -> Any:
    """Return ``processor`` if built, else load it by name or from the model's directory, else defaults."""
    import transformers

    if processor is not None and not isinstance(processor, str | os.PathLike):
        return processor
    model_type = getattr(config, "model_type", "")
    # OneFormer needs the full processor (its tokenizer encodes the task); others the image processor.
    loader = (
        transformers.AutoProcessor
        if model_type in TASK_CONDITIONED_MODEL_TYPES
        else transformers.AutoImageProcessor
    )
    if processor is not None:
        return _from_pretrained_or_explain(loader, os.fspath(processor))
    if model_name is not None:
        try:
            return loader.from_pretrained(model_name)
        except (OSError, ValueError):
            pass  # e.g. a directory saved without preprocessor_config.json
    return default_image_processor(config)


def load_semantic_model(
    model: str | os.PathLike | SemanticSegmenter | torch.nn.Module,
    *,
    processor: Any = None,
    device: str | torch.device | None = None,
    task: str = "semantic",
) -> SemanticSegmenter:
    """Return a :class:`SemanticSegmenter` for a hub id, a local directory, or a built model.

    Args:
        model: A hub id or a directory saved with ``save_pretrained`` (the config decides between
            ``AutoModelForSemanticSegmentation`` and ``AutoModelForUniversalSegmentation``), a built
            transformers model, or a ``SemanticSegmenter`` (returned as is, moved to ``device`` when given).
        processor: An image processor (or OneFormer processor), or a name/directory to load one from; by
            default it is loaded from the model's directory, or built with defaults for the model type.
        device: Device to run on; ``None`` picks CUDA when available.
        task: Task input for task-conditioned models (OneFormer).

    Raises:
        SemanticModelNotFound: If a name cannot be resolved locally or through the hub.
        ValueError: If the model is not a semantic/universal segmentation model or no processor can be built.
    """
    import transformers

    if isinstance(model, SemanticSegmenter):
        if device is not None:
            model.device = resolve_device(device)
            model.model.to(model.device)
        return model
    if isinstance(model, torch.nn.Module):
        config = getattr(model, "config", None)
        if config is None:
            raise ValueError(f"Expected a transformers model with a config, got {type(model).__name__}")
        processor = _resolve_processor(processor, None, config)
        return SemanticSegmenter(model, processor, device=device, task=task)

    name = os.fspath(model)
    config = _from_pretrained_or_explain(transformers.AutoConfig, name)
    model_type = config.model_type
    if model_type in UNIVERSAL_MODEL_TYPES:
        auto_cls = transformers.AutoModelForUniversalSegmentation
    elif type(config) in transformers.MODEL_FOR_SEMANTIC_SEGMENTATION_MAPPING:
        auto_cls = transformers.AutoModelForSemanticSegmentation
    else:
        raise ValueError(
            f"{name!r} is a {model_type!r} model, not a semantic segmentation model; supported: the "
            f"AutoModelForSemanticSegmentation families and {', '.join(sorted(UNIVERSAL_MODEL_TYPES))}"
        )
    built = _from_pretrained_or_explain(auto_cls, name)
    processor = _resolve_processor(processor, name, config)
    return SemanticSegmenter(built, processor, device=device, task=task)

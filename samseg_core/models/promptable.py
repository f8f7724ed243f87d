"""One promptable interface over SAM-family models: embed a batch of images once, decode many prompts.

Backends:

* :class:`SegmentAnythingBackend` wraps a ``segment_anything`` ``Sam`` (the original Meta package);
* :class:`TransformersSamBackend` wraps a transformers ``SamModel``, ``SamHQModel`` or ``Sam2Model`` with its
  processor.

Both take prompts in *original image pixel coordinates* and return low-resolution mask logits of side
``input_size // 4`` (256 for the released 1024-px models) plus the predicted IoU of each mask, on the
model's device. :func:`load_promptable` builds the right backend from a model object or a local
directory saved with ``save_pretrained``. This module imports no FiftyOne.
"""

from __future__ import annotations

import abc
import json
import os
import pathlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from samseg_core.models.device import resolve_device

__all__ = [
    "Decoded",
    "Embeddings",
    "PromptImage",
    "PromptableModel",
    "SegmentAnythingBackend",
    "TransformersSamBackend",
    "load_promptable",
    "load_transformers_sam",
    "preprocess_shape",
]

# config.json model_type -> (model class, processor class) in transformers
_TRANSFORMERS_KINDS = {
    "sam": ("SamModel", "SamProcessor"),
    "sam_hq": ("SamHQModel", "SamHQProcessor"),
    "sam2": ("Sam2Model", "Sam2Processor"),
}
_MODEL_KINDS = {model: kind for kind, (model, _) in _TRANSFORMERS_KINDS.items()}


@dataclass
class Embeddings:
    """Image embeddings of a batch, kept on the model's device.

    Attributes:
        features: ``(N, C, h, w)`` image embeddings, one row per image.
        original_sizes: ``(H, W)`` of each image as given to ``embed``.
        input_sizes: ``(h, w)`` of each image after the longest-side resize (before padding).
        extras: Backend-specific per-image tensors, batch-first (SAM-HQ: the intermediate ViT features;
            SAM 2: the higher-resolution feature maps, finest first).
    """

    features: torch.Tensor
    original_sizes: list[tuple[int, int]]
    input_sizes: list[tuple[int, int]]
    extras: list[torch.Tensor] = field(default_factory=list)

    def __len__(self) -> int:
        """Number of embedded images."""
        return len(self.original_sizes)

    def select(self, index: int) -> Embeddings:
        """The embeddings of image ``index`` alone (views of this batch's tensors)."""
        return Embeddings(
            self.features[index : index + 1],
            [self.original_sizes[index]],
            [self.input_sizes[index]],
            [t[index : index + 1] for t in self.extras],
        )

    def float(self) -> Embeddings:
        """These embeddings in float32 (after an autocast encoder pass)."""
        return Embeddings(
            self.features.float(),
            list(self.original_sizes),
            list(self.input_sizes),
            [t.float() for t in self.extras],
        )


@dataclass
class Decoded:
    """Output of :meth:`PromptableModel.decode` for ``B`` prompts on one image.

    Attributes:
        low_res_logits: ``(B, M, L, L)`` mask logits, ``L = input_size // 4``; ``M`` is 3 or 1.
        iou_predictions: ``(B, M)`` predicted IoU of each mask.
    """

    low_res_logits: torch.Tensor
    iou_predictions: torch.Tensor


def preprocess_shape(image_size: Sequence[int], input_size: int) -> tuple[int, int]:
    """Return ``(h, w)`` of an ``(H, W)`` image resized so its longest side is ``input_size``.

    The same rounding as ``segment_anything``'s ``ResizeLongestSide`` and transformers' ``SamImageProcessor``.
    """
    old_h, old_w = int(image_size[0]), int(image_size[1])
    scale = input_size * 1.0 / max(old_h, old_w)
    return int(old_h * scale + 0.5), int(old_w * scale + 0.5)


def _check_image(image: Any) -> np.ndarray:
    """Return ``image`` as a contiguous HxWx3 uint8 array, or raise ValueError."""
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        desc = f"{image.dtype} {image.shape}" if isinstance(image, np.ndarray) else type(image).__name__
        raise ValueError(f"images must be HxWx3 uint8 numpy arrays, got {desc}")
    return np.ascontiguousarray(image)


class PromptableModel(abc.ABC):
    """A SAM-family model behind one interface: ``embed`` images once, ``decode`` prompts per image.

    Attributes:
        input_size: Longest side images are resized to (1024 for the released models).
        mask_threshold: Logit above which a pixel is in the mask.
        device: The torch device the model and every returned tensor live on.
    """

    input_size: int
    mask_threshold: float
    device: torch.device
    #: Whether images are resized by their longest side and padded to the square (SAM, SAM-HQ); SAM 2
    #: resizes to the square itself, which changes where a low-res mask input lies on the image.
    pads_input: bool = True

    @property
    def low_res_size(self) -> int:
        """Side of the low-resolution logits and of ``mask_inputs`` (``input_size // 4``)."""
        return self.input_size // 4

    @abc.abstractmethod
    def to(self, device: str | torch.device) -> PromptableModel:
        """Move the wrapped model to ``device``; returns ``self``."""

    @abc.abstractmethod
    def embed(self, images: Sequence[np.ndarray]) -> Embeddings:
        """Encode a batch of HxWx3 uint8 RGB images; the embeddings stay on :attr:`device`."""

    @abc.abstractmethod
    def decode(
        self,
        embeddings: Embeddings,
        index: int,
        points: torch.Tensor | None = None,
        point_labels: torch.Tensor | None = None,
        boxes: torch.Tensor | None = None,
        mask_inputs: torch.Tensor | None = None,
        multimask: bool = True,
    ) -> Decoded:
        """Decode ``B`` prompts on image ``index`` of ``embeddings``.

        Args:
            embeddings: Output of :meth:`embed`.
            index: Which image of the batch the prompts are for.
            points: ``(B, P, 2)`` xy points in original image pixels, or ``None``.
            point_labels: ``(B, P)`` labels (1 foreground, 0 background, -1 ignored); required with points.
            boxes: ``(B, 4)`` xyxy boxes in original image pixels, or ``None``.
            mask_inputs: ``(B, 1, L, L)`` low-res logits from an earlier decode, or ``None``.
            multimask: ``True`` returns 3 masks per prompt, ``False`` one.

        Returns:
            :class:`Decoded` with ``(B, M, L, L)`` logits and ``(B, M)`` IoU predictions on :attr:`device`.
        """

    def upscale(self, low_res_logits: torch.Tensor, image_size: Sequence[int]) -> torch.Tensor:
        """Upscale ``(B, M, L, L)`` low-res logits to ``(B, M, H, W)`` logits of an ``(H, W)`` image.

        As ``Sam.postprocess_masks``: resize to the padded input square, crop the padding, resize to the image.
        """
        h, w = preprocess_shape(image_size, self.input_size)
        logits = F.interpolate(
            low_res_logits, (self.input_size, self.input_size), mode="bilinear", align_corners=False
        )
        logits = logits[..., :h, :w]
        return F.interpolate(
            logits, (int(image_size[0]), int(image_size[1])), mode="bilinear", align_corners=False
        )

    def _prompts(
        self,
        embeddings: Embeddings,
        index: int,
        points: torch.Tensor | None,
        point_labels: torch.Tensor | None,
        boxes: torch.Tensor | None,
        mask_inputs: torch.Tensor | None,
    ) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
        """Validate prompts and move them to the device, with points and boxes in the resized input frame."""
        if not 0 <= index < len(embeddings):
            raise IndexError(f"index {index} is out of range for {len(embeddings)} embedded image(s)")
        if (points is None) != (point_labels is None):
            raise ValueError("points and point_labels must be given together")
        scale = _input_scale(embeddings.original_sizes[index], embeddings.input_sizes[index], self.device)
        batch: set[int] = set()
        if points is not None:
            points = torch.as_tensor(points, dtype=torch.float32, device=self.device)
            point_labels = torch.as_tensor(point_labels, device=self.device).to(torch.int64)
            if points.ndim != 3 or points.shape[2] != 2 or point_labels.shape != points.shape[:2]:
                raise ValueError(
                    f"points must be (B, P, 2) and point_labels (B, P), got {tuple(points.shape)}"
                )
            points = points * scale
            batch.add(points.shape[0])
        if boxes is not None:
            boxes = torch.as_tensor(boxes, dtype=torch.float32, device=self.device)
            if boxes.ndim != 2 or boxes.shape[1] != 4:
                raise ValueError(f"boxes must be (B, 4) xyxy, got {tuple(boxes.shape)}")
            boxes = boxes * scale.repeat(2)
            batch.add(boxes.shape[0])
        if mask_inputs is not None:
            mask_inputs = torch.as_tensor(mask_inputs, dtype=torch.float32, device=self.device)
            side = self.low_res_size
            if mask_inputs.ndim != 4 or tuple(mask_inputs.shape[1:]) != (1, side, side):
                raise ValueError(
                    f"mask_inputs must be (B, 1, {side}, {side}), got {tuple(mask_inputs.shape)}"
                )
            batch.add(mask_inputs.shape[0])
        if len(batch) > 1:
            raise ValueError(
                f"points, boxes and mask_inputs must share the batch size B, got {sorted(batch)}"
            )
        return points, point_labels, boxes, mask_inputs


@dataclass
class PromptImage:
    """One embedded image of a :class:`PromptableModel`, ready for prompts (what refinement prompts).

    Attributes:
        model: The model that embedded the image.
        embeddings: Its embeddings (a batch; ``index`` picks the image).
        index: The image's row in ``embeddings``.
    """

    model: PromptableModel
    embeddings: Embeddings
    index: int = 0

    @property
    def original_size(self) -> tuple[int, int]:
        """``(H, W)`` of the image."""
        return tuple(self.embeddings.original_sizes[self.index])

    @property
    def device(self) -> torch.device:
        """The model's device."""
        return self.model.device

    def decode(self, **prompts: Any) -> Decoded:
        """:meth:`PromptableModel.decode` on this image (prompts in original image pixels)."""
        return self.model.decode(self.embeddings, self.index, **prompts)

    def predict_logits(
        self,
        points: torch.Tensor | None = None,
        point_labels: torch.Tensor | None = None,
        boxes: torch.Tensor | None = None,
        mask_inputs: torch.Tensor | None = None,
        multimask: bool = True,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(B, M, H, W)`` mask logits at image resolution and ``(B, M)`` predicted IoU."""
        decoded = self.decode(
            points=points,
            point_labels=point_labels,
            boxes=boxes,
            mask_inputs=mask_inputs,
            multimask=multimask,
        )
        return self.model.upscale(decoded.low_res_logits, self.original_size), decoded.iou_predictions


def _input_scale(original: Sequence[int], resized: Sequence[int], device: torch.device) -> torch.Tensor:
    """Return the ``(sx, sy)`` factors mapping original image pixels to the resized input frame."""
    return torch.tensor(
        [resized[1] / original[1], resized[0] / original[0]], dtype=torch.float32, device=device
    )


class SegmentAnythingBackend(PromptableModel):
    """:class:`PromptableModel` over a ``segment_anything`` ``Sam``; matches ``SamPredictor`` numerically."""

    def __init__(self, sam: Any, device: str | torch.device | None = None) -> None:
        """Wrap ``sam`` (moved to ``device`` when given, else left where it is) in eval mode."""
        from segment_anything.utils.transforms import ResizeLongestSide

        if device is not None:
            sam = sam.to(resolve_device(device))
        self.sam = sam.eval()
        self.input_size = int(sam.image_encoder.img_size)
        self.mask_threshold = float(sam.mask_threshold)
        self.transform = ResizeLongestSide(self.input_size)

    @property
    def device(self) -> torch.device:  # type: ignore[override]
        """The device of the wrapped model."""
        return torch.device(self.sam.device)

    def to(self, device: str | torch.device) -> SegmentAnythingBackend:
        """Move the wrapped ``Sam`` to ``device``."""
        self.sam = self.sam.to(resolve_device(device))
        return self

    @torch.no_grad()
    def embed(self, images: Sequence[np.ndarray]) -> Embeddings:
        """Resize (``ResizeLongestSide``), normalise and pad (``sam.preprocess``) and encode a batch of images."""
        batch, original_sizes, input_sizes = [], [], []
        for image in images:
            image = _check_image(image)
            if self.sam.image_format != "RGB":
                image = image[..., ::-1]
            resized = torch.as_tensor(self.transform.apply_image(image), device=self.device)
            resized = resized.permute(2, 0, 1).contiguous()[None]
            original_sizes.append((int(image.shape[0]), int(image.shape[1])))
            input_sizes.append((int(resized.shape[-2]), int(resized.shape[-1])))
            batch.append(self.sam.preprocess(resized))
        if not batch:
            raise ValueError("embed needs at least one image")
        features = self.sam.image_encoder(torch.cat(batch, dim=0))
        return Embeddings(features, original_sizes, input_sizes)

    @torch.no_grad()
    def decode(
        self,
        embeddings: Embeddings,
        index: int,
        points: torch.Tensor | None = None,
        point_labels: torch.Tensor | None = None,
        boxes: torch.Tensor | None = None,
        mask_inputs: torch.Tensor | None = None,
        multimask: bool = True,
    ) -> Decoded:
        """Decode prompts as ``SamPredictor.predict_torch`` does (see :meth:`PromptableModel.decode`)."""
        points, point_labels, boxes, mask_inputs = self._prompts(
            embeddings, index, points, point_labels, boxes, mask_inputs
        )
        sparse, dense = self.sam.prompt_encoder(
            points=None if points is None else (points, point_labels.to(torch.int)),
            boxes=boxes,
            masks=mask_inputs,
        )
        low_res, iou = self.sam.mask_decoder(
            image_embeddings=embeddings.features[index : index + 1],
            image_pe=self.sam.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=multimask,
        )
        return Decoded(low_res, iou)

    def upscale(self, low_res_logits: torch.Tensor, image_size: Sequence[int]) -> torch.Tensor:
        """Upscale low-res logits to the image with ``sam.postprocess_masks`` (see :meth:`PromptableModel.upscale`)."""
        input_hw = preprocess_shape(image_size, self.input_size)
        return self.sam.postprocess_masks(low_res_logits, input_hw, (int(image_size[0]), int(image_size[1])))


class TransformersSamBackend(PromptableModel):
    """:class:`PromptableModel` over a transformers ``SamModel``, ``SamHQModel`` or ``Sam2Model`` and its processor.

    The ``B`` prompts of one image go in the image-batch dimension (point batch of 1), so that each prompt
    can carry its own mask input, as in ``segment_anything``. SAM and SAM-HQ resize the longest side and pad
    to a square; SAM 2 resizes to the square itself (no padding), so its ``input_sizes`` are the full square.

    Attributes:
        kind: ``"sam"``, ``"sam_hq"`` or ``"sam2"`` (the config ``model_type``).
    """

    def __init__(self, model: Any, processor: Any = None, device: str | torch.device | None = None) -> None:
        """Wrap ``model``; ``processor`` defaults to one sized from the model config.

        Raises:
            ValueError: ``model`` is not a supported class, or the processor's size differs from the model's.
        """
        kind = _MODEL_KINDS.get(type(model).__name__)
        if kind is None:
            raise ValueError(
                f"TransformersSamBackend supports {sorted(_MODEL_KINDS)}, got {type(model).__name__}"
            )
        if device is not None:
            model = model.to(resolve_device(device))
        self.model = model.eval()
        self.kind = kind
        self.input_size = int(model.config.prompt_encoder_config.image_size)
        self.processor = processor if processor is not None else _default_processor(kind, self.input_size)
        side = _processor_side(self.processor)
        if side != self.input_size:
            raise ValueError(f"processor resizes to {side} but the model expects {self.input_size}")
        self.mask_threshold = 0.0
        self.pads_input = kind != "sam2"

    @property
    def is_hq(self) -> bool:
        """Whether the model is SAM-HQ (its decoder also takes the intermediate ViT features)."""
        return self.kind == "sam_hq"

    @property
    def device(self) -> torch.device:  # type: ignore[override]
        """The device of the wrapped model."""
        return torch.device(self.model.device)

    def to(self, device: str | torch.device) -> TransformersSamBackend:
        """Move the wrapped model to ``device``."""
        self.model = self.model.to(resolve_device(device))
        return self

    @torch.no_grad()
    def embed(self, images: Sequence[np.ndarray]) -> Embeddings:
        """Preprocess with the processor and encode with ``model.get_image_embeddings``."""
        images = [_check_image(image) for image in images]
        if not images:
            raise ValueError("embed needs at least one image")
        inputs = self.processor(images=images, return_tensors="pt")
        pixel_values = inputs["pixel_values"].to(self.device, dtype=self.model.dtype)
        output = self.model.get_image_embeddings(pixel_values)
        if self.kind == "sam_hq":
            features, extras = output[0], list(output[1])
        elif self.kind == "sam2":  # feature pyramid, coarsest (the image embedding) last
            features, extras = output[-1], list(output[:-1])
        else:
            features, extras = output, []
        original_sizes = [(int(h), int(w)) for h, w in inputs["original_sizes"].tolist()]
        if self.kind == "sam2":
            input_sizes = [(self.input_size, self.input_size)] * len(images)
        else:
            input_sizes = [(int(h), int(w)) for h, w in inputs["reshaped_input_sizes"].tolist()]
        return Embeddings(features, original_sizes, input_sizes, extras)

    @torch.no_grad()
    def decode(
        self,
        embeddings: Embeddings,
        index: int,
        points: torch.Tensor | None = None,
        point_labels: torch.Tensor | None = None,
        boxes: torch.Tensor | None = None,
        mask_inputs: torch.Tensor | None = None,
        multimask: bool = True,
    ) -> Decoded:
        """Decode prompts through the model's forward with ``image_embeddings`` (see :meth:`PromptableModel.decode`)."""
        points, point_labels, boxes, mask_inputs = self._prompts(
            embeddings, index, points, point_labels, boxes, mask_inputs
        )
        sizes = [t.shape[0] for t in (points, boxes, mask_inputs) if t is not None]
        batch = sizes[0] if sizes else 1

        def per_prompt(t: torch.Tensor) -> torch.Tensor:
            """Row ``index`` of a batch-first tensor, repeated (as a view) for the ``batch`` prompts."""
            return t[index : index + 1].expand(batch, *t.shape[1:])

        kwargs: dict[str, Any] = {}
        image_embeddings: Any = per_prompt(embeddings.features)
        if self.kind == "sam_hq":
            kwargs["intermediate_embeddings"] = [per_prompt(t) for t in embeddings.extras]
        elif self.kind == "sam2":
            image_embeddings = [*(per_prompt(t) for t in embeddings.extras), image_embeddings]
        output = self.model(
            image_embeddings=image_embeddings,
            input_points=None if points is None else points[:, None],
            input_labels=None if point_labels is None else point_labels[:, None],
            input_boxes=None if boxes is None else boxes[:, None],
            input_masks=mask_inputs,
            multimask_output=multimask,
            **kwargs,
        )
        return Decoded(output.pred_masks[:, 0], output.iou_scores[:, 0])

    def upscale(self, low_res_logits: torch.Tensor, image_size: Sequence[int]) -> torch.Tensor:
        """Upscale low-res logits to the image (SAM 2: one resize, as there is no padding to crop)."""
        if self.kind != "sam2":
            return super().upscale(low_res_logits, image_size)
        size = (int(image_size[0]), int(image_size[1]))
        return F.interpolate(low_res_logits, size, mode="bilinear", align_corners=False)


def _processor_side(processor: Any) -> int | None:
    """Return the side a SAM-family processor resizes to (``longest_edge``, or the square's height)."""
    size = processor.image_processor.size
    get = size.get if isinstance(size, dict) else lambda key: getattr(size, key, None)
    return get("longest_edge") or get("height")


def _default_processor(kind: str, input_size: int) -> Any:
    """Return the processor of model ``kind`` resizing to ``input_size`` with the released defaults."""
    import transformers

    low = input_size // 4
    if kind == "sam2":
        image_processor = transformers.Sam2ImageProcessor(
            size={"height": input_size, "width": input_size}, mask_size={"height": low, "width": low}
        )
    else:
        image_processor = transformers.SamImageProcessor(
            size={"longest_edge": input_size},
            pad_size={"height": input_size, "width": input_size},
            mask_size={"longest_edge": low},
            mask_pad_size={"height": low, "width": low},
        )
    return getattr(transformers, _TRANSFORMERS_KINDS[kind][1])(image_processor)


def _model_type(spec: Any) -> str | None:
    """Return ``model_type`` from ``spec/config.json`` when ``spec`` is a local directory that has one."""
    if not isinstance(spec, (str, os.PathLike)):
        return None
    config = pathlib.Path(spec) / "config.json"
    if not config.is_file():
        return None
    try:
        return str(json.loads(config.read_text()).get("model_type"))
    except (OSError, ValueError, AttributeError):
        return None


def load_transformers_sam(source: str | os.PathLike, kind: str, device: Any) -> TransformersSamBackend:
    """Load a transformers SAM-family checkpoint (a ``save_pretrained`` directory or a hub id) of model type
    ``kind`` (``sam``, ``sam_hq``, ``sam2``) into a :class:`TransformersSamBackend` on ``device``.

    Raises:
        ValueError: ``kind`` is not a SAM-family model type.
    """
    import transformers

    if kind not in _TRANSFORMERS_KINDS:
        raise ValueError(
            f"{source} has model_type {kind!r}; samseg runs model types {sorted(_TRANSFORMERS_KINDS)}"
        )
    model_name, processor_name = _TRANSFORMERS_KINDS[kind]
    model = getattr(transformers, model_name).from_pretrained(source)
    try:
        processor = getattr(transformers, processor_name).from_pretrained(source)
    except (OSError, ValueError):
        processor = None  # no processor files saved: size one from the model config
    return TransformersSamBackend(model, processor, device=resolve_device(device))


def load_promptable(spec: Any, device: str | torch.device | None = None) -> PromptableModel:
    """Return a :class:`PromptableModel` for ``spec``.

    Args:
        spec: a built :class:`PromptableModel` (returned as is); a ``segment_anything`` ``Sam``; a
            transformers ``SamModel`` / ``SamHQModel`` / ``Sam2Model``; or a local directory whose
            ``config.json`` has ``model_type`` ``sam``, ``sam_hq`` or ``sam2`` (loaded with ``from_pretrained``).
        device: Where to put the model; ``None`` leaves a model object where it is and puts a loaded
            directory on CUDA when available, else the CPU.

    Raises:
        ValueError: ``spec`` is none of the above.
    """
    if isinstance(spec, PromptableModel):
        return spec
    if type(spec).__name__ == "Sam" and type(spec).__module__.startswith("segment_anything"):
        return SegmentAnythingBackend(spec, device=device)
    if type(spec).__module__.startswith("transformers.models.") and type(spec).__name__ in _MODEL_KINDS:
        return TransformersSamBackend(spec, device=device)
    kind = _model_type(spec)
    if kind in _TRANSFORMERS_KINDS:
        return load_transformers_sam(spec, kind, device)
    shown = repr(spec) if len(repr(spec)) <= 200 else f"{type(spec).__name__} object"
    if kind is not None:
        shown += f" (its config.json has model_type {kind!r})"
    raise ValueError(
        f"load_promptable cannot build a promptable model from {shown}: pass a PromptableModel, a "
        "segment_anything Sam, a transformers SamModel, SamHQModel or Sam2Model, or a local directory "
        "whose config.json has model_type 'sam', 'sam_hq' or 'sam2'"
    )

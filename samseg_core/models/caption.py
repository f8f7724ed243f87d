"""BLIP captioning (transformers) of image crops in batches."""

from __future__ import annotations

from typing import Any

import torch

from samseg_core.models.device import autocast_context, resolve_device
from samseg_core.models.pretrained import load_model_and_processor

DEFAULT_CAPTIONER = "Salesforce/blip-image-captioning-base"


def _size_of(image_processor: Any, default: int) -> int:
    size = getattr(image_processor, "size", None) or {}
    if not isinstance(size, dict):
        size = {k: getattr(size, k, None) for k in ("height", "width", "shortest_edge")}
    value = size.get("height") or size.get("shortest_edge") or default
    return int(value)


class Captioner:
    """A BLIP ``BlipForConditionalGeneration`` with its processor; captions ``(B, 3, S, S)`` crops in [0, 1].

    Normalisation with the processor's mean/std happens here; decoding is greedy (as BLIP's ``generate``
    default, which SSA used). ``calls`` counts ``generate`` calls.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        processor: Any,
        *,
        device: str | torch.device | None = None,
        batch_size: int = 32,
        max_new_tokens: int = 20,
        prompt: str | None = None,
        autocast: bool = True,
    ) -> None:
        """Wraps a built model.

        Args:
            model: a ``BlipForConditionalGeneration`` (or any model whose ``generate(pixel_values=...)``
                returns token ids).
            processor: its ``BlipProcessor`` (image processor + tokenizer).
            device: where to run; default CUDA when available.
            batch_size: crops per ``generate`` call.
            max_new_tokens: caption length limit.
            prompt: optional conditional-captioning prefix (e.g. ``"a photo of"``); it is removed from captions.
            autocast: bf16 autocast on CUDA.
        """
        self.device = resolve_device(device)
        self.model = model.to(self.device).eval()
        self.processor = processor
        image_processor = getattr(processor, "image_processor", processor)
        self.image_size = _size_of(image_processor, 384)
        mean = getattr(image_processor, "image_mean", None) or (0.48145466, 0.4578275, 0.40821073)
        std = getattr(image_processor, "image_std", None) or (0.26862954, 0.26130258, 0.27577711)
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
        self.batch_size = int(batch_size)
        self.max_new_tokens = int(max_new_tokens)
        self.prompt = prompt
        self.autocast = autocast
        self.calls = 0

    def caption(self, crops: torch.Tensor) -> list[str]:
        """Returns one caption per ``(3, S, S)`` crop (float RGB in [0, 1], resized to :attr:`image_size`)."""
        captions: list[str] = []
        tokenizer = getattr(self.processor, "tokenizer", self.processor)
        with torch.inference_mode(), autocast_context(self.device, self.autocast):
            for start in range(0, len(crops), self.batch_size):
                chunk = crops[start : start + self.batch_size].to(self.device, torch.float32)
                pixel_values = (chunk - self.mean.to(self.device)) / self.std.to(self.device)
                kwargs: dict[str, Any] = {"pixel_values": pixel_values, "max_new_tokens": self.max_new_tokens}
                if self.prompt:
                    ids = tokenizer([self.prompt] * len(chunk), return_tensors="pt")
                    kwargs["input_ids"] = ids["input_ids"].to(self.device)
                self.calls += 1
                tokens = self.model.generate(**kwargs)
                texts = tokenizer.batch_decode(tokens, skip_special_tokens=True)
                captions.extend(self._strip_prompt(t) for t in texts)
        return captions

    def _strip_prompt(self, text: str) -> str:
        text = " ".join(text.split())
        if self.prompt and text.lower().startswith(self.prompt.lower()):
            text = text[len(self.prompt) :].strip()
        return text

    def __repr__(self) -> str:
        return f"Captioner({type(self.model).__name__}, image_size={self.image_size}, device={self.device})"


def load_captioner(
    model: Any = DEFAULT_CAPTIONER,
    *,
    processor: Any = None,
    device: str | torch.device | None = None,
    batch_size: int = 32,
    max_new_tokens: int = 20,
) -> Captioner:
    """Returns a :class:`Captioner` for a hub id, a local directory, or a built model.

    Args:
        model: a hub id (``"Salesforce/blip-image-captioning-large"``), a directory saved with
            ``save_pretrained`` (model and processor), a built ``BlipForConditionalGeneration``, a
            ``(model, processor)`` tuple, or a ``Captioner`` (returned as is).
        processor: the ``BlipProcessor`` of a built model, or a name/directory to load it from; default: the
            model's own directory / hub id.
        device: where to run; default CUDA when available.
        batch_size: crops per ``generate`` call.
        max_new_tokens: caption length limit.
    """
    from transformers import BlipForConditionalGeneration, BlipProcessor

    if isinstance(model, Captioner):
        return model
    model, processor = load_model_and_processor(
        model,
        processor,
        model_class=BlipForConditionalGeneration,
        processor_class=BlipProcessor,
        what="BLIP captioner",
    )
    return Captioner(model, processor, device=device, batch_size=batch_size, max_new_tokens=max_new_tokens)

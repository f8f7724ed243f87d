"""CLIPSeg (transformers) scoring many (crop, class name) pairs per forward pass."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from samseg_core.models.device import autocast_context, resolve_device
from samseg_core.models.pretrained import load_model_and_processor

DEFAULT_CLIPSEG = "CIDAS/clipseg-rd64-refined"


class ClipSegScorer:
    """A ``CLIPSegForImageSegmentation`` with its processor.

    :meth:`pair_logits` takes crops and (crop index, class name) pairs: each crop goes through the CLIP vision
    tower once, each distinct class name through the text tower once per run (cached), and the light decoder
    runs on all pairs in batches — the same logits as the model's own forward on (crop, text) pairs, without
    recomputing the vision tower per text. Counters: ``vision_calls``, ``decoder_calls``, ``text_calls``.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        processor: Any,
        *,
        device: str | torch.device | None = None,
        batch_size: int = 32,
        autocast: bool = True,
    ) -> None:
        """Wraps a built model.

        Args:
            model: a ``CLIPSegForImageSegmentation``.
            processor: its ``CLIPSegProcessor`` (image processor + CLIP tokenizer).
            device: where to run; default CUDA when available.
            batch_size: crops (vision tower) and pairs (decoder) per forward pass.
            autocast: bf16 autocast on CUDA.
        """
        self.device = resolve_device(device)
        self.model = model.to(self.device).eval()
        self.processor = processor
        image_processor = getattr(processor, "image_processor", processor)
        size = getattr(image_processor, "size", None) or {}
        size = size if isinstance(size, dict) else {"height": getattr(size, "height", None)}
        self.image_size = int(size.get("height") or size.get("shortest_edge") or 352)
        mean = getattr(image_processor, "image_mean", None) or (0.485, 0.456, 0.406)
        std = getattr(image_processor, "image_std", None) or (0.229, 0.224, 0.225)
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
        self.batch_size = int(batch_size)
        self.autocast = autocast
        self._text_cache: dict[str, torch.Tensor] = {}
        self.vision_calls = 0
        self.decoder_calls = 0
        self.text_calls = 0

    def clear_cache(self) -> None:
        """Forgets cached text embeddings."""
        self._text_cache.clear()

    def text_embeddings(self, names: Sequence[str]) -> torch.Tensor:
        """Returns ``(N, projection_dim)`` conditional embeddings of class names (cached per name)."""
        missing = list(dict.fromkeys(n for n in names if n not in self._text_cache))
        tokenizer = getattr(self.processor, "tokenizer", self.processor)
        with torch.inference_mode(), autocast_context(self.device, self.autocast):
            for start in range(0, len(missing), self.batch_size):
                chunk = missing[start : start + self.batch_size]
                tokens = tokenizer(chunk, padding=True, return_tensors="pt").to(self.device)
                self.text_calls += 1
                out = self.model.clip.get_text_features(
                    input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"]
                )
                feats = getattr(out, "pooler_output", out).float()  # transformers 5 returns an output object
                self._text_cache.update(zip(chunk, feats))
        if not names:
            return torch.zeros((0, self.model.config.projection_dim), device=self.device)
        return torch.stack([self._text_cache[n] for n in names])

    def _activations(self, pixel_values: torch.Tensor) -> list[torch.Tensor]:
        self.vision_calls += 1
        out = self.model.clip.vision_model(
            pixel_values=pixel_values, output_hidden_states=True, interpolate_pos_encoding=True
        )
        # hidden_states[0] is the patch embedding; layer i's output is hidden_states[i + 1] (as in the model)
        return [out.hidden_states[i + 1] for i in self.model.extract_layers]

    def pair_logits(
        self, crops: torch.Tensor, crop_index: torch.Tensor, names: Sequence[str]
    ) -> torch.Tensor:
        """Returns ``(P, h, w)`` float32 logits, one map per (crop, name) pair, at the model's output size.

        Args:
            crops: ``(B, 3, S, S)`` float RGB in [0, 1] at :attr:`image_size`.
            crop_index: ``(P,)`` index into ``crops`` of each pair.
            names: ``P`` class names.
        """
        if len(crop_index) != len(names):
            raise ValueError(f"{len(crop_index)} pair crops but {len(names)} pair names")
        if len(names) == 0:
            return torch.zeros((0, self.image_size, self.image_size), device=self.device)
        text = self.text_embeddings(names)
        crop_index = torch.as_tensor(crop_index, dtype=torch.long, device=self.device)
        used = torch.unique(crop_index)
        position = torch.full((len(crops),), -1, dtype=torch.long, device=self.device)
        position[used] = torch.arange(len(used), device=self.device)
        logits = []
        with torch.inference_mode(), autocast_context(self.device, self.autocast):
            layers: list[list[torch.Tensor]] = []
            for start in range(0, len(used), self.batch_size):
                chunk = crops[used[start : start + self.batch_size].cpu()].to(self.device, torch.float32)
                chunk = (chunk - self.mean.to(self.device)) / self.std.to(self.device)
                layers.append(self._activations(chunk))
            activations = [torch.cat(parts) for parts in zip(*layers)]
            pair_rows = position[crop_index]
            for start in range(0, len(names), self.batch_size):
                rows = pair_rows[start : start + self.batch_size]
                self.decoder_calls += 1
                out = self.model.decoder(
                    [a[rows] for a in activations], text[start : start + self.batch_size]
                )
                logits.append(out.logits.float().reshape(len(rows), *out.logits.shape[-2:]))
        return torch.cat(logits)

    def __repr__(self) -> str:
        return (
            f"ClipSegScorer({type(self.model).__name__}, image_size={self.image_size}, device={self.device})"
        )


def load_clipseg(
    model: Any = DEFAULT_CLIPSEG,
    *,
    processor: Any = None,
    device: str | torch.device | None = None,
    batch_size: int = 32,
) -> ClipSegScorer:
    """Returns a :class:`ClipSegScorer` for a hub id, a local directory, or a built model.

    Args:
        model: a hub id (``"CIDAS/clipseg-rd64-refined"``), a directory saved with ``save_pretrained`` (model
            and processor), a built ``CLIPSegForImageSegmentation``, a ``(model, processor)`` tuple, or a
            ``ClipSegScorer`` (returned as is).
        processor: the ``CLIPSegProcessor`` of a built model, or a name/directory to load it from.
        device: where to run; default CUDA when available.
        batch_size: crops and pairs per forward pass.
    """
    from transformers import CLIPSegForImageSegmentation, CLIPSegProcessor

    if isinstance(model, ClipSegScorer):
        return model
    model, processor = load_model_and_processor(
        model,
        processor,
        model_class=CLIPSegForImageSegmentation,
        processor_class=CLIPSegProcessor,
        what="CLIPSeg",
    )
    return ClipSegScorer(model, processor, device=device, batch_size=batch_size)

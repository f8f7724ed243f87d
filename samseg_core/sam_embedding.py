"""SAM-family image embeddings computed once per image and shared by every stage of a run.

The image encoder is SAM's expensive part (vit_h: ~0.45 s per image on an A100); the prompt decoder is cheap.
:class:`EmbeddingCache` runs the encoder of any :class:`~samseg_core.models.promptable.PromptableModel`
(``segment_anything``, transformers SAM / SAM-HQ / SAM 2) on batches of images and hands the embeddings to
refinement, the prompt study, the automatic mask generator and the engine without recomputing them.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from samseg_core.models.device import autocast_context
from samseg_core.models.promptable import Embeddings, PromptableModel, PromptImage, load_promptable


@dataclass
class ImageEmbedding:
    """One image's embeddings as its model made them (``embeddings`` holds this image alone)."""

    embeddings: Embeddings

    @property
    def features(self) -> torch.Tensor:
        """``(1, C, h, w)`` image embedding on the model's device."""
        return self.embeddings.features

    @property
    def input_size(self) -> tuple[int, int]:
        """Image size after the model's resize, before any padding."""
        return tuple(self.embeddings.input_sizes[0])

    @property
    def original_size(self) -> tuple[int, int]:
        """``(H, W)`` of the image given."""
        return tuple(self.embeddings.original_sizes[0])


class EmbeddingCache:
    """An LRU cache of SAM-family image embeddings keyed by a caller-chosen key (e.g. the sample id).

    Args:
        sam: the model whose encoder computes the embeddings: a ``PromptableModel`` or anything
            :func:`~samseg_core.models.promptable.load_promptable` accepts (a ``segment_anything`` ``Sam``, a
            transformers ``SamModel`` / ``SamHQModel`` / ``Sam2Model``). Names and paths go through
            :func:`~samseg_core.models.sam_family.load_sam_family` first.
        max_items: embeddings kept (vit_h: 256x64x64 floats = 4 MB each).
        encoder_batch_size: images per encoder forward pass in :meth:`get_many`.
    """

    def __init__(self, sam: Any, max_items: int = 64, encoder_batch_size: int = 4) -> None:
        self.sam = sam
        self.model: PromptableModel = sam if isinstance(sam, PromptableModel) else load_promptable(sam)
        self.max_items = max_items
        self.encoder_batch_size = encoder_batch_size
        self.encoder_calls = 0  # images encoded (cache misses), for tests and benchmarks
        self._items: OrderedDict[str, ImageEmbedding] = OrderedDict()

    @property
    def device(self) -> torch.device:
        """The model's device."""
        return self.model.device

    def owns(self, sam: Any) -> bool:
        """Whether ``sam`` is this cache's model (as given, or its promptable wrapper)."""
        return sam is self.sam or sam is self.model

    def __contains__(self, key: str) -> bool:
        return key in self._items

    def get(self, key: str, image: np.ndarray) -> ImageEmbedding:
        """Returns the embedding of ``image`` (RGB uint8 HxWx3), computing it on a cache miss."""
        return self.get_many([key], [image])[0]

    def get_many(self, keys: Sequence[str], images: Sequence[np.ndarray]) -> list[ImageEmbedding]:
        """Returns embeddings for several images, encoding the missing ones in batches."""
        missing = [i for i, key in enumerate(keys) if key not in self._items]
        for start in range(0, len(missing), self.encoder_batch_size):
            chunk = missing[start : start + self.encoder_batch_size]
            for i, emb in zip(chunk, self._encode([images[i] for i in chunk])):
                self._put(keys[i], emb)
        out = []
        for key in keys:
            self._items.move_to_end(key)
            out.append(self._items[key])
        return out

    def prompt_image(self, key: str, image: np.ndarray) -> PromptImage:
        """Returns ``image`` ready for prompts, from the cached embedding (no encoder call on a hit)."""
        return prompt_image(self.model, self.get(key, image))

    def _put(self, key: str, emb: ImageEmbedding) -> None:
        self._items[key] = emb
        while len(self._items) > self.max_items:
            self._items.popitem(last=False)

    @torch.inference_mode()
    def _encode(self, images: Sequence[np.ndarray]) -> list[ImageEmbedding]:
        for image in images:
            if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
                raise ValueError(f"SAM needs RGB uint8 HxWx3 images, got {image.shape} {image.dtype}")
        with autocast_context(self.device):
            batch = self.model.embed(list(images))
        self.encoder_calls += len(images)
        batch = batch.float()
        # cloned so that evicting one image frees its memory even while the batch's others stay cached
        return [ImageEmbedding(_cloned(batch.select(i))) for i in range(len(batch))]


def _cloned(embeddings: Embeddings) -> Embeddings:
    return Embeddings(
        embeddings.features.clone(),
        embeddings.original_sizes,
        embeddings.input_sizes,
        [t.clone() for t in embeddings.extras],
    )


def prompt_image(model: PromptableModel, embedding: ImageEmbedding) -> PromptImage:
    """Returns the image of a cached embedding, ready for prompts (as if the model had just encoded it)."""
    return PromptImage(model, embedding.embeddings, 0)

"""SAM image embeddings computed once per image and shared by every stage of a run.

The image encoder is SAM's expensive part (vit_h: ~0.45 s per image on an A100); the prompt decoder is cheap.
:class:`EmbeddingCache` runs the encoder on batches of images and hands the features to ``SamPredictor``
instances (refinement prompts, the automatic mask generator, the engine) without recomputing them.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from segment_anything import SamPredictor
from segment_anything.modeling import Sam
from segment_anything.utils.transforms import ResizeLongestSide

from samseg_core.models.device import autocast_context


@dataclass
class ImageEmbedding:
    """SAM's encoder output for one image plus the sizes ``SamPredictor`` needs to map prompts and masks."""

    features: torch.Tensor  # (1, C, h, w) on the model's device
    input_size: tuple[int, int]  # image size after ResizeLongestSide, before padding
    original_size: tuple[int, int]  # (H, W) of the image given


class EmbeddingCache:
    """An LRU cache of SAM image embeddings keyed by a caller-chosen key (e.g. the sample id).

    Args:
        sam: the SAM model whose encoder computes the embeddings.
        max_items: embeddings kept (vit_h: 256x64x64 floats = 4 MB each).
        encoder_batch_size: images per encoder forward pass in :meth:`get_many`.
    """

    def __init__(self, sam: Sam, max_items: int = 64, encoder_batch_size: int = 4) -> None:
        self.sam = sam
        self.max_items = max_items
        self.encoder_batch_size = encoder_batch_size
        self.transform = ResizeLongestSide(sam.image_encoder.img_size)
        self.encoder_calls = 0  # images encoded (cache misses), for tests and benchmarks
        self._items: OrderedDict[str, ImageEmbedding] = OrderedDict()

    @property
    def device(self) -> torch.device:
        """The model's device."""
        return self.sam.device

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

    def predictor(self, key: str, image: np.ndarray) -> SamPredictor:
        """Returns a ``SamPredictor`` whose image is set from the cached embedding (no encoder call on a hit)."""
        return predictor_from_embedding(self.sam, self.get(key, image))

    def _put(self, key: str, emb: ImageEmbedding) -> None:
        self._items[key] = emb
        while len(self._items) > self.max_items:
            self._items.popitem(last=False)

    @torch.inference_mode()
    def _encode(self, images: Sequence[np.ndarray]) -> list[ImageEmbedding]:
        batch, sizes = [], []
        for image in images:
            if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
                raise ValueError(f"SAM needs RGB uint8 HxWx3 images, got {image.shape} {image.dtype}")
            resized = self.transform.apply_image(image)
            tensor = torch.as_tensor(resized, device=self.device).permute(2, 0, 1).contiguous()
            sizes.append((tuple(tensor.shape[-2:]), image.shape[:2]))
            batch.append(self.sam.preprocess(tensor[None].float())[0])
        with autocast_context(self.device):
            features = self.sam.image_encoder(torch.stack(batch))
        self.encoder_calls += len(images)
        features = features.float()
        return [
            ImageEmbedding(features=features[i : i + 1], input_size=inp, original_size=tuple(orig))
            for i, (inp, orig) in enumerate(sizes)
        ]


def predictor_from_embedding(sam: Sam, embedding: ImageEmbedding) -> SamPredictor:
    """Returns a ``SamPredictor`` primed with a precomputed embedding (as if ``set_image`` had run)."""
    predictor = SamPredictor(sam)
    predictor.features = embedding.features
    predictor.input_size = embedding.input_size
    predictor.original_size = embedding.original_size
    predictor.is_image_set = True
    return predictor

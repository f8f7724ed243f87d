"""CLIP (open_clip) for ranking candidate class names on image crops, with per-run text-embedding caching."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

import torch

from samseg_core.models.device import autocast_context, resolve_device

#: Prompt templates; a class's text embedding is the normalised mean over these (CLIP's prompt ensembling).
DEFAULT_TEMPLATES: tuple[str, ...] = ("a photo of a {}.",)
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
_CHECKPOINT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".npz")


class ClipClassifier:
    """An open_clip model with its tokenizer: crop embeddings in batches, class-name embeddings cached.

    Crops come in as ``(B, 3, S, S)`` float tensors in [0, 1] at :attr:`image_size` (RGB); normalisation with
    the model's mean/std happens here. Counters: ``image_calls`` (forward passes of the image tower),
    ``text_calls`` (forward passes of the text tower), ``cached_texts`` (prompts answered from the cache).
    """

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer: Callable[[list[str]], torch.Tensor],
        *,
        image_size: int | None = None,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        templates: Sequence[str] = DEFAULT_TEMPLATES,
        device: str | torch.device | None = None,
        batch_size: int = 64,
        autocast: bool = True,
    ) -> None:
        """Wraps a built model.

        Args:
            model: an open_clip ``CLIP`` (anything with ``encode_image``, ``encode_text`` and ``logit_scale``).
            tokenizer: maps a list of strings to a token-id tensor (open_clip's tokenizer).
            image_size: input side; default the model's ``visual.image_size``.
            mean: RGB normalisation mean; default the model's preprocess config, else OpenAI's.
            std: RGB normalisation std; as ``mean``.
            templates: prompt templates with one ``{}`` for the class name.
            device: where to run; default CUDA when available.
            batch_size: crops / prompts per forward pass.
            autocast: bf16 autocast on CUDA.
        """
        if not templates or any("{}" not in t for t in templates):
            raise ValueError("templates must be a non-empty sequence of strings containing '{}'")
        self.device = resolve_device(device)
        self.model = model.to(self.device).eval()
        self.tokenizer = tokenizer
        cfg = getattr(getattr(model, "visual", None), "preprocess_cfg", None) or {}
        size = image_size or cfg.get("size") or getattr(model.visual, "image_size", 224)
        self.image_size = int(size[0] if isinstance(size, (tuple, list)) else size)
        self.mean = torch.tensor(mean or cfg.get("mean") or OPENAI_MEAN, dtype=torch.float32).view(1, 3, 1, 1)
        self.std = torch.tensor(std or cfg.get("std") or OPENAI_STD, dtype=torch.float32).view(1, 3, 1, 1)
        self.templates = tuple(templates)
        self.batch_size = int(batch_size)
        self.autocast = autocast
        self._text_cache: dict[tuple[str, str], torch.Tensor] = {}
        self.image_calls = 0
        self.text_calls = 0
        self.cached_texts = 0

    def clear_cache(self) -> None:
        """Forgets cached text embeddings (the next request recomputes them)."""
        self._text_cache.clear()

    @property
    def logit_scale(self) -> float:
        """CLIP's learned temperature (``exp`` of the stored log scale)."""
        return float(self.model.logit_scale.detach().float().exp().clamp(max=100.0))

    def image_embeddings(self, crops: torch.Tensor) -> torch.Tensor:
        """Returns L2-normalised ``(B, D)`` float32 embeddings of ``(B, 3, S, S)`` crops in [0, 1]."""
        out = []
        with torch.inference_mode(), autocast_context(self.device, self.autocast):
            for start in range(0, len(crops), self.batch_size):
                chunk = crops[start : start + self.batch_size].to(self.device, torch.float32)
                chunk = (chunk - self.mean.to(self.device)) / self.std.to(self.device)
                self.image_calls += 1
                out.append(self.model.encode_image(chunk).float())
        if not out:
            return torch.zeros((0, self.embed_dim), device=self.device)
        return torch.nn.functional.normalize(torch.cat(out), dim=-1)

    @property
    def embed_dim(self) -> int:
        """Width of the joint embedding space."""
        proj = getattr(self.model, "text_projection", None)
        if isinstance(proj, torch.Tensor):
            return int(proj.shape[-1])
        return int(
            getattr(proj, "out_features", 0) or self.model.encode_text(self.tokenizer(["a"])).shape[-1]
        )

    def text_embeddings(self, names: Sequence[str]) -> torch.Tensor:
        """Returns L2-normalised ``(N, D)`` float32 embeddings of class names (template mean), cached per name."""
        keys = [(template, name) for name in names for template in self.templates]
        missing = list(dict.fromkeys(k for k in keys if k not in self._text_cache))
        self.cached_texts += len(keys) - len(missing)
        if missing:
            with torch.inference_mode(), autocast_context(self.device, self.autocast):
                for start in range(0, len(missing), self.batch_size):
                    chunk = missing[start : start + self.batch_size]
                    tokens = self.tokenizer([template.format(name) for template, name in chunk]).to(
                        self.device
                    )
                    self.text_calls += 1
                    feats = torch.nn.functional.normalize(self.model.encode_text(tokens).float(), dim=-1)
                    self._text_cache.update(zip(chunk, feats))
        if not names:
            return torch.zeros((0, self.embed_dim), device=self.device)
        stacked = torch.stack([self._text_cache[k] for k in keys]).view(len(names), len(self.templates), -1)
        return torch.nn.functional.normalize(stacked.mean(dim=1), dim=-1)

    def __repr__(self) -> str:
        return (
            f"ClipClassifier({type(self.model).__name__}, image_size={self.image_size}, device={self.device})"
        )


def _normalize_transform_stats(preprocess: Any) -> tuple[Any, Any]:
    """Finds (mean, std) of the Normalize step of a torchvision preprocess pipeline, or (None, None)."""
    for step in getattr(preprocess, "transforms", []) or []:
        if hasattr(step, "mean") and hasattr(step, "std"):
            return tuple(float(v) for v in step.mean), tuple(float(v) for v in step.std)
    return None, None


def load_clip(
    model: Any = "ViT-B-32",
    *,
    pretrained: str | os.PathLike | None = "openai",
    tokenizer: Any = None,
    preprocess: Any = None,
    templates: Sequence[str] = DEFAULT_TEMPLATES,
    device: str | torch.device | None = None,
    batch_size: int = 64,
) -> ClipClassifier:
    """Returns a :class:`ClipClassifier` for an open_clip model name, local checkpoint/directory, or built model.

    Args:
        model: an open_clip model name (``"ViT-L-14"``, ``"ViT-B-32"``) loaded with ``pretrained``; an open_clip
            schema name (``"hf-hub:org/repo"``, ``"local-dir:/path"``); a directory holding
            ``open_clip_config.json`` and weights; a built ``CLIP`` module; a ``(model, tokenizer)`` or
            ``(model, tokenizer, preprocess)`` tuple; or a ``ClipClassifier`` (returned as is).
        pretrained: a pretrained tag (``"openai"``) or a local checkpoint file for a model name.
        tokenizer: the tokenizer of a built model; default open_clip's for the model name (its BPE ships in
            the open_clip wheel), or the default ``SimpleTokenizer`` for a built model.
        preprocess: the model's preprocess transform; only its Normalize mean/std are used.
        templates: prompt templates with ``{}``.
        device: where to run; default CUDA when available.
        batch_size: crops / prompts per forward pass.
    """
    import open_clip

    if isinstance(model, ClipClassifier):
        return model
    if isinstance(model, tuple):
        built, tokenizer, *rest = model
        preprocess = rest[0] if rest else preprocess
        model = built
    if isinstance(model, (str, os.PathLike)):
        name = os.fspath(model)
        if os.path.isdir(name):
            name = f"local-dir:{os.path.abspath(name)}"
        elif name.endswith(_CHECKPOINT_SUFFIXES) and os.path.isfile(name):
            raise ValueError(
                f"'{name}' is a checkpoint file: pass the open_clip model name as model and the file as pretrained"
            )
        schema = name.startswith(("hf-hub:", "local-dir:"))
        pretrained_arg = None if schema or pretrained is None else os.fspath(pretrained)
        try:
            built, _, preprocess = open_clip.create_model_and_transforms(name, pretrained=pretrained_arg)
        except RuntimeError as err:
            raise OSError(
                f"cannot load open_clip model '{name}' (pretrained={pretrained_arg!r}): {err}. Without internet, "
                "pass a local checkpoint file as pretrained=..., or a local directory with open_clip_config.json"
            ) from err
        tokenizer = tokenizer or open_clip.get_tokenizer(name)
        model = built
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"cannot make a CLIP model of {type(model).__name__}")
    mean, std = _normalize_transform_stats(preprocess)
    context_length = getattr(model, "context_length", 77)
    tokenizer = tokenizer or open_clip.tokenizer.SimpleTokenizer(context_length=context_length)
    return ClipClassifier(
        model, tokenizer, mean=mean, std=std, templates=templates, device=device, batch_size=batch_size
    )

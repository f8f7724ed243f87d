"""One model resolver for every stage: a name, a local path, a ``module:function`` spec or a built model.

``resolve_model(kind, spec, device=...)`` returns the model of ``kind`` on ``device``, whatever the spec; a model
that cannot be loaded raises :class:`ModelLoadError`, which names the stage parameter and says what to pass
instead, before the stage writes anything.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from samseg_core.errors import StageParameterError
from samseg_core.models.device import check_device
from samseg_core.models.factory import build_from_spec, is_factory_spec

SAM, SEMANTIC, CLIP, CAPTIONER, CLIPSEG = "sam", "semantic", "clip", "captioner", "clipseg"
MODEL_KINDS = (SAM, SEMANTIC, CLIP, CAPTIONER, CLIPSEG)

_REMEDIES = {
    SAM: "pass vit_b / vit_l / vit_h with a checkpoint that exists (sam_checkpoint=, $SAMSEG_SAM_CHECKPOINT), a .pth "
    "path, a hub id in the local Hugging Face cache (e.g. facebook/sam2.1-hiera-large), a save_pretrained "
    "directory, or a module:function spec",
    SEMANTIC: "pass a Hugging Face id (online), a local directory saved with save_pretrained, or a module:function spec",
    CLIP: "pass an open_clip model name with a local checkpoint (clip_pretrained=), or a directory with "
    "open_clip_config.json",
    CAPTIONER: "pass a BLIP hub id (online) or a local directory saved with save_pretrained (model and processor)",
    CLIPSEG: "pass a CLIPSeg hub id (online) or a local directory saved with save_pretrained (model and processor)",
}


class ModelLoadError(StageParameterError):
    """A model could not be loaded; ``param`` names the stage parameter that named it."""


def _load_sam(spec: Any, device: torch.device, **options: Any) -> Any:
    from samseg_core.models.sam_family import load_sam_family

    return load_sam_family(spec, checkpoint=options.get("checkpoint"), device=device)


def _load_semantic(spec: Any, device: torch.device, **options: Any) -> Any:
    from samseg_core.models.semantic import load_semantic_model

    return load_semantic_model(spec, device=device)


def _load_clip(spec: Any, device: torch.device, **options: Any) -> Any:
    from samseg_core.models.clip import load_clip

    return load_clip(spec, pretrained=options.get("pretrained") or "openai", device=device)


def _load_captioner(spec: Any, device: torch.device, **options: Any) -> Any:
    from samseg_core.models.caption import load_captioner

    return load_captioner(spec, device=device)


def _load_clipseg(spec: Any, device: torch.device, **options: Any) -> Any:
    from samseg_core.models.clipseg import load_clipseg

    return load_clipseg(spec, device=device)


_LOADERS: dict[str, Callable[..., Any]] = {
    SAM: _load_sam,
    SEMANTIC: _load_semantic,
    CLIP: _load_clip,
    CAPTIONER: _load_captioner,
    CLIPSEG: _load_clipseg,
}


def resolve_model(
    kind: str,
    spec: Any,
    *,
    device: str | torch.device | None = None,
    param: str | None = None,
    **options: Any,
) -> Any:
    """Returns the model of ``kind`` (:data:`MODEL_KINDS`) that ``spec`` names, on ``device``.

    Args:
        kind: ``sam``, ``semantic``, ``clip``, ``captioner`` or ``clipseg``.
        spec: a name (SAM type, hub id, open_clip name), a local path, a ``"module:function"`` factory spec, or a
            built model (moved to ``device``).
        device: where the model runs (checked to exist); None: CUDA when available.
        param: the stage parameter that named the model, for the error message (default: ``kind``).
        **options: ``checkpoint`` for SAM types, ``pretrained`` for open_clip names.

    Raises:
        ModelLoadError: when the model cannot be found, imported or built.
    """
    if kind not in _LOADERS:
        raise ValueError(f"unknown model kind '{kind}'; expected one of {MODEL_KINDS}")
    param = param or kind
    target = check_device(device)
    try:
        built = build_from_spec(spec) if is_factory_spec(spec) else spec
        model = _LOADERS[kind](built, target, **options)
    except (OSError, ValueError, TypeError, KeyError, RuntimeError) as err:
        message = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ModelLoadError(
            param, f"cannot load {kind} model {_describe(spec)}: {message}", _REMEDIES[kind]
        ) from err
    return _on_device(model, target)


def _describe(spec: Any) -> str:
    return repr(spec) if isinstance(spec, str) else type(spec).__name__


def _on_device(model: Any, device: torch.device) -> Any:
    """Moves a built model (or samseg's wrapper around one) to ``device``; wrappers drop caches of the old one."""
    from samseg_core.models.promptable import PromptableModel

    if isinstance(model, PromptableModel):
        return model if model.device == device else model.to(device)
    inner = getattr(model, "model", None)
    if isinstance(model, torch.nn.Module):
        return model.to(device)
    if isinstance(inner, torch.nn.Module) and getattr(model, "device", device) != device:
        model.model = inner.to(device)
        model.device = device
        clear = getattr(model, "clear_cache", None)
        if clear is not None:
            clear()
    return model

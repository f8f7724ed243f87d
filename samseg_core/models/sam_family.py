"""One ``sam=`` argument for every SAM-family model: a type, a checkpoint, a hub id, a directory or a model.

:func:`load_sam_family` turns the spec a stage's ``sam=`` option holds into a
:class:`~samseg_core.models.promptable.PromptableModel`:

* ``"vit_b"`` / ``"vit_l"`` / ``"vit_h"`` / ``"default"``, or a ``.pth`` file: ``segment_anything`` (checkpoint
  found as :func:`~samseg_core.models.sam.resolve_sam_checkpoint` says);
* a local directory saved with ``save_pretrained`` (``config.json`` with ``model_type`` ``sam``, ``sam_hq`` or
  ``sam2``): transformers ``SamModel`` / ``SamHQModel`` / ``Sam2Model``;
* a Hugging Face hub id such as ``"facebook/sam2.1-hiera-large"`` (:data:`SAM_HUB_IDS`): the same, from the hub
  or its local cache;
* a built ``Sam``, transformers model or ``PromptableModel``.

This module imports no FiftyOne.
"""

from __future__ import annotations

import os
import pathlib
from typing import Any

import torch

from samseg_core.models.device import resolve_device
from samseg_core.models.promptable import (
    PromptableModel,
    SegmentAnythingBackend,
    load_promptable,
    load_transformers_sam,
)

__all__ = ["SAM_HUB_IDS", "SAM_TYPES", "describe_sam", "load_sam_family"]

#: ``segment_anything`` model types (their checkpoints are looked up locally, then downloaded).
SAM_TYPES = ("vit_b", "vit_l", "vit_h")

#: Released hub checkpoints samseg offers by name, fastest first within each family.
SAM_HUB_IDS = (
    "facebook/sam2.1-hiera-tiny",
    "facebook/sam2.1-hiera-small",
    "facebook/sam2.1-hiera-base-plus",
    "facebook/sam2.1-hiera-large",
    "facebook/sam-vit-base",
    "facebook/sam-vit-large",
    "facebook/sam-vit-huge",
    "syscv-community/sam-hq-vit-base",
    "syscv-community/sam-hq-vit-large",
    "syscv-community/sam-hq-vit-huge",
)

_CHECKPOINT_SUFFIXES = {".pth", ".pt", ".bin"}


def _is_sam_type(name: str) -> bool:
    from samseg_core.models.sam import SAM_CHECKPOINT_FILES, SAM_MODEL_TYPE_ALIASES

    lowered = name.lower()
    return lowered in SAM_CHECKPOINT_FILES or lowered in SAM_MODEL_TYPE_ALIASES


def _looks_like_hub_id(name: str) -> bool:
    """``org/name`` that is not a path on this machine."""
    parts = name.split("/")
    return len(parts) == 2 and all(parts) and not pathlib.Path(name).expanduser().exists()


def _load_hub_id(hub_id: str, device: torch.device) -> PromptableModel:
    """Load a transformers SAM-family checkpoint by hub id (network or the local hub cache)."""
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(hub_id)
    except OSError as err:
        raise OSError(
            f"hub id {hub_id!r} is neither in the local Hugging Face cache nor downloadable here ({err}); "
            "download it where there is a network (huggingface-cli download ...) or pass its local directory"
        ) from None
    return load_transformers_sam(hub_id, str(config.model_type), device)


def _refuse_sam2_package_checkpoint(path: pathlib.Path) -> None:
    """A ``sam2`` package checkpoint (``sam2.1_hiera_*.pt``) is not a ``segment_anything`` one: say what works."""
    if path.name.lower().startswith("sam2"):
        raise ValueError(
            f"{path.name} is a checkpoint of the sam2 package; samseg runs SAM 2 through transformers: pass the hub "
            "id (e.g. facebook/sam2.1-hiera-large) or a directory saved with save_pretrained"
        )


def load_sam_family(
    spec: Any = "vit_b",
    *,
    checkpoint: str | os.PathLike | None = None,
    device: str | torch.device | None = None,
    allow_download: bool = True,
) -> PromptableModel:
    """Return the :class:`PromptableModel` that ``spec`` names, on ``device``.

    Args:
        spec: see the module docstring. ``None`` means ``checkpoint``'s model when given, else ``vit_b``.
        checkpoint: an explicit ``segment_anything`` checkpoint for a SAM type.
        device: target device; ``None`` picks CUDA when available.
        allow_download: whether a missing ``segment_anything`` checkpoint may be downloaded.

    Raises:
        ValueError: the spec names no SAM-family model; OSError / FileNotFoundError: it cannot be found here.
    """
    target = resolve_device(device)
    if isinstance(spec, PromptableModel):
        return spec.to(target) if spec.device != target else spec
    if spec is None or isinstance(spec, (str, os.PathLike)):
        return _load_named(spec, checkpoint, target, allow_download)
    return load_promptable(spec, device=target)


def _load_named(
    spec: str | os.PathLike | None,
    checkpoint: str | os.PathLike | None,
    device: torch.device,
    allow_download: bool,
) -> PromptableModel:
    from samseg_core.models.sam import load_sam

    name = os.fspath(spec) if spec is not None else None
    path = pathlib.Path(name).expanduser() if name else None
    if name is None or _is_sam_type(name) or (path.suffix.lower() in _CHECKPOINT_SUFFIXES):
        if path is not None and path.is_file():
            _refuse_sam2_package_checkpoint(path)
        sam = load_sam(name, checkpoint=checkpoint, device=device, allow_download=allow_download)
        return SegmentAnythingBackend(sam)
    if path.is_dir():
        return load_promptable(str(path), device=device)
    if _looks_like_hub_id(name):
        return _load_hub_id(name, device)
    raise ValueError(
        f"{name!r} names no SAM-family model: pass {', '.join(SAM_TYPES)}, a .pth checkpoint, a hub id such as "
        f"{SAM_HUB_IDS[3]}, or a directory saved with save_pretrained"
    )


def describe_sam(model: PromptableModel) -> str:
    """A short name of a model's backend and architecture for run summaries (e.g. ``transformers sam2``)."""
    kind = getattr(model, "kind", None)
    if kind is not None:
        return f"transformers {kind}"
    encoder = getattr(getattr(model, "sam", None), "image_encoder", None)
    width = getattr(getattr(getattr(encoder, "patch_embed", None), "proj", None), "out_channels", None)
    names = {768: "vit_b", 1024: "vit_l", 1280: "vit_h"}
    return f"segment_anything {names.get(width, 'custom')}"

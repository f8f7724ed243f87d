"""Device selection and mixed-precision context for model inference."""

from __future__ import annotations

import contextlib

import torch


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """Return a ``torch.device``: the given one, or CUDA when available, else CPU.

    Args:
        device: ``None`` (auto), a string such as ``"cpu"`` or ``"cuda:1"``, or a ``torch.device``.
    """
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if isinstance(device, torch.device):
        return device
    if not isinstance(device, str):
        raise TypeError(f"device must be a str, torch.device or None, got {type(device).__name__}")
    return torch.device(device)


def autocast_context(device: torch.device, enabled: bool = True) -> contextlib.AbstractContextManager:
    """Return a bfloat16 ``torch.autocast`` context on CUDA, or a no-op context elsewhere.

    Args:
        device: The device inference runs on.
        enabled: ``False`` always returns the no-op context (full precision).
    """
    if enabled and torch.device(device).type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()

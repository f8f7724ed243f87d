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


def check_device(device: str | torch.device | None) -> torch.device:
    """Returns the device a stage will run on; raises a StageParameterError when it does not exist here.

    ``None`` is CUDA when available, else the CPU. ``"cuda"`` without a usable GPU, ``"cuda:3"`` on a machine
    with fewer GPUs, an unavailable ``"mps"`` or a malformed name are refused up front, so no model silently
    runs somewhere else.
    """
    from samseg_core.errors import StageParameterError

    try:
        resolved = resolve_device(device)
    except (TypeError, RuntimeError) as err:
        raise StageParameterError(
            "device", f"{device!r} is not a device ({err})", "pass cuda, cuda:N or cpu"
        ) from None
    if resolved.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        index = resolved.index or 0
        if index >= count:
            found = f"{count} CUDA device(s)" if count else "no usable CUDA device"
            raise StageParameterError(
                "device",
                f"'{device}' is not available: this machine has {found}",
                "pass device='cpu' or a CUDA index that exists",
            )
    elif resolved.type == "mps" and not torch.backends.mps.is_available():
        raise StageParameterError("device", "'mps' is not available here", "pass device='cpu'")
    elif resolved.type not in ("cpu", "cuda", "mps"):
        raise StageParameterError(
            "device", f"'{device}' is not a device samseg runs on", "pass cuda, cuda:N or cpu"
        )
    return resolved

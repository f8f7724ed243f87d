"""SAM (segment_anything) checkpoint resolution and model loading."""

from __future__ import annotations

import os
import pathlib
from collections.abc import Mapping

import torch

from samseg_core.models.device import resolve_device

SAM_CHECKPOINT_FILES: dict[str, str] = {
    "vit_b": "sam_vit_b_01ec64.pth",
    "vit_l": "sam_vit_l_0b3195.pth",
    "vit_h": "sam_vit_h_4b8939.pth",
}
SAM_CHECKPOINT_BASE_URL = "https://dl.fbaipublicfiles.com/segment_anything/"
SAM_CHECKPOINT_URLS: dict[str, str] = {
    model_type: SAM_CHECKPOINT_BASE_URL + file_name for model_type, file_name in SAM_CHECKPOINT_FILES.items()
}
# segment_anything's registry: "default" is vit_h.
SAM_MODEL_TYPE_ALIASES: dict[str, str] = {"default": "vit_h"}
SAM_EMBED_DIM_TO_TYPE: dict[int, str] = {768: "vit_b", 1024: "vit_l", 1280: "vit_h"}

SAM_CHECKPOINT_ENV = "SAMSEG_SAM_CHECKPOINT"
SAMSEG_CACHE_ENV = "SAMSEG_CACHE_DIR"
FIFTYONE_ZOO_ENV = "FIFTYONE_MODEL_ZOO_DIR"

_PATCH_EMBED_KEY = "image_encoder.patch_embed.proj.weight"


class SamCheckpointNotFound(FileNotFoundError):
    """Raised when no SAM checkpoint file can be found or downloaded."""

    def __init__(self, model_type: str, looked_at: list[str], cache_dir: pathlib.Path | None = None):
        self.model_type = model_type
        self.looked_at = list(looked_at)
        file_name = SAM_CHECKPOINT_FILES.get(model_type, "<checkpoint>.pth")
        where = f"{cache_dir / file_name}" if cache_dir is not None else f"<cache dir>/{file_name}"
        lines = [f"No SAM checkpoint found for model type {model_type!r}. Looked at:"]
        lines += [f"  - {place}" for place in self.looked_at] or ["  - (nowhere)"]
        lines.append(
            f"Download {SAM_CHECKPOINT_URLS.get(model_type, SAM_CHECKPOINT_BASE_URL)} and either put it at "
            f"{where}, set the environment variable {SAM_CHECKPOINT_ENV}=/path/to/{file_name}, "
            "or pass the file path explicitly (checkpoint=...)."
        )
        super().__init__("\n".join(lines))


def normalize_sam_model_type(model_type: str) -> str:
    """Return the canonical SAM type (``vit_b``/``vit_l``/``vit_h``) for a type name or alias.

    Raises:
        ValueError: If the name is not a known SAM type.
    """
    name = SAM_MODEL_TYPE_ALIASES.get(str(model_type).lower(), str(model_type).lower())
    if name not in SAM_CHECKPOINT_FILES:
        valid = sorted([*SAM_CHECKPOINT_FILES, *SAM_MODEL_TYPE_ALIASES])
        raise ValueError(f"Unknown SAM model type {model_type!r}; valid types: {', '.join(valid)}")
    return name


def fiftyone_model_zoo_dir() -> pathlib.Path:
    """Return FiftyOne's model zoo directory without importing fiftyone (env var or its default)."""
    env = os.environ.get(FIFTYONE_ZOO_ENV)
    return pathlib.Path(env).expanduser() if env else pathlib.Path.home() / "fiftyone" / "__models__"


def samseg_checkpoint_cache_dir() -> pathlib.Path:
    """Return the directory samseg downloads checkpoints into (``$SAMSEG_CACHE_DIR/checkpoints``).

    ``SAMSEG_CACHE_DIR`` defaults to ``$XDG_CACHE_HOME/samseg`` (``~/.cache/samseg``).
    """
    env = os.environ.get(SAMSEG_CACHE_ENV)
    if env:
        root = pathlib.Path(env).expanduser()
    else:
        xdg = os.environ.get("XDG_CACHE_HOME")
        root = (pathlib.Path(xdg).expanduser() if xdg else pathlib.Path.home() / ".cache") / "samseg"
    return root / "checkpoints"


def _type_named_in(file_name: str) -> str | None:
    lowered = file_name.lower()
    for model_type in SAM_CHECKPOINT_FILES:
        if model_type in lowered:
            return model_type
    return None


def _find_in_tree(root: pathlib.Path, file_name: str) -> pathlib.Path | None:
    if not root.is_dir():
        return None
    # Sorted so that the choice is deterministic when the zoo holds several copies.
    for path in sorted(root.rglob(file_name)):
        if path.is_file():
            return path
    return None


def _try_download(url: str, dest: pathlib.Path) -> str | None:
    """Download ``url`` to ``dest``; return None on success, else the error text."""
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        torch.hub.download_url_to_file(url, str(dest), progress=True)
    except Exception as err:  # noqa: BLE001 - any network/IO failure means "not available here"
        return f"{type(err).__name__}: {err}"
    return None if dest.is_file() else "download finished without creating the file"


def resolve_sam_checkpoint(
    model_type: str,
    checkpoint: str | os.PathLike | None = None,
    *,
    allow_download: bool = True,
    zoo_dir: str | os.PathLike | None = None,
) -> pathlib.Path:
    """Return the path of a SAM checkpoint for ``model_type``, searching the usual places in order.

    Order: the explicit ``checkpoint`` path (must exist) -> ``$SAMSEG_SAM_CHECKPOINT`` -> FiftyOne's model zoo
    directory (searched recursively for the official file name) -> samseg's cache directory -> a download of
    the official URL into that cache (when ``allow_download``).

    Args:
        model_type: ``vit_b``, ``vit_l``, ``vit_h`` or ``default`` (= ``vit_h``).
        checkpoint: An explicit checkpoint file; when given, nothing else is searched.
        allow_download: Whether to try downloading the official checkpoint when none is found locally.
        zoo_dir: FiftyOne model zoo directory; defaults to ``$FIFTYONE_MODEL_ZOO_DIR`` or
            ``~/fiftyone/__models__``.

    Raises:
        SamCheckpointNotFound: If no checkpoint is found; the message lists every place looked at.
        ValueError: If ``model_type`` is unknown.
    """
    model_type = normalize_sam_model_type(model_type)
    file_name = SAM_CHECKPOINT_FILES[model_type]
    looked_at: list[str] = []

    if checkpoint is not None:
        path = pathlib.Path(checkpoint).expanduser()
        if path.is_file():
            return path
        raise SamCheckpointNotFound(model_type, [f"explicit checkpoint {path} (does not exist)"])

    env_value = os.environ.get(SAM_CHECKPOINT_ENV)
    if env_value:
        path = pathlib.Path(env_value).expanduser()
        named = _type_named_in(path.name)
        if not path.is_file():
            looked_at.append(f"${SAM_CHECKPOINT_ENV}={path} (does not exist)")
        elif named is not None and named != model_type:
            looked_at.append(f"${SAM_CHECKPOINT_ENV}={path} (a {named} checkpoint, not {model_type})")
        else:
            return path
    else:
        looked_at.append(f"${SAM_CHECKPOINT_ENV} (not set)")

    zoo = pathlib.Path(zoo_dir).expanduser() if zoo_dir is not None else fiftyone_model_zoo_dir()
    found = _find_in_tree(zoo, file_name)
    if found is not None:
        return found
    looked_at.append(f"FiftyOne model zoo {zoo}/**/{file_name} (${FIFTYONE_ZOO_ENV})")

    cache_dir = samseg_checkpoint_cache_dir()
    cached = cache_dir / file_name
    if cached.is_file():
        return cached
    looked_at.append(f"samseg cache {cached} (${SAMSEG_CACHE_ENV})")

    if allow_download:
        error = _try_download(SAM_CHECKPOINT_URLS[model_type], cached)
        if error is None:
            return cached
        looked_at.append(f"download {SAM_CHECKPOINT_URLS[model_type]} failed: {error}")
    else:
        looked_at.append("download (disabled: allow_download=False)")

    raise SamCheckpointNotFound(model_type, looked_at, cache_dir)


def infer_sam_model_type(state_dict: Mapping[str, torch.Tensor]) -> str:
    """Return the SAM type of a state dict from its image encoder's embedding width.

    Raises:
        ValueError: If the state dict is not a SAM image encoder of a known size.
    """
    weight = state_dict.get(_PATCH_EMBED_KEY)
    if weight is None:
        raise ValueError(f"Not a SAM state dict: no {_PATCH_EMBED_KEY!r} key")
    embed_dim = int(weight.shape[0])
    if embed_dim not in SAM_EMBED_DIM_TO_TYPE:
        raise ValueError(
            f"Unknown SAM encoder width {embed_dim}; known: "
            + ", ".join(f"{dim} ({name})" for dim, name in SAM_EMBED_DIM_TO_TYPE.items())
        )
    return SAM_EMBED_DIM_TO_TYPE[embed_dim]


def _read_state_dict(path: pathlib.Path) -> dict[str, torch.Tensor]:
    loaded = torch.load(path, map_location="cpu", weights_only=True)
    # Some re-saved checkpoints wrap the weights; the official ones are the bare state dict.
    for key in ("model", "state_dict"):
        if (
            isinstance(loaded, Mapping)
            and _PATCH_EMBED_KEY not in loaded
            and isinstance(loaded.get(key), Mapping)
        ):
            loaded = loaded[key]
    if not isinstance(loaded, Mapping):
        raise ValueError(f"{path} does not contain a state dict (got {type(loaded).__name__})")
    return dict(loaded)


def _check_state_dict(model: torch.nn.Module, state_dict: Mapping[str, torch.Tensor], source: str) -> None:
    expected = model.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    mismatched = [
        f"{k}: checkpoint {tuple(state_dict[k].shape)} vs model {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state_dict and tuple(state_dict[k].shape) != tuple(v.shape)
    ]
    if missing or unexpected or mismatched:

        def first(items: list[str]) -> str:
            return ", ".join(items[:5]) + (f" (+{len(items) - 5} more)" if len(items) > 5 else "")

        parts = [
            f"{name} ({len(items)}): {first(items)}"
            for name, items in (
                ("missing keys", missing),
                ("unexpected keys", unexpected),
                ("shape mismatches", mismatched),
            )
            if items
        ]
        raise ValueError(f"SAM checkpoint {source} does not match the model: " + "; ".join(parts))


def _build_sam_from_state_dict(model_type: str, state_dict: Mapping[str, torch.Tensor], source: str):
    from segment_anything import sam_model_registry

    model = sam_model_registry[model_type](checkpoint=None)
    _check_state_dict(model, state_dict, source)
    model.load_state_dict(state_dict)
    return model


def load_sam(
    sam: str | os.PathLike | torch.nn.Module | None = "vit_b",
    *,
    checkpoint: str | os.PathLike | None = None,
    device: str | torch.device | None = None,
    allow_download: bool = True,
):
    """Return a ``segment_anything.modeling.Sam`` in eval mode on ``device``.

    Args:
        sam: A built ``Sam`` (moved to ``device`` and returned), a model type (``vit_b``/``vit_l``/``vit_h``/
            ``default``) whose checkpoint is found with :func:`resolve_sam_checkpoint`, or a checkpoint path
            whose type is read from the file name (``vit_b``/``vit_l``/``vit_h``) or else from the weights.
            ``None`` means the type of ``checkpoint`` when given, else ``vit_b``.
        checkpoint: An explicit checkpoint file for a model type.
        device: Target device; ``None`` picks CUDA when available.
        allow_download: Whether a missing checkpoint may be downloaded.

    Raises:
        SamCheckpointNotFound: If the checkpoint cannot be found.
        ValueError: For an unknown type or a checkpoint that does not match the architecture.
        TypeError: For a module that is not a ``Sam``.
    """
    from segment_anything.modeling import Sam

    target = resolve_device(device)
    if isinstance(sam, torch.nn.Module):
        if not isinstance(sam, Sam):
            raise TypeError(f"Expected a segment_anything Sam model, got {type(sam).__name__}")
        return sam.to(target)

    if sam is None and checkpoint is not None:
        sam, checkpoint = checkpoint, None
    elif sam is None:
        sam = "vit_b"

    name = os.fspath(sam)
    lowered = name.lower()
    if lowered in SAM_CHECKPOINT_FILES or lowered in SAM_MODEL_TYPE_ALIASES:
        model_type = normalize_sam_model_type(lowered)
        path = resolve_sam_checkpoint(model_type, checkpoint, allow_download=allow_download)
    else:
        path = pathlib.Path(name).expanduser()
        looks_like_path = path.suffix in {".pth", ".pt", ".bin"} or os.sep in name or path.exists()
        if not looks_like_path:
            normalize_sam_model_type(name)  # raises ValueError listing the valid types
        if not path.is_file():
            model_type = _type_named_in(path.name) or "vit_b"
            raise SamCheckpointNotFound(model_type, [f"explicit checkpoint {path} (does not exist)"])
        model_type = _type_named_in(path.name)

    state_dict = _read_state_dict(path)
    if model_type is None:
        model_type = infer_sam_model_type(state_dict)
    model = _build_sam_from_state_dict(model_type, state_dict, str(path))
    return model.to(target).eval()

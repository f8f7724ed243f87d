"""Safe image loading: every readable image becomes a C-contiguous uint8 HxWx3 RGB array.

Conversions applied by :func:`load_rgb`:

- EXIF orientation is applied first (``PIL.ImageOps.exif_transpose``), so arrays are upright.
- Alpha is dropped, never composited: RGBA, LA, PA and palette images with a transparent colour keep the
  stored colour of every pixel (``Image.convert("RGB")`` semantics).
- Grayscale (``L``), 1-bit (``1``), palette (``P``), ``CMYK``, ``YCbCr``, ``LAB`` and ``HSV`` go through
  ``Image.convert("RGB")``.
- 16-bit (``I;16``, ``I;16L``, ``I;16B``, ``I;16N``) and 32-bit integer (``I``) gray images are scaled
  linearly from 0..65535 to 0..255 (``round(v / 257)``); ``I`` values outside 0..65535 are clipped first.
- 32-bit float (``F``) gray images are stretched linearly from their finite min..max to 0..255 (a constant
  image becomes 0); NaN and infinite pixels become 0. Float images have no standard range (depth, HDR,
  probabilities), so min/max keeps every image visible instead of saturating most of them.
- Multi-frame files (GIF, TIFF) give their first frame.

Every failure raises :class:`ImageLoadError` naming the path and the reason.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

__all__ = ["ImageLoadError", "downscale_longest_side", "image_size", "load_rgb"]

_SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I"})
# EXIF orientations 5..8 include a 90-degree rotation, which swaps width and height.
_SWAPPING_ORIENTATIONS = frozenset({5, 6, 7, 8})
_EXIF_ORIENTATION_TAG = 0x0112


class ImageLoadError(ValueError):
    """An image file could not be read; the message names the path and the reason."""

    def __init__(self, path: str | os.PathLike, reason: str) -> None:
        self.path = os.fspath(path)
        self.reason = reason
        super().__init__(f"cannot load image {self.path!r}: {reason}")


@contextmanager
def _open(path: str | os.PathLike) -> Iterator[Image.Image]:
    """Open an image lazily, turning every way the header can be unreadable into ImageLoadError."""
    if not os.path.exists(path):
        raise ImageLoadError(path, "file does not exist")
    if not os.path.isfile(path):
        raise ImageLoadError(path, "not a regular file")
    if os.path.getsize(path) == 0:
        raise ImageLoadError(path, "file is empty (0 bytes)")
    try:
        img = Image.open(path)
    except UnidentifiedImageError as e:
        raise ImageLoadError(path, "not a recognised image format") from e
    except Image.DecompressionBombError as e:
        raise ImageLoadError(path, f"image is too large ({e})") from e
    except OSError as e:
        raise ImageLoadError(path, f"cannot read file ({e})") from e
    with img:
        yield img


def load_rgb(path: str | os.PathLike) -> np.ndarray:
    """Load an image file as an upright C-contiguous uint8 HxWx3 RGB array (see the module docstring).

    Raises:
        ImageLoadError: missing, empty, unrecognised, truncated or otherwise undecodable file.
    """
    with _open(path) as img:
        try:
            # Force the full decode here: Image.open only reads the header, so truncation shows up on load().
            img.load()
        except MemoryError:
            raise
        except Exception as e:
            reason = "truncated image data" if "truncated" in str(e).lower() else f"cannot decode image ({e})"
            raise ImageLoadError(path, reason) from e
        img = _upright(img)
        try:
            arr = _to_rgb_array(img)
        except (ValueError, OSError) as e:
            raise ImageLoadError(path, f"unsupported image mode {img.mode!r} ({e})") from e
    return np.ascontiguousarray(arr, dtype=np.uint8)


def _upright(img: Image.Image) -> Image.Image:
    """Apply the EXIF orientation; a malformed EXIF block leaves the image as stored rather than failing."""
    try:
        return ImageOps.exif_transpose(img)
    except Exception:
        return img


def _to_rgb_array(img: Image.Image) -> np.ndarray:
    """Convert a decoded PIL image of any supported mode to an HxWx3 uint8 array."""
    if img.mode == "RGB":
        return np.asarray(img)
    if img.mode in _SIXTEEN_BIT_MODES:
        gray = _scale_16bit(np.asarray(img))
    elif img.mode == "F":
        gray = _scale_float(np.asarray(img))
    else:
        return np.asarray(img.convert("RGB"))
    return np.repeat(gray[:, :, None], 3, axis=2)


def _scale_16bit(values: np.ndarray) -> np.ndarray:
    """Map 0..65535 linearly onto 0..255, rounded (65535 / 257 == 255); values outside are clipped."""
    v = np.clip(values.astype(np.int64), 0, 65535)
    return ((v + 128) // 257).astype(np.uint8)


def _scale_float(values: np.ndarray) -> np.ndarray:
    """Stretch the finite min..max of a float image onto 0..255; non-finite pixels, constant images give 0."""
    v = values.astype(np.float64)
    finite = np.isfinite(v)
    out = np.zeros(v.shape, dtype=np.uint8)
    if not finite.any():
        return out
    lo, hi = v[finite].min(), v[finite].max()
    if hi > lo:
        out[finite] = np.rint((v[finite] - lo) * (255.0 / (hi - lo))).astype(np.uint8)
    return out


def image_size(path: str | os.PathLike) -> tuple[int, int]:
    """Return ``(width, height)`` of an image as :func:`load_rgb` would return it, reading only the header.

    Raises:
        ImageLoadError: missing, empty or unrecognised file (truncated pixel data is not detected here).
    """
    with _open(path) as img:
        width, height = img.size
        try:
            orientation = img.getexif().get(_EXIF_ORIENTATION_TAG)
        except Exception:
            orientation = None
    if orientation in _SWAPPING_ORIENTATIONS:
        return height, width
    return width, height


def downscale_longest_side(image: np.ndarray, max_side: int) -> tuple[np.ndarray, float]:
    """Shrink a uint8 HxW or HxWxC image so its longest side is ``max_side``; return it and the scale applied.

    The scale is ``max_side / longest_side`` (exact on the longest side; the other is rounded, at least 1).
    Images already no larger than ``max_side`` are returned unchanged (the same object) with scale 1.0.
    Resampling is PIL's antialiased bilinear filter.
    """
    if max_side < 1:
        raise ValueError(f"max_side must be a positive integer, got {max_side}")
    if image.dtype != np.uint8 or image.ndim not in (2, 3):
        raise ValueError(f"expected a uint8 HxW or HxWxC image, got {image.dtype} {image.shape}")
    height, width = image.shape[:2]
    longest = max(height, width)
    if longest <= max_side:
        return image, 1.0
    scale = max_side / longest
    new_w = max(1, round(width * scale))
    new_h = max(1, round(height * scale))
    if image.ndim == 3 and image.shape[2] not in (3, 4):
        channels = [_resize_plane(image[:, :, c], new_w, new_h) for c in range(image.shape[2])]
        return np.ascontiguousarray(np.stack(channels, axis=2)), scale
    return _resize_plane(image, new_w, new_h), scale


def _resize_plane(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """Resize a uint8 image PIL understands (HxW, HxWx3 or HxWx4) with antialiased bilinear filtering."""
    pil = Image.fromarray(np.ascontiguousarray(image))
    return np.asarray(pil.resize((width, height), Image.Resampling.BILINEAR)).copy()

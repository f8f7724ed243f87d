"""Tests for samseg_core.images: every image kind gives upright uint8 RGB; bad files raise ImageLoadError."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from samseg_core.images import ImageLoadError, downscale_longest_side, image_size, load_rgb

RED = (255, 0, 0)
BLUE = (0, 0, 255)


def _save(img: Image.Image, path: Path, **kwargs) -> Path:
    img.save(path, **kwargs)
    return path


def _assert_rgb(arr: np.ndarray, height: int, width: int) -> None:
    assert arr.dtype == np.uint8
    assert arr.shape == (height, width, 3)
    assert arr.flags.c_contiguous


def _red_left_blue_right(width: int = 32, height: int = 16) -> Image.Image:
    img = Image.new("RGB", (width, height), BLUE)
    img.paste(Image.new("RGB", (width // 2, height), RED), (0, 0))
    return img


def _exif_rotated_jpeg(tmp_path: Path) -> Path:
    img = _red_left_blue_right()
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    return _save(img, tmp_path / "rot.jpg", exif=exif, quality=100)


def test_rgb_png_values_kept(tmp_path):
    pixels = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
    arr = load_rgb(_save(Image.fromarray(pixels), tmp_path / "a.png"))
    _assert_rgb(arr, 2, 3)
    np.testing.assert_array_equal(arr, pixels)


def test_str_path_accepted(tmp_path):
    path = _save(Image.new("RGB", (2, 1), RED), tmp_path / "a.png")
    assert load_rgb(str(path)).shape == (1, 2, 3)


def test_exif_orientation_6_rotates_clockwise(tmp_path):
    arr = load_rgb(_exif_rotated_jpeg(tmp_path))
    _assert_rgb(arr, 32, 16)
    # Stored left half (red) is on top once rotated 90 degrees clockwise.
    np.testing.assert_allclose(arr[8, 8], RED, atol=8)
    np.testing.assert_allclose(arr[24, 8], BLUE, atol=8)


def test_image_size_honours_exif(tmp_path):
    assert image_size(_exif_rotated_jpeg(tmp_path)) == (16, 32)


def test_image_size_without_exif(tmp_path):
    assert image_size(_save(Image.new("RGB", (5, 3)), tmp_path / "a.png")) == (5, 3)


def test_grayscale_l_repeated_to_three_channels(tmp_path):
    img = Image.fromarray(np.array([[0, 128, 255]], dtype=np.uint8), mode="L")
    arr = load_rgb(_save(img, tmp_path / "l.png"))
    _assert_rgb(arr, 1, 3)
    np.testing.assert_array_equal(arr[0], [[0, 0, 0], [128, 128, 128], [255, 255, 255]])


def test_la_drops_alpha(tmp_path):
    arr = load_rgb(_save(Image.new("LA", (1, 1), (100, 0)), tmp_path / "la.png"))
    np.testing.assert_array_equal(arr, [[[100, 100, 100]]])


def test_rgba_drops_alpha_without_compositing(tmp_path):
    arr = load_rgb(_save(Image.new("RGBA", (2, 2), (10, 20, 30, 0)), tmp_path / "rgba.png"))
    _assert_rgb(arr, 2, 2)
    np.testing.assert_array_equal(arr[1, 1], [10, 20, 30])


def test_palette_maps_to_palette_colours(tmp_path):
    img = Image.new("P", (2, 1))
    img.putpalette([*RED, *BLUE])
    img.putpixel((1, 0), 1)
    arr = load_rgb(_save(img, tmp_path / "p.png"))
    np.testing.assert_array_equal(arr[0], [RED, BLUE])


def test_palette_transparency_keeps_colour(tmp_path):
    img = Image.new("P", (1, 1))
    img.putpalette([*RED])
    arr = load_rgb(_save(img, tmp_path / "pt.png", transparency=0))
    np.testing.assert_array_equal(arr[0, 0], RED)


def test_16bit_png_scaled_not_clipped(tmp_path):
    img = Image.fromarray(np.array([[0, 25700, 1000, 65535]], dtype=np.uint16))
    assert img.mode == "I;16"
    arr = load_rgb(_save(img, tmp_path / "g16.png"))
    _assert_rgb(arr, 1, 4)
    np.testing.assert_array_equal(arr[0, :, 0], [0, 100, 4, 255])
    np.testing.assert_array_equal(arr[..., 0], arr[..., 2])


def test_16bit_big_endian_tiff_scaled(tmp_path):
    img = Image.frombytes("I;16B", (2, 1), np.array([25700, 65535], dtype=">u2").tobytes())
    arr = load_rgb(_save(img, tmp_path / "g16b.tif"))
    np.testing.assert_array_equal(arr[0, :, 0], [100, 255])


def test_int32_mode_i_scaled_as_16bit_and_clipped(tmp_path):
    img = Image.fromarray(np.array([[-5, 25700, 70000]], dtype=np.int32), mode="I")
    arr = load_rgb(_save(img, tmp_path / "i32.tif"))
    np.testing.assert_array_equal(arr[0, :, 0], [0, 100, 255])


def test_float_image_stretched_min_to_max(tmp_path):
    img = Image.fromarray(np.array([[-1.0, 0.0, 1.0, np.nan]], dtype=np.float32), mode="F")
    arr = load_rgb(_save(img, tmp_path / "f.tif"))
    np.testing.assert_array_equal(arr[0, :, 0], [0, 128, 255, 0])


def test_constant_float_image_is_black(tmp_path):
    img = Image.fromarray(np.full((1, 2), 7.5, dtype=np.float32), mode="F")
    arr = load_rgb(_save(img, tmp_path / "fc.tif"))
    np.testing.assert_array_equal(arr, np.zeros((1, 2, 3), dtype=np.uint8))


def test_cmyk_jpeg_converted_to_rgb(tmp_path):
    arr = load_rgb(_save(Image.new("CMYK", (8, 8), (0, 255, 255, 0)), tmp_path / "c.jpg", quality=100))
    _assert_rgb(arr, 8, 8)
    np.testing.assert_allclose(arr[4, 4], RED, atol=8)


def test_one_bit_image_black_and_white(tmp_path):
    img = Image.new("1", (2, 1), 0)
    img.putpixel((1, 0), 1)
    arr = load_rgb(_save(img, tmp_path / "b.png"))
    np.testing.assert_array_equal(arr[0], [[0, 0, 0], [255, 255, 255]])


def test_one_by_one_image(tmp_path):
    arr = load_rgb(_save(Image.new("RGB", (1, 1), BLUE), tmp_path / "1x1.png"))
    _assert_rgb(arr, 1, 1)
    np.testing.assert_array_equal(arr[0, 0], BLUE)


def test_missing_file_raises_with_path(tmp_path):
    path = tmp_path / "nope.png"
    with pytest.raises(ImageLoadError, match="does not exist") as info:
        load_rgb(path)
    assert str(path) in str(info.value)


def test_zero_byte_file_raises(tmp_path):
    path = tmp_path / "empty.png"
    path.write_bytes(b"")
    with pytest.raises(ImageLoadError, match="empty") as info:
        load_rgb(path)
    assert str(path) in str(info.value)


def test_text_named_png_raises(tmp_path):
    path = tmp_path / "text.png"
    path.write_text("this is not an image\n")
    with pytest.raises(ImageLoadError, match="not a recognised image") as info:
        load_rgb(path)
    assert str(path) in str(info.value)


def test_directory_raises(tmp_path):
    with pytest.raises(ImageLoadError, match="not a regular file"):
        load_rgb(tmp_path)


def test_truncated_jpeg_raises(tmp_path):
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    path = _save(Image.fromarray(noise), tmp_path / "cut.jpg", quality=95)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageLoadError, match="truncated") as info:
        load_rgb(path)
    assert str(path) in str(info.value)


def test_image_size_missing_file_raises(tmp_path):
    with pytest.raises(ImageLoadError):
        image_size(tmp_path / "nope.png")


def test_downscale_longest_side_halves():
    image = np.zeros((40, 100, 3), dtype=np.uint8)
    small, scale = downscale_longest_side(image, 50)
    assert small.shape == (20, 50, 3)
    assert small.dtype == np.uint8
    assert scale == 0.5


def test_downscale_keeps_colour():
    image = np.full((30, 60, 3), (10, 200, 30), dtype=np.uint8)
    small, _ = downscale_longest_side(image, 20)
    assert small.shape == (10, 20, 3)
    np.testing.assert_array_equal(small[5, 10], (10, 200, 30))


def test_downscale_noop_when_small():
    image = np.zeros((40, 50, 3), dtype=np.uint8)
    same, scale = downscale_longest_side(image, 50)
    assert same is image
    assert scale == 1.0


def test_downscale_rejects_non_positive_side():
    with pytest.raises(ValueError, match="max_side"):
        downscale_longest_side(np.zeros((4, 4, 3), dtype=np.uint8), 0)

"""A corpus of hostile inputs: broken files, unusual image modes, extreme sizes and inconsistent labels.

:func:`write_hostile_corpus` writes the files and returns one :class:`HostileEntry` per sample to create, with
the facts a test needs: whether the image can be read at all, its upright size, and the ground truth and
"coarse" prediction (class-id maps) to attach. No FiftyOne here: tests build their datasets from the entries.

Entries (``name``):

- unreadable: ``missing_file`` (path that does not exist), ``zero_bytes``, ``truncated_jpeg`` (half the bytes),
  ``text_as_png`` (a text file named ``.png``);
- unusual but valid: ``grayscale`` (L), ``rgba``, ``palette`` (P), ``png_16bit`` (I;16), ``cmyk_jpeg``,
  ``exif_rotated`` (a landscape JPEG with EXIF orientation 6, upright it is portrait), ``one_pixel`` (1x1),
  ``very_large`` (``large_size``, 4000x6000 by default);
- inconsistent labels on a valid image: ``gt_wrong_size`` (ground truth smaller than the image and the
  prediction), ``prediction_wrong_size`` (the prediction smaller than the image and the ground truth),
  ``unknown_classes`` (ids absent from the mask targets, in both labels), ``no_labels`` (neither field);
- ``scene_<k>``: ordinary synthetic scenes, the control group.
"""

from __future__ import annotations

import os
import pathlib
from dataclasses import dataclass

import numpy as np
from PIL import Image

from samseg_core.testing.scenes import degrade_prediction, make_scene

#: Class ids written into ``unknown_classes`` labels (none of them is a scene class).
UNKNOWN_CLASS_IDS = (77, 250)
UNREADABLE = ("missing_file", "zero_bytes", "truncated_jpeg", "text_as_png")
UNUSUAL_VALID = (
    "grayscale",
    "rgba",
    "palette",
    "png_16bit",
    "cmyk_jpeg",
    "exif_rotated",
    "one_pixel",
    "very_large",
)
LABEL_PROBLEMS = ("gt_wrong_size", "prediction_wrong_size", "unknown_classes", "no_labels")
_EXIF_ORIENTATION = 0x0112


@dataclass
class HostileEntry:
    """One sample of the hostile corpus.

    Attributes:
        name: what is hostile about it (see the module docstring).
        filepath: its image file (may not exist).
        readable: whether :func:`samseg_core.images.load_rgb` can decode it.
        size: ``(height, width)`` of the upright decoded image, or None when unreadable.
        ground_truth: ``(h, w)`` class ids to store as ground truth, or None for no label.
        prediction: ``(h, w)`` class ids to store as an existing (coarse) prediction, or None.
    """

    name: str
    filepath: str
    readable: bool
    size: tuple[int, int] | None
    ground_truth: np.ndarray | None = None
    prediction: np.ndarray | None = None

    @property
    def labels_consistent(self) -> bool:
        """Whether both labels exist, match the image size and use only scene classes."""
        if self.ground_truth is None or self.prediction is None or self.size is None:
            return False
        if self.ground_truth.shape != self.size or self.prediction.shape != self.size:
            return False
        return not np.isin(self.ground_truth, UNKNOWN_CLASS_IDS).any()


def _scene_arrays(
    seed: int, size: tuple[int, int], num_classes: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    scene = make_scene(seed, size=size, num_classes=num_classes)
    return scene.image, scene.semantic.astype(np.int32), degrade_prediction(scene, seed=seed)


def _labelled(
    name: str, path: pathlib.Path, image: np.ndarray, gt: np.ndarray, pred: np.ndarray
) -> HostileEntry:
    return HostileEntry(name, str(path), True, image.shape[:2], gt, pred)


def _upscale(array: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of an HxW(xC) array to ``size`` (exact when ``size`` is a multiple)."""
    rows = np.arange(size[0]) * array.shape[0] // size[0]
    cols = np.arange(size[1]) * array.shape[1] // size[1]
    return np.ascontiguousarray(array[rows][:, cols])


def write_hostile_corpus(
    out_dir: str | os.PathLike,
    *,
    num_scenes: int = 3,
    scene_size: tuple[int, int] = (96, 112),
    large_size: tuple[int, int] = (4000, 6000),
    num_classes: int = 6,
    seed: int = 0,
) -> list[HostileEntry]:
    """Writes the hostile corpus under ``out_dir`` and returns its entries (control scenes first).

    Args:
        out_dir: directory for the files (created).
        num_scenes: ordinary scenes in the control group.
        scene_size: ``(H, W)`` of the scenes and of most unusual images (at least 96x96).
        large_size: ``(H, W)`` of ``very_large``.
        num_classes: classes of the scenes (ids ``0..num_classes-1``).
        seed: seed of the scenes.
    """
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    entries: list[HostileEntry] = []

    for k in range(num_scenes):
        image, gt, pred = _scene_arrays(seed + k, scene_size, num_classes)
        path = out / f"scene_{k}.png"
        Image.fromarray(image).save(path)
        entries.append(_labelled(f"scene_{k}", path, image, gt, pred))

    # unreadable files (labels attached, so that only the image is at fault)
    image, gt, pred = _scene_arrays(seed + 100, scene_size, num_classes)
    entries.append(HostileEntry("missing_file", str(out / "missing_file.png"), False, None, gt, pred))
    (out / "zero_bytes.png").write_bytes(b"")
    entries.append(HostileEntry("zero_bytes", str(out / "zero_bytes.png"), False, None, gt, pred))
    Image.fromarray(image).save(out / "full.jpg", quality=90)
    data = (out / "full.jpg").read_bytes()
    (out / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (out / "full.jpg").unlink()
    entries.append(HostileEntry("truncated_jpeg", str(out / "truncated.jpg"), False, None, gt, pred))
    (out / "text_as_png.png").write_text("this is not an image\n")
    entries.append(HostileEntry("text_as_png", str(out / "text_as_png.png"), False, None, gt, pred))

    # unusual modes that must decode (each from its own scene)
    modes = {
        "grayscale": ("png", lambda im: Image.fromarray(im).convert("L")),
        "rgba": ("png", lambda im: Image.fromarray(np.dstack([im, np.full(im.shape[:2], 128, np.uint8)]))),
        "palette": ("png", lambda im: Image.fromarray(im).convert("P")),
        "png_16bit": ("png", lambda im: Image.fromarray(im.mean(axis=2).astype(np.uint16) * 257)),
        "cmyk_jpeg": ("jpg", lambda im: Image.fromarray(im).convert("CMYK")),
    }
    for offset, (name, (ext, convert)) in enumerate(modes.items()):
        image, gt, pred = _scene_arrays(seed + 200 + offset, scene_size, num_classes)
        path = out / f"{name}.{ext}"
        convert(image).save(path, **({"quality": 95} if ext == "jpg" else {}))
        entries.append(_labelled(name, path, image, gt, pred))

    # stored landscape with EXIF orientation 6 (rotate 90 clockwise to view): upright it is portrait
    image, gt, pred = _scene_arrays(seed + 300, scene_size, num_classes)
    stored = np.ascontiguousarray(np.rot90(image, k=1))  # rotating the stored pixels 90 cw restores `image`
    exif = Image.Exif()
    exif[_EXIF_ORIENTATION] = 6
    path = out / "exif_rotated.jpg"
    Image.fromarray(stored).save(path, quality=95, exif=exif)
    entries.append(_labelled("exif_rotated", path, image, gt, pred))

    path = out / "one_pixel.png"
    Image.fromarray(np.array([[[200, 30, 30]]], np.uint8)).save(path)
    entries.append(
        HostileEntry(
            "one_pixel", str(path), True, (1, 1), np.zeros((1, 1), np.int32), np.zeros((1, 1), np.int32)
        )
    )

    small = (max(96, large_size[0] // 10), max(96, large_size[1] // 10))
    image, gt, pred = _scene_arrays(seed + 400, small, num_classes)
    path = out / "very_large.jpg"
    Image.fromarray(_upscale(image, large_size)).save(path, quality=85)
    entries.append(
        HostileEntry(
            "very_large", str(path), True, large_size, _upscale(gt, large_size), _upscale(pred, large_size)
        )
    )

    # valid images whose labels are inconsistent
    half = (scene_size[0] // 2, scene_size[1] // 2)
    for offset, name in enumerate(("gt_wrong_size", "prediction_wrong_size")):
        image, gt, pred = _scene_arrays(seed + 500 + offset, scene_size, num_classes)
        path = out / f"{name}.png"
        Image.fromarray(image).save(path)
        if name == "gt_wrong_size":
            gt = np.ascontiguousarray(gt[: half[0], : half[1]])
        else:
            pred = np.ascontiguousarray(pred[: half[0], : half[1]])
        entries.append(HostileEntry(name, str(path), True, scene_size, gt, pred))

    image, gt, pred = _scene_arrays(seed + 600, scene_size, num_classes)
    path = out / "unknown_classes.png"
    Image.fromarray(image).save(path)
    gt, pred = gt.copy(), pred.copy()
    gt[: scene_size[0] // 3] = UNKNOWN_CLASS_IDS[0]
    gt[-scene_size[0] // 4 :] = UNKNOWN_CLASS_IDS[1]
    pred[: scene_size[0] // 3] = UNKNOWN_CLASS_IDS[0]
    entries.append(_labelled("unknown_classes", path, image, gt, pred))

    image, _, _ = _scene_arrays(seed + 700, scene_size, num_classes)
    path = out / "no_labels.png"
    Image.fromarray(image).save(path)
    entries.append(HostileEntry("no_labels", str(path), True, scene_size, None, None))
    return entries

"""Deterministic synthetic scenes with ground truth, and degraded "user model" predictions of them."""

from __future__ import annotations

import colorsys
import os
import pathlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

BACKGROUND, SKY, GROUND = 0, 1, 2
STUFF_NAMES = {BACKGROUND: "background", SKY: "sky", GROUND: "ground"}
THING_NAMES = ["car", "person", "tree", "sign", "dog", "bicycle", "bird", "bottle"]
# Mean colours far apart in RGB, so that colour alone separates the classes.
PALETTE = [
    (128, 128, 128),  # background
    (110, 165, 235),  # sky
    (125, 85, 45),  # ground
    (225, 35, 35),  # car
    (35, 200, 60),  # person
    (240, 215, 30),  # tree
    (200, 40, 210),  # sign
    (30, 215, 215),  # dog
    (255, 140, 10),  # bicycle
    (25, 35, 150),  # bird
    (250, 250, 250),  # bottle
]


@dataclass
class Instance:
    """One object of a scene: its class and its visible (occlusion-aware) pixels."""

    class_id: int
    mask: np.ndarray
    kind: str = "object"

    @property
    def area(self) -> int:
        """Number of visible pixels."""
        return int(self.mask.sum())


@dataclass
class SyntheticScene:
    """An RGB image with per-pixel ground truth (0 = background) and its object instances."""

    image: np.ndarray
    semantic: np.ndarray
    instances: list[Instance]
    class_names: dict[int, str]
    seed: int = 0
    stuff_classes: tuple[int, ...] = field(default=(BACKGROUND, SKY, GROUND))

    @property
    def thing_classes(self) -> list[int]:
        """Class ids of countable objects (everything but background and stuff)."""
        return [c for c in self.class_names if c not in self.stuff_classes]


def class_colors(num_classes: int) -> np.ndarray:
    """Return ``(num_classes, 3)`` mean colours, one distinct colour per class."""
    colors = list(PALETTE[:num_classes])
    for k in range(len(colors), num_classes):
        hue = (k * 0.618033988749895) % 1.0  # golden-ratio hues stay spread out
        colors.append(tuple(int(255 * c) for c in colorsys.hsv_to_rgb(hue, 0.8, 0.9)))
    return np.asarray(colors, dtype=np.float32)


def class_names_for(num_classes: int) -> dict[int, str]:
    """Return the class names of a scene with ``num_classes`` classes: background, sky, ground, things."""
    names = dict(STUFF_NAMES)
    for c in range(3, num_classes):
        k = c - 3
        names[c] = THING_NAMES[k] if k < len(THING_NAMES) else f"thing_{c}"
    return names


def _rotated(yy: np.ndarray, xx: np.ndarray, center: tuple[float, float], angle: float):
    dy, dx = yy - center[0], xx - center[1]
    cos, sin = np.cos(angle), np.sin(angle)
    return dx * cos + dy * sin, -dx * sin + dy * cos


def _ellipse(yy, xx, center, radii, angle=0.0) -> np.ndarray:
    u, v = _rotated(yy, xx, center, angle)
    return (u / radii[1]) ** 2 + (v / radii[0]) ** 2 <= 1.0


def _rectangle(yy, xx, center, half_sizes, angle=0.0) -> np.ndarray:
    u, v = _rotated(yy, xx, center, angle)
    return (np.abs(u) <= half_sizes[1]) & (np.abs(v) <= half_sizes[0])


def _mask_box(mask: np.ndarray) -> tuple[int, int, int, int]:
    rows, cols = np.nonzero(mask)
    return int(rows.min()), int(cols.min()), int(rows.max()) + 1, int(cols.max()) + 1


def _boxes_overlap(a: tuple[int, int, int, int], b: tuple[int, int, int, int], margin: int = 2) -> bool:
    return not (
        a[2] + margin <= b[0] or b[2] + margin <= a[0] or a[3] + margin <= b[1] or b[3] + margin <= a[1]
    )


def _smooth_noise(
    rng: np.random.Generator, shape: tuple[int, int], sigma: float, amplitude: float
) -> np.ndarray:
    noise = ndimage.gaussian_filter(rng.standard_normal(shape), sigma)
    return noise / (noise.std() + 1e-8) * amplitude


def make_scene(seed: int, size: tuple[int, int] = (128, 160), num_classes: int = 6) -> SyntheticScene:
    """Return a deterministic synthetic scene.

    Layout: a textured sky band on top, a textured ground band at the bottom, background between; over
    them ellipses and rectangles (two per thing class) and four special objects in reserved areas: a ring (an
    object with a hole), an occluded object with a later object partly over it, a small object (~16 px), and a
    thin bar (3 px wide). Each class has its own mean colour (plus noise and per-object shading); later
    objects occlude earlier ones, so ground truth and instance masks hold the visible pixels only.

    Args:
        seed: Seed; the same seed always gives the same scene.
        size: ``(H, W)``; at least ``(96, 96)``.
        num_classes: Classes including background, sky and ground; at least 4.
    """
    height, width = size
    if height < 96 or width < 96:
        raise ValueError(f"size must be at least (96, 96), got {size}")
    if num_classes < 4:
        raise ValueError(
            f"num_classes must be at least 4 (background, sky, ground, one thing), got {num_classes}"
        )
    rng = np.random.default_rng(seed)
    names = class_names_for(num_classes)
    things = list(range(3, num_classes))
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32) + 0.5

    semantic = np.zeros((height, width), np.int32)
    sky_end = int(height * rng.uniform(0.2, 0.3))
    ground_start = int(height * rng.uniform(0.65, 0.75))
    horizon_wobble = _smooth_noise(rng, (1, width), 6, 2.0)[0]
    semantic[yy < sky_end + horizon_wobble] = SKY
    semantic[yy >= ground_start + horizon_wobble] = GROUND

    # Special objects each get a cell of a 2x3 grid; regular objects avoid their boxes.
    cell_h, cell_w = height // 2, width // 3
    cells = [(r * cell_h, c * cell_w, (r + 1) * cell_h, (c + 1) * cell_w) for r in range(2) for c in range(3)]
    ring_cell, pair_cell, small_cell, thin_cell = (cells[i] for i in rng.permutation(len(cells))[:4])

    def cell_center(cell, jitter: float) -> tuple[float, float]:
        cy = (cell[0] + cell[2]) / 2 + rng.uniform(-jitter, jitter) * (cell[2] - cell[0])
        cx = (cell[1] + cell[3]) / 2 + rng.uniform(-jitter, jitter) * (cell[3] - cell[1])
        return cy, cx

    def pick(i: int) -> int:
        return things[i % len(things)]

    specials: list[tuple[int, np.ndarray, str]] = []
    cy, cx = cell_center(ring_cell, 0.1)
    radius = 0.38 * min(cell_h, cell_w)
    ring = _ellipse(yy, xx, (cy, cx), (radius, radius)) & ~_ellipse(
        yy, xx, (cy, cx), (radius * 0.5, radius * 0.5)
    )
    specials.append((pick(0), ring, "ring"))

    cy, cx = cell_center(pair_cell, 0.05)
    radius = 0.28 * min(cell_h, cell_w)
    specials.append((pick(1), _ellipse(yy, xx, (cy, cx), (radius, radius * 1.2)), "occluded"))
    occluder = _rectangle(yy, xx, (cy + radius * 0.7, cx + radius * 0.9), (radius * 0.6, radius * 0.6))
    specials.append((pick(2), occluder, "occluder"))

    cy, cx = cell_center(small_cell, 0.3)
    specials.append((pick(3), _rectangle(yy, xx, (cy, cx), (2.0, 2.0)), "small"))

    cy, cx = cell_center(thin_cell, 0.1)
    half_len = 0.42 * min(cell_h * 1.5, cell_w)
    specials.append((pick(4), _rectangle(yy, xx, (cy, cx), (1.5, half_len), rng.uniform(-0.5, 0.5)), "thin"))

    boxes = [_mask_box(mask) for _, mask, _ in specials]
    regulars: list[tuple[int, np.ndarray, str]] = []
    for k, cls in enumerate([c for c in things for _ in range(2)]):
        for attempt in range(300):
            scale = 1.0 if attempt < 150 else 0.6
            ry = rng.uniform(6, 12) * scale * height / 128
            rx = rng.uniform(6, 12) * scale * width / 160
            cy, cx = rng.uniform(0, height), rng.uniform(0, width)
            reach = 1.12 * max(ry, rx)  # covers the rotated shape
            box = (int(cy - reach), int(cx - reach), int(cy + reach) + 1, int(cx + reach) + 1)
            if not any(_boxes_overlap(box, other) for other in boxes):
                break
        else:
            continue
        boxes.append(box)
        if k % 2 == 0:
            regulars.append((cls, _ellipse(yy, xx, (cy, cx), (ry, rx), rng.uniform(0, np.pi)), "ellipse"))
        else:
            mask = _rectangle(yy, xx, (cy, cx), (ry * 0.8, rx * 0.8), rng.uniform(-0.4, 0.4))
            regulars.append((cls, mask, "rectangle"))
    painted = regulars + specials

    owner = np.full((height, width), -1, np.int32)
    for idx, (cls, mask, _) in enumerate(painted):
        semantic[mask] = cls
        owner[mask] = idx
    instances = [
        Instance(cls, owner == idx, kind)
        for idx, (cls, _, kind) in enumerate(painted)
        if (owner == idx).any()
    ]

    colors = class_colors(num_classes)
    image = colors[semantic].copy()
    for stuff in (SKY, GROUND):
        region = semantic == stuff
        image[region] += _smooth_noise(rng, (height, width), 2.0, 10.0)[region, None]
    for inst in instances:
        image[inst.mask] += rng.uniform(-12, 12, size=3).astype(np.float32)
    image += rng.normal(0.0, 6.0, size=image.shape).astype(np.float32)
    image = np.clip(np.rint(image), 0, 255).astype(np.uint8)
    return SyntheticScene(image=image, semantic=semantic, instances=instances, class_names=names, seed=seed)


def make_scenes(
    n: int, seed: int = 0, size: tuple[int, int] = (128, 160), num_classes: int = 6
) -> list[SyntheticScene]:
    """Return ``n`` scenes made with seeds ``seed, seed + 1, ...`` (see :func:`make_scene`)."""
    return [make_scene(seed + i, size=size, num_classes=num_classes) for i in range(n)]


def _instances_of(scene_or_semantic: SyntheticScene | np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
    if isinstance(scene_or_semantic, SyntheticScene):
        stuff = scene_or_semantic.stuff_classes
        masks = [inst.mask for inst in scene_or_semantic.instances if inst.class_id not in stuff]
        return scene_or_semantic.semantic, masks
    semantic = np.asarray(scene_or_semantic)
    masks = []
    for cls in np.unique(semantic):
        if cls == BACKGROUND:
            continue
        components, count = ndimage.label(semantic == cls)
        masks.extend(components == i for i in range(1, count + 1))
    return semantic, masks


def _majority_filter(labels: np.ndarray, radius: int) -> np.ndarray:
    classes = np.unique(labels)
    size = 2 * radius + 1
    votes = np.stack(
        [ndimage.uniform_filter((labels == c).astype(np.float32), size, mode="nearest") for c in classes]
    )
    return classes[np.argmax(votes, axis=0)].astype(labels.dtype)


def displaced(labels: np.ndarray, dy: np.ndarray, dx: np.ndarray) -> np.ndarray:
    """``labels`` read through a per-pixel displacement ``(dy, dx)``, rounded to whole pixels and clipped to
    the image (how a baseline's boundaries wobble)."""
    height, width = labels.shape
    yy, xx = np.mgrid[0:height, 0:width]
    src_y = np.clip(np.rint(yy + dy), 0, height - 1).astype(np.intp)
    src_x = np.clip(np.rint(xx + dx), 0, width - 1).astype(np.intp)
    return labels[src_y, src_x]


def degrade_prediction(
    scene_or_semantic: SyntheticScene | np.ndarray,
    seed: int = 0,
    *,
    blur_radius: int = 3,
    drop_small_below: int = 0,
    missing_instances: int = 0,
    merge_neighbors: bool = False,
) -> np.ndarray:
    """Return a coarse, deterministic "user model" prediction of a scene's ground truth.

    Steps, in order: ``missing_instances`` randomly chosen objects become background (missed objects);
    with ``merge_neighbors`` every thing class is closed with a disk of radius ``2 * blur_radius + 4`` so
    nearby objects of one class merge (grouping errors); a majority filter of radius ``blur_radius`` rounds
    corners and erases thin structures; a smooth random displacement of about ``blur_radius / 2`` px makes
    boundaries wobble; finally connected regions smaller than ``drop_small_below`` pixels become background.

    Args:
        scene_or_semantic: A :class:`SyntheticScene`, or an ``(H, W)`` label map (objects are then its
            connected components of non-zero classes).
        seed: Seed of the random choices.
        blur_radius: Strength of the boundary degradation in pixels (0 disables filter and displacement).
        drop_small_below: Minimum area of a predicted region; smaller ones become background.
        missing_instances: Number of objects dropped entirely.
        merge_neighbors: Whether nearby objects of the same class merge.

    Returns:
        ``(H, W)`` int32 label map.
    """
    semantic, instance_masks = _instances_of(scene_or_semantic)
    rng = np.random.default_rng(seed)
    pred = semantic.astype(np.int32).copy()
    stuff = (
        set(scene_or_semantic.stuff_classes)
        if isinstance(scene_or_semantic, SyntheticScene)
        else {BACKGROUND}
    )

    if missing_instances > 0 and instance_masks:
        chosen = rng.choice(
            len(instance_masks), size=min(missing_instances, len(instance_masks)), replace=False
        )
        for i in sorted(chosen):
            pred[instance_masks[i]] = BACKGROUND

    if merge_neighbors:
        radius = 2 * blur_radius + 4
        disk = np.hypot(*np.mgrid[-radius : radius + 1, -radius : radius + 1]) <= radius
        for cls in np.unique(pred):
            if cls in stuff:
                continue
            closed = ndimage.binary_closing(pred == cls, structure=disk, border_value=0)
            pred[closed] = cls

    if blur_radius > 0:
        pred = _majority_filter(pred, blur_radius)
        height, width = pred.shape
        amplitude = max(1.0, blur_radius / 2)
        dy = _smooth_noise(rng, (height, width), 4.0, amplitude)
        dx = _smooth_noise(rng, (height, width), 4.0, amplitude)
        pred = displaced(pred, dy, dx)

    if drop_small_below > 0:
        for cls in np.unique(pred):
            if cls == BACKGROUND:
                continue
            components, count = ndimage.label(pred == cls)
            areas = np.bincount(components.ravel(), minlength=count + 1)
            small = areas < drop_small_below
            small[0] = False
            pred[small[components]] = BACKGROUND
    return pred.astype(np.int32)


def write_scene_images(
    scenes: Iterable[SyntheticScene], out_dir: str | os.PathLike, *, prefix: str = "scene"
) -> list[pathlib.Path]:
    """Write each scene's RGB image as ``<prefix>_<index:04d>.png`` under ``out_dir``; return the paths."""
    from PIL import Image

    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, scene in enumerate(scenes):
        path = out / f"{prefix}_{i:04d}.png"
        Image.fromarray(np.asarray(scene.image, np.uint8)).save(path)
        paths.append(path)
    return paths


def scene_stats(scenes: Sequence[SyntheticScene]) -> dict[str, int]:
    """Return counts of instance kinds over scenes (handy to check a scene set covers every failure case)."""
    counts: dict[str, int] = {}
    for scene in scenes:
        for inst in scene.instances:
            counts[inst.kind] = counts.get(inst.kind, 0) + 1
    return counts

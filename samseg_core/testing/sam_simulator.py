"""A seeded SAM simulator: a promptable model and an automatic mask source that answer from a scene's ground truth.

Real SAM weights cannot be had on the machines samseg is tested on, and random weights give noise. The simulator
stands in for SAM with an *explicit* error model, so that benchmarks of refinement and voting measure how the
methods react to SAM-like errors. Its numbers are never the quality of any real model.

**The world.** A registered :class:`~samseg_core.testing.scenes.SyntheticScene` is cut into *regions*: every
instance of ``scene.instances`` (its visible pixels), then every connected component (4-connected) of each stuff
class among the remaining pixels. Each region has *pieces*: things are halved across their major axis, stuff is
cut into ``stuff_pieces`` strips along it; regions under :data:`MIN_SPLIT_AREA` pixels are one piece. Two regions
*touch* when at least :data:`MIN_CONTACT` 4-neighbour pixel pairs join them.

**A prompt** (points with labels 1 / 0 / -1, a box, a low-res mask hint; :meth:`SimulatedSam.answer`) names a
*target*, a set of regions: the regions under the foreground points; with a box, only those among them that
overlap it, or (box without points) the fewest regions lying at least :data:`BOX_INSIDE` inside the box whose union's
box matches it best (greedy); with only a mask hint, the regions it covers at least half of. Regions under
background points are never in it. The three multimask outputs are, smallest first: ``part`` (the piece under the
first point of a one-region target, else its first region), ``whole`` (the target), ``merged`` (the target plus
every region of the same kind, thing or stuff, touching it).

**Errors** (:class:`SimulatorErrors`; all zero: every output equals its ground truth exactly, the target's mask
ranks first, predicted IoU and stability are the true quality):

- ``boundary_flip``: a foreground point within ``boundary_band`` px of another region lands on that region with this
  probability (a mask hint covering less than half of that region prevents it);
- ``box_union``: probability that a box returns the union of *every* region lying inside it, not only the ones the
  target needs (a mask hint keeps only the extra regions it covers);
- ``leakage_px``: each output grows up to this many px into adjacent regions whose mean colour is within
  ``similar_color`` (RGB distance) of one of its own regions;
- ``smoothing_px``: a morphological opening then closing with a disk of this radius: structures thinner than about
  twice it and holes smaller than that are lost;
- ``jitter_px``: the boundary moves by a smooth random displacement (correlation length
  :data:`JITTER_CORRELATION_PX`) whose mean absolute value is this many px. The displacement field belongs to the
  scene: every prompt and every automatic mask of one scene sees the same one, as a real SAM's boundary errors come
  from the image embedding that all prompts of an image share (so combining several prompts cannot average them
  away);
- ``score_noise``: predicted IoU = true quality (IoU of the output with its error-free mask) minus a small
  granularity penalty (:data:`RANK_PENALTY`; the target's own mask ranks first) plus Gaussian noise of this std;
  stability likewise (the logits' slope is set so that SAM's stability score, thresholds +/-1, comes close to it);
- ``wrong_ranking``: probability that the top predicted IoU is swapped onto another output;
- ``amg_part_rate`` / ``amg_merge_rate`` / ``amg_miss_rate`` / ``amg_stuff_split``: :class:`SimulatedMaskSource`
  also proposes a region's pieces, proposes the union of a touching group of things, drops a thing's own mask,
  proposes a stuff region as its pieces instead of whole, each with this probability.

Every random draw comes from a generator seeded with ``(seed, scene, prompt)`` (the jitter field: ``(seed, scene)``):
the same prompt on the same scene always gives the same answer, whatever the batch it comes in.

**Resolution.** :class:`SimulatedSam` computes masks at image resolution. By default its ``input_size`` is four times
the longest side of its first scene, so the low-res frame (``input_size // 4``) holds the image at one low-res
pixel per image pixel and :meth:`SimulatedSam.upscale` (overridden: a crop, then nearest resampling) returns the
exact full-resolution logits; images of another size go through nearest resampling.
"""

from __future__ import annotations

import hashlib
import zlib
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, fields, replace
from typing import Any

import numpy as np
import torch
from scipy import ndimage
from scipy.sparse.csgraph import connected_components

from samseg_core.mask_sources import MaskProposals
from samseg_core.models.device import resolve_device
from samseg_core.models.promptable import Decoded, Embeddings, PromptableModel, preprocess_shape
from samseg_core.prompts import mask_prompt_frame
from samseg_core.runner import SampleItem
from samseg_core.testing.scenes import (
    BACKGROUND,
    Instance,
    SyntheticScene,
    class_colors,
    degrade_prediction,
    displaced,
    make_scene,
)
from samseg_core.voting import nearest_indices

__all__ = [
    "ERROR_PRESETS",
    "GRANULARITIES",
    "SimulatedAnswer",
    "SimulatedMaskSource",
    "SimulatedSam",
    "SimulatorErrors",
    "make_study_scene",
    "make_study_scenes",
    "region_pieces",
    "study_baseline",
]

#: The multimask outputs, in SAM's order (smallest first).
GRANULARITIES = ("part", "whole", "merged")
#: Subtracted from each output's predicted IoU before noise, so that the target's own mask ranks first.
RANK_PENALTY = np.array([0.04, 0.0, 0.02])
#: Regions smaller than this are never split into pieces.
MIN_SPLIT_AREA = 48
#: 4-neighbour pixel pairs two regions must share to touch.
MIN_CONTACT = 2
#: Share of a region's pixels inside a box for the region to lie inside it.
BOX_INSIDE = 0.9
#: Correlation length (Gaussian sigma, px) of the boundary jitter.
JITTER_CORRELATION_PX = 4.0
#: Logit of pixels far from any mask (empty outputs) and the clip of every logit.
FAR_LOGIT = 20.0
#: Logit-band half-widths (px) the stability slope is chosen from.
_BANDS = np.array([0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 4.0])


@dataclass(frozen=True)
class SimulatorErrors:
    """The simulator's error knobs (see the module docstring); all zero is a perfect SAM.

    Attributes:
        boundary_flip: probability that a foreground point near another region picks that region.
        boundary_band: distance (px) from another region within which a point may flip.
        box_union: probability that a box returns every region inside it.
        leakage_px: growth (px) into adjacent regions of similar colour.
        similar_color: RGB distance of mean colours below which adjacent regions are similar.
        smoothing_px: radius (px) of the opening and closing that remove thin structures and small holes.
        jitter_px: mean absolute boundary displacement (px).
        score_noise: std of the noise on predicted IoU and stability around the true quality.
        wrong_ranking: probability that a wrong multimask output gets the top predicted IoU.
        amg_part_rate: automatic masks: probability that a region's pieces are proposed too.
        amg_merge_rate: automatic masks: probability that a touching group of things is proposed as one mask.
        amg_miss_rate: automatic masks: probability that a thing's own mask is missing.
        amg_stuff_split: automatic masks: probability that a stuff region comes as its pieces, not whole.
    """

    boundary_flip: float = 0.0
    boundary_band: float = 2.0
    box_union: float = 0.0
    leakage_px: float = 0.0
    similar_color: float = 60.0
    smoothing_px: int = 0
    jitter_px: float = 0.0
    score_noise: float = 0.0
    wrong_ranking: float = 0.0
    amg_part_rate: float = 0.0
    amg_merge_rate: float = 0.0
    amg_miss_rate: float = 0.0
    amg_stuff_split: float = 0.0

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if value < 0:
                raise ValueError(f"{f.name} must be >= 0, got {value}")
            if (f.name.endswith(("_rate", "_flip", "_union", "_ranking", "_split"))) and value > 1:
                raise ValueError(f"{f.name} is a probability, got {value}")

    def with_(self, **changes: Any) -> SimulatorErrors:
        """A copy with some knobs changed."""
        return replace(self, **changes)


#: Named error models. ``moderate`` is the documented default of ``bench/quality.py``.
ERROR_PRESETS: dict[str, SimulatorErrors] = {
    "perfect": SimulatorErrors(),
    "moderate": SimulatorErrors(
        boundary_flip=0.3,
        box_union=0.5,
        leakage_px=1.5,
        smoothing_px=1,
        jitter_px=0.75,
        score_noise=0.05,
        wrong_ranking=0.2,
        amg_part_rate=0.5,
        amg_merge_rate=0.5,
        amg_miss_rate=0.2,
        amg_stuff_split=0.5,
    ),
    "harsh": SimulatorErrors(
        boundary_flip=0.5,
        box_union=0.8,
        leakage_px=3.0,
        smoothing_px=2,
        jitter_px=1.5,
        score_noise=0.15,
        wrong_ranking=0.4,
        amg_part_rate=0.8,
        amg_merge_rate=0.8,
        amg_miss_rate=0.4,
        amg_stuff_split=0.8,
    ),
}


# --------------------------------------------------------------------------------------------------- the world


def region_pieces(mask: np.ndarray, pieces: int) -> np.ndarray:
    """Returns ``(H, W)`` int8 piece ids (0..pieces-1) of a mask cut into equal-area strips across its major axis.

    Pixels outside the mask are 0. A mask under :data:`MIN_SPLIT_AREA` pixels is one piece.
    """
    out = np.zeros(mask.shape, np.int8)
    ys, xs = np.nonzero(mask)
    if ys.size < MIN_SPLIT_AREA or pieces < 2:
        return out
    coords = np.stack([ys, xs], axis=1).astype(np.float64)
    centred = coords - coords.mean(axis=0)
    _, vectors = np.linalg.eigh(centred.T @ centred)
    projection = centred @ vectors[:, -1]  # along the major axis
    edges = np.quantile(projection, np.linspace(0, 1, pieces + 1)[1:-1])
    out[ys, xs] = np.searchsorted(edges, projection, side="right").astype(np.int8)
    return out


@dataclass
class _World:
    """A scene cut into regions, with what the simulator needs of them (see the module docstring)."""

    scene: SyntheticScene
    regions: np.ndarray
    region_class: np.ndarray
    is_thing: np.ndarray
    colors: np.ndarray
    contact: np.ndarray
    pieces: np.ndarray
    areas: np.ndarray
    jitter: np.ndarray | None = None

    @property
    def shape(self) -> tuple[int, int]:
        return self.regions.shape

    def mask(self, ids: Iterable[int]) -> np.ndarray:
        """The union of regions ``ids``."""
        ids = np.asarray(sorted(set(ids)), np.int64)
        return np.isin(self.regions, ids) if ids.size else np.zeros(self.shape, bool)

    def neighbours(self, ids: Iterable[int], same_kind: bool = True) -> set[int]:
        """Regions outside ``ids`` touching one of them (of the same kind, thing or stuff, when asked)."""
        ids = set(ids)
        out: set[int] = set()
        for r in ids:
            touching = np.flatnonzero(self.contact[r] >= MIN_CONTACT)
            if same_kind:
                touching = touching[self.is_thing[touching] == self.is_thing[r]]
            out.update(int(n) for n in touching)
        return out - ids


def _build_world(scene: SyntheticScene, stuff_pieces: int) -> _World:
    """Cuts a scene into regions: its instances, then the connected components of each stuff class."""
    height, width = scene.semantic.shape
    regions = np.full((height, width), -1, np.int32)
    classes: list[int] = []
    for inst in scene.instances:
        free = inst.mask & (regions < 0)
        if free.any():
            regions[free] = len(classes)
            classes.append(int(inst.class_id))
    things = len(classes)
    rest = regions < 0
    for cls in np.unique(scene.semantic[rest]):
        components, count = ndimage.label(rest & (scene.semantic == cls))
        regions[components > 0] = components[components > 0] - 1 + len(classes)
        classes.extend([int(cls)] * count)
    n = len(classes)
    region_class = np.asarray(classes, np.int64)
    is_thing = np.arange(n) < things
    is_thing &= ~np.isin(region_class, list(scene.stuff_classes))
    areas = np.bincount(regions.ravel(), minlength=n)
    image = scene.image.reshape(-1, 3).astype(np.float64)
    colors = (
        np.stack([np.bincount(regions.ravel(), weights=image[:, c], minlength=n) for c in range(3)], axis=1)
        / np.maximum(areas, 1)[:, None]
    )
    contact = np.zeros((n, n), np.int64)
    for a, b in ((regions[:, :-1], regions[:, 1:]), (regions[:-1], regions[1:])):
        differ = a != b
        np.add.at(contact, (a[differ], b[differ]), 1)
    contact += contact.T
    pieces = np.zeros((height, width), np.int8)
    for r in range(n):
        own = regions == r
        pieces[own] = region_pieces(own, 2 if is_thing[r] else stuff_pieces)[own]
    return _World(scene, regions, region_class, is_thing, colors, contact, pieces, areas)


def _image_key(image: np.ndarray) -> str:
    """Identity of an image: a hash of its shape and bytes."""
    array = np.ascontiguousarray(image)
    digest = hashlib.sha1(str(array.shape).encode())
    digest.update(array.tobytes())
    return digest.hexdigest()


# --------------------------------------------------------------------------------------------------- errors


def _disk(radius: float) -> np.ndarray:
    r = int(np.ceil(radius))
    yy, xx = np.mgrid[-r : r + 1, -r : r + 1]
    return np.hypot(yy, xx) <= radius


def _signed_distance(mask: np.ndarray) -> np.ndarray:
    """+(distance to the outside - 0.5) inside, -(distance to the inside - 0.5) outside: the sign is the mask."""
    if not mask.any():
        return np.full(mask.shape, -FAR_LOGIT, np.float32)
    if mask.all():
        return np.full(mask.shape, FAR_LOGIT, np.float32)
    inside = ndimage.distance_transform_edt(mask)
    outside = ndimage.distance_transform_edt(~mask)
    return np.where(mask, inside - 0.5, 0.5 - outside).astype(np.float32)


def _smoothed(mask: np.ndarray, radius: int) -> np.ndarray:
    """Opening then closing with a disk, computed on an edge-padded copy (the image border is not an edge)."""
    disk = _disk(radius)
    padded = np.pad(mask, radius + 1, mode="edge")
    padded = ndimage.binary_opening(padded, structure=disk)
    padded = ndimage.binary_closing(padded, structure=disk)
    return padded[radius + 1 : -radius - 1, radius + 1 : -radius - 1]


def _unit_smooth_noise(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    """A smooth random field with mean absolute value 1 (std sqrt(pi / 2))."""
    noise = ndimage.gaussian_filter(rng.standard_normal(shape), JITTER_CORRELATION_PX, mode="wrap")
    return (noise / (noise.std() + 1e-12) * np.sqrt(np.pi / 2)).astype(np.float32)


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.count_nonzero(a | b)
    return np.count_nonzero(a & b) / union if union else 1.0


def _stability_slope(field_px: np.ndarray, target: float) -> float:
    """Logit slope (per px) whose stability score (thresholds +/-1) comes closest to ``target``."""
    values = np.sort(field_px.ravel())
    above = values.size - np.searchsorted(values, _BANDS, side="right")
    union = values.size - np.searchsorted(values, -_BANDS, side="right")
    stability = above / np.maximum(union, 1)
    return float(1.0 / _BANDS[np.argmin(np.abs(stability - target))])


# --------------------------------------------------------------------------------------------------- answers


@dataclass
class SimulatedAnswer:
    """The simulator's answer to one prompt.

    Attributes:
        target: the regions the prompt named (after flips and box unions).
        clean: ``(3, H, W)`` bool error-free part / whole / merged masks.
        masks: ``(3, H, W)`` bool outputs (``logits > 0``).
        logits: ``(3, H, W)`` float32 logits at image resolution.
        quality: ``(3,)`` IoU of each output with its error-free mask.
        predicted_iou: ``(3,)`` the simulated predicted IoU.
        stability: ``(3,)`` the stability each output's logits were shaped for.
    """

    target: tuple[int, ...]
    clean: np.ndarray
    masks: np.ndarray
    logits: np.ndarray
    quality: np.ndarray
    predicted_iou: np.ndarray
    stability: np.ndarray


class _Answerer:
    """Applies :class:`SimulatorErrors` to error-free masks (shared by the model and the mask source).

    Leakage and smoothing are deterministic, so their signed-distance fields are kept in an LRU cache of
    ``cache_items`` entries over all scenes.
    """

    def __init__(self, errors: SimulatorErrors, cache_items: int = 1024) -> None:
        self.errors = errors
        self.cache_items = cache_items
        self._cache: OrderedDict[tuple, np.ndarray] = OrderedDict()

    def pre_field(self, world: _World, key: tuple, clean: np.ndarray, own: Iterable[int]) -> np.ndarray:
        """Signed distance (px) of ``clean`` after leakage and smoothing (cached: both are deterministic)."""
        key = (id(world), *key)
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        mask = clean.copy()
        e = self.errors
        if e.leakage_px > 0 and mask.any():
            own = sorted(set(own))
            similar = [
                n
                for n in world.neighbours(own, same_kind=False)
                if np.min(np.linalg.norm(world.colors[own] - world.colors[n], axis=1)) < e.similar_color
            ]
            if similar:
                near = ndimage.distance_transform_edt(~mask) <= e.leakage_px
                mask |= near & np.isin(world.regions, similar)
        if e.smoothing_px > 0 and mask.any():
            mask = _smoothed(mask, int(e.smoothing_px))
        sd = _signed_distance(mask)
        self._cache[key] = sd
        while len(self._cache) > self.cache_items:
            self._cache.popitem(last=False)
        return sd

    def outputs(
        self, world: _World, keys: Sequence[tuple], cleans: Sequence[np.ndarray], owns: Sequence, rng
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Noisy fields (px), quality, predicted IoU and stability of error-free masks (the scene's jitter)."""
        e = self.errors
        jitter = world.jitter if world.jitter is not None else 0.0
        fields_px = np.stack(
            [self.pre_field(world, k, c, o) + jitter for k, c, o in zip(keys, cleans, owns)]
        ).astype(np.float32)
        quality = np.array([_iou(f > 0, c) for f, c in zip(fields_px, cleans)])
        noise = rng.normal(0.0, e.score_noise, size=(2, len(cleans))) if e.score_noise > 0 else 0.0
        stability = np.clip(quality + (noise[1] if e.score_noise > 0 else 0.0), 0.0, 1.0)
        predicted = quality + (noise[0] if e.score_noise > 0 else 0.0)
        return fields_px, quality, predicted, stability


def _rng(seed: int, scene_index: int, *parts: bytes) -> np.random.Generator:
    """A generator seeded by the simulator seed, the scene and a prompt's bytes."""
    return np.random.default_rng([int(seed), int(scene_index), zlib.crc32(b"|".join(parts))])


# --------------------------------------------------------------------------------------------------- the model


def _box_iou(a: Sequence[float], b: Sequence[float]) -> float:
    """IoU of two inclusive xyxy pixel boxes."""
    ix = min(a[2], b[2]) - max(a[0], b[0]) + 1
    iy = min(a[3], b[3]) - max(a[1], b[1]) + 1
    inter = max(ix, 0) * max(iy, 0)
    area = (a[2] - a[0] + 1) * (a[3] - a[1] + 1) + (b[2] - b[0] + 1) * (b[3] - b[1] + 1)
    return inter / (area - inter) if area > inter else 0.0


def _region_boxes(regions: np.ndarray, n: int) -> np.ndarray:
    """``(n, 4)`` inclusive xyxy boxes of regions ``0..n-1``."""
    boxes = np.zeros((n, 4), np.float64)
    for r, window in enumerate(ndimage.find_objects(regions + 1, max_label=n)):
        if window is not None:
            boxes[r] = [window[1].start, window[0].start, window[1].stop - 1, window[0].stop - 1]
    return boxes


def _explain_box(boxes: np.ndarray, box: np.ndarray, candidates: np.ndarray) -> list[int]:
    """The fewest candidate regions whose union's box matches ``box`` best (greedy, best box IoU first)."""
    chosen: list[int] = []
    current: np.ndarray | None = None
    best = 0.0
    while True:
        pick, pick_box = None, None
        for r in candidates:
            if r in chosen:
                continue
            merged = boxes[r] if current is None else np.r_[np.minimum(current[:2], boxes[r][:2]),
                                                             np.maximum(current[2:], boxes[r][2:])]  # fmt: skip
            score = _box_iou(merged, box)
            if score > best + 1e-9:
                best, pick, pick_box = score, int(r), merged
        if pick is None:
            return chosen
        chosen.append(pick)
        current = pick_box


class SimulatedSam(PromptableModel):
    """A :class:`~samseg_core.models.promptable.PromptableModel` answering from registered scenes' ground truth.

    Args:
        scenes: scenes to register now (more with :meth:`register`); ``embed`` finds an image's scene by a hash
            of its pixels.
        errors: the error model (default: none, a perfect SAM).
        seed: seed of every random draw (with the scene and the prompt).
        input_size: the model's input side (a multiple of 4); default four times the first scene's longest side,
            so that the low-res frame holds that size at one pixel per image pixel (exact logits).
        stuff_pieces: strips a stuff region is cut into (its "parts").
        device: device of the returned tensors.
    """

    def __init__(
        self,
        scenes: Iterable[SyntheticScene] = (),
        errors: SimulatorErrors | None = None,
        *,
        seed: int = 0,
        input_size: int | None = None,
        stuff_pieces: int = 3,
        device: str | torch.device = "cpu",
    ) -> None:
        scenes = list(scenes)
        self.errors = errors if errors is not None else SimulatorErrors()
        self.seed = int(seed)
        self.stuff_pieces = int(stuff_pieces)
        self.mask_threshold = 0.0
        self.device = resolve_device(device)
        if input_size is None:
            input_size = 4 * max(scenes[0].image.shape[:2]) if scenes else 1024
        if int(input_size) % 4:
            raise ValueError(f"input_size must be a multiple of 4, got {input_size}")
        self.input_size = int(input_size)
        self._answerer = _Answerer(self.errors)
        self._worlds: list[_World] = []
        self._boxes: list[np.ndarray] = []
        self._index: dict[str, int] = {}
        for scene in scenes:
            self.register(scene)

    def register(self, scene: SyntheticScene) -> int:
        """Registers a scene (its image is its key) and returns its index; a known image keeps its index."""
        key = _image_key(scene.image)
        if key not in self._index:
            world = _build_world(scene, self.stuff_pieces)
            if self.errors.jitter_px > 0:
                rng = _rng(self.seed, len(self._worlds), b"jitter")
                world.jitter = self.errors.jitter_px * _unit_smooth_noise(rng, world.shape)
            self._index[key] = len(self._worlds)
            self._worlds.append(world)
            self._boxes.append(_region_boxes(world.regions, len(world.region_class)))
        return self._index[key]

    def scene_index(self, image: np.ndarray) -> int:
        """The index of the registered scene whose image this is; ValueError for an unknown image."""
        index = self._index.get(_image_key(image))
        if index is None:
            raise ValueError(
                "this image belongs to no registered scene; register it first: sim.register(scene)"
            )
        return index

    def regions(self, scene_index: int) -> tuple[np.ndarray, np.ndarray]:
        """``(H, W)`` region ids of a registered scene and each region's class (see the module docstring)."""
        world = self._worlds[scene_index]
        return world.regions, world.region_class

    def to(self, device: str | torch.device) -> SimulatedSam:
        """Returns ``self``, its tensors now made on ``device``."""
        self.device = resolve_device(device)
        return self

    def embed(self, images: Sequence[np.ndarray]) -> Embeddings:
        """Finds each image's scene; the "embedding" is its scene index, shape ``(N, 1, 1, 1)``."""
        if not len(images):
            raise ValueError("embed needs at least one image")
        indices = [self.scene_index(np.asarray(image)) for image in images]
        sizes = [(int(image.shape[0]), int(image.shape[1])) for image in images]
        features = torch.tensor(indices, dtype=torch.float32, device=self.device).reshape(-1, 1, 1, 1)
        return Embeddings(features, sizes, [preprocess_shape(s, self.input_size) for s in sizes])

    def decode(
        self,
        embeddings: Embeddings,
        index: int,
        points: torch.Tensor | None = None,
        point_labels: torch.Tensor | None = None,
        boxes: torch.Tensor | None = None,
        mask_inputs: torch.Tensor | None = None,
        multimask: bool = True,
    ) -> Decoded:
        """Answers ``B`` prompts (see :meth:`PromptableModel.decode`); logits in the low-res frame.

        ``multimask=False`` returns the output with the highest predicted IoU of each prompt.
        """
        self._prompts(embeddings, index, points, point_labels, boxes, mask_inputs)  # validation only
        scene = int(embeddings.features[index].flatten()[0].item())
        size = tuple(int(s) for s in embeddings.original_sizes[index])
        pts = None if points is None else torch.as_tensor(points).detach().cpu().numpy()
        lbl = None if point_labels is None else torch.as_tensor(point_labels).detach().cpu().numpy()
        bxs = None if boxes is None else torch.as_tensor(boxes).detach().cpu().numpy()
        hints = None
        if mask_inputs is not None:
            lowres = torch.as_tensor(mask_inputs, dtype=torch.float32).detach().cpu()
            hints = (self.upscale(lowres, size)[:, 0] > self.mask_threshold).numpy()
        batch = next(len(a) for a in (pts, bxs, hints) if a is not None)
        logits, ious = [], []
        for b in range(batch):
            answer = self.answer(
                scene,
                points=None if pts is None else pts[b],
                point_labels=None if lbl is None else lbl[b],
                box=None if bxs is None else bxs[b],
                mask_hint=None if hints is None else hints[b],
            )
            keep = slice(None) if multimask else [int(np.argmax(answer.predicted_iou))]
            logits.append(answer.logits[keep])
            ious.append(answer.predicted_iou[keep])
        full = torch.as_tensor(np.stack(logits))
        return Decoded(
            self._to_low_res(full, size).to(self.device),
            torch.as_tensor(np.stack(ious), dtype=torch.float32, device=self.device),
        )

    def _frame(self, size: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        return mask_prompt_frame((int(size[0]), int(size[1])), self.input_size, pad=True)

    def _to_low_res(self, full: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
        """``(B, M, H, W)`` image logits sampled into the padded low-res frame (padding: far outside)."""
        rows, cols = self._frame(size)
        low = full[..., np.maximum(rows, 0), :][..., np.maximum(cols, 0)]
        low[..., rows < 0, :] = -FAR_LOGIT
        low[..., cols < 0] = -FAR_LOGIT
        return low

    def upscale(self, low_res_logits: torch.Tensor, image_size: Sequence[int]) -> torch.Tensor:
        """Low-res logits to the image: crop the padding, nearest resampling (exact at one pixel per pixel)."""
        rows, cols = self._frame(image_size)
        lh, lw = int((rows >= 0).sum()), int((cols >= 0).sum())
        crop = low_res_logits[..., :lh, :lw]
        ys = torch.as_tensor(nearest_indices(int(image_size[0]), lh), device=crop.device)
        xs = torch.as_tensor(nearest_indices(int(image_size[1]), lw), device=crop.device)
        return crop.index_select(-2, ys).index_select(-1, xs)

    def answer(
        self,
        scene_index: int,
        points: np.ndarray | None = None,
        point_labels: np.ndarray | None = None,
        box: np.ndarray | None = None,
        mask_hint: np.ndarray | None = None,
    ) -> SimulatedAnswer:
        """The simulator's answer to one prompt at image resolution (what :meth:`decode` returns, in full).

        Args:
            scene_index: a registered scene (:meth:`register`, :meth:`scene_index`).
            points: ``(P, 2)`` ``(x, y)`` pixel points or None.
            point_labels: ``(P,)`` 1 foreground, 0 background, -1 ignored.
            box: ``(4,)`` inclusive ``[x0, y0, x1, y1]`` or None.
            mask_hint: ``(H, W)`` bool mask the prompt comes with (SAM's mask input) or None.
        """
        world = self._worlds[scene_index]
        if points is not None:
            points = np.asarray(points, np.float32).reshape(-1, 2)
            point_labels = np.asarray(point_labels, np.int64).reshape(-1)
            used = point_labels >= 0
            points, point_labels = points[used], point_labels[used]
        box = None if box is None else np.asarray(box, np.float64).reshape(4)
        hint = None if mask_hint is None else np.asarray(mask_hint, bool)
        rng = _rng(
            self.seed,
            scene_index,
            b"" if points is None else points.tobytes() + point_labels.astype(np.int8).tobytes(),
            b"" if box is None else box.astype(np.float32).tobytes(),
            b"" if hint is None else np.packbits(hint).tobytes(),
        )
        target, first = self._target(world, scene_index, points, point_labels, box, hint, rng)
        return self._outputs(world, target, first, rng)

    def _target(
        self,
        world: _World,
        scene_index: int,
        points: np.ndarray | None,
        labels: np.ndarray | None,
        box: np.ndarray | None,
        hint: np.ndarray | None,
        rng: np.random.Generator,
    ) -> tuple[list[int], tuple[int, int] | None]:
        """The target regions (first region first) and the pixel of the first foreground point."""
        height, width = world.shape
        coverage = (
            None
            if hint is None
            else np.bincount(world.regions[hint], minlength=world.areas.size) / (np.maximum(world.areas, 1))
        )
        hits: list[int] = []
        negatives: set[int] = set()
        first = None
        for (x, y), label in zip(points if points is not None else (), labels if labels is not None else ()):
            row = int(np.clip(np.rint(y), 0, height - 1))
            col = int(np.clip(np.rint(x), 0, width - 1))
            region = int(world.regions[row, col])
            if label == 0:
                negatives.add(region)
                continue
            first = first or (row, col)
            region = self._flipped(world, region, row, col, coverage, rng)
            if region not in hits:
                hits.append(region)
        if box is not None:
            hits = self._boxed(world, scene_index, box, hits, negatives, coverage, rng)
        elif not hits and coverage is not None:
            covered = np.flatnonzero(coverage >= 0.5)
            hits = [int(r) for r in covered[np.argsort(-world.areas[covered], kind="stable")]]
            if not hits and coverage.max() > 0:
                hits = [int(np.argmax(coverage))]
        return [h for h in hits if h not in negatives], first

    def _flipped(
        self, world: _World, region: int, row: int, col: int, coverage: np.ndarray | None, rng
    ) -> int:
        """The region a foreground point lands on: another region within the band, with ``boundary_flip``."""
        e = self.errors
        if e.boundary_flip <= 0:
            return region
        reach = int(np.ceil(e.boundary_band))
        r0, c0 = max(row - reach, 0), max(col - reach, 0)
        window = world.regions[r0 : row + reach + 1, c0 : col + reach + 1]
        yy, xx = np.mgrid[r0 : r0 + window.shape[0], c0 : c0 + window.shape[1]]
        distance = np.hypot(yy - row, xx - col)
        other = (window != region) & (distance <= e.boundary_band)
        if not other.any() or rng.random() >= e.boundary_flip:
            return region
        flat = np.flatnonzero(other.ravel())
        candidate = int(window.ravel()[flat[np.argmin(distance.ravel()[flat])]])
        if coverage is not None and coverage[candidate] < 0.5:
            return region
        return candidate

    def _boxed(
        self,
        world: _World,
        scene_index: int,
        box: np.ndarray,
        hits: list[int],
        negatives: set[int],
        coverage: np.ndarray | None,
        rng: np.random.Generator,
    ) -> list[int]:
        """The target of a prompt with a box: hits overlapping it, else the regions explaining it; unions."""
        height, width = world.shape
        x0, y0 = int(np.clip(np.floor(box[0]), 0, width - 1)), int(np.clip(np.floor(box[1]), 0, height - 1))
        x1, y1 = int(np.clip(np.ceil(box[2]), x0, width - 1)), int(np.clip(np.ceil(box[3]), y0, height - 1))
        counts = np.bincount(world.regions[y0 : y1 + 1, x0 : x1 + 1].ravel(), minlength=world.areas.size)
        share = counts / np.maximum(world.areas, 1)
        inside = np.flatnonzero(share >= BOX_INSIDE)
        hits = [h for h in hits if counts[h] > 0]
        if not hits:
            order = inside[np.argsort(-world.areas[inside], kind="stable")]
            hits = _explain_box(self._boxes[scene_index], box, order)
        extras = [int(r) for r in inside if r not in hits and r not in negatives]
        if coverage is not None:
            extras = [r for r in extras if coverage[r] >= 0.5]
        if extras and self.errors.box_union > 0 and rng.random() < self.errors.box_union:
            hits = hits + extras
        return hits

    def _outputs(
        self, world: _World, target: list[int], first: tuple[int, int] | None, rng: np.random.Generator
    ) -> SimulatedAnswer:
        """Part / whole / merged outputs of a target with the error model applied."""
        shape = world.shape
        if not target:
            empty = np.zeros((3, *shape), bool)
            logits = np.full((3, *shape), -FAR_LOGIT, np.float32)
            zeros = np.zeros(3)
            return SimulatedAnswer((), empty, empty.copy(), logits, zeros, zeros.copy(), zeros.copy())
        head = target[0]
        if len(target) == 1:
            piece = int(world.pieces[first]) if first and world.regions[first] == head else 0
            part = (world.regions == head) & (world.pieces == piece)
            part_key: tuple = ("piece", head, piece)
        else:
            part, part_key = world.regions == head, ("whole", (head,))
        grown = sorted(set(target) | world.neighbours(target, same_kind=True))
        whole_ids = tuple(sorted(set(target)))
        cleans = [part, world.mask(whole_ids), world.mask(grown)]
        keys = [part_key, ("whole", whole_ids), ("whole", tuple(grown))]
        owns = [[head], list(whole_ids), grown]
        fields_px, quality, predicted, stability = self._answerer.outputs(world, keys, cleans, owns, rng)
        predicted = np.clip(predicted - RANK_PENALTY, 0.0, 1.0)
        if self.errors.wrong_ranking > 0 and rng.random() < self.errors.wrong_ranking:
            top = int(np.argmax(predicted))
            other = int(rng.choice([k for k in range(3) if k != top]))
            predicted[[top, other]] = predicted[[other, top]]
        slopes = np.array([_stability_slope(f, s) for f, s in zip(fields_px, stability)], np.float32)
        logits = np.clip(fields_px * slopes[:, None, None], -FAR_LOGIT, FAR_LOGIT).astype(np.float32)
        return SimulatedAnswer(
            tuple(target), np.stack(cleans), logits > 0, logits, quality, predicted, stability
        )


# --------------------------------------------------------------------------------------------------- automatic masks


class SimulatedMaskSource:
    """SAM-automatic-like mask proposals of a :class:`SimulatedSam`'s scenes (a ``MaskSource``).

    Per region: its whole mask (a thing's is missing with ``amg_miss_rate``; a stuff region comes as its pieces
    instead with ``amg_stuff_split``), its pieces too with ``amg_part_rate``; per touching group of things (connected
    through contacts), their union with ``amg_merge_rate``. Every proposal then gets the error model (leakage,
    smoothing, the scene's boundary jitter), predicted IoU and stability (true quality plus ``score_noise``). Empty
    masks are dropped.

    Args:
        sim: the simulator whose scenes, error model and seed are used.
        name: the source's name.
    """

    input_fields: tuple[str, ...] = ()

    def __init__(self, sim: SimulatedSam, name: str = "simulated_sam") -> None:
        self.sim = sim
        self.name = name

    def proposals(self, item: SampleItem) -> MaskProposals:
        """The proposals of ``item.image`` (a registered scene's image)."""
        if item.image is None:
            raise ValueError(f"sample {item.id} has no decoded image; mask sources need it")
        return self.proposals_for(self.sim.scene_index(item.image))

    def proposals_for(self, scene_index: int) -> MaskProposals:
        """The proposals of a registered scene."""
        world = self.sim._worlds[scene_index]
        rng = _rng(self.sim.seed, scene_index, b"automatic masks")
        candidates = self._candidates(world, rng)
        answerer = self.sim._answerer
        masks, predicted, stability, points = [], [], [], []
        for key, clean, own in candidates:
            field_px, quality, pred, stab = answerer.outputs(world, [key], [clean], [own], rng)
            mask = field_px[0] > 0
            if not mask.any():
                continue
            masks.append(mask)
            predicted.append(float(np.clip(pred[0], 0.0, 1.0)))
            stability.append(float(stab[0]))
            ys, xs = np.nonzero(clean if clean.any() else mask)
            middle = ys.size // 2
            points.append((float(xs[middle]), float(ys[middle])))
        height, width = world.shape
        stack = np.stack(masks) if masks else np.zeros((0, height, width), bool)
        return MaskProposals.from_masks(
            stack,
            predicted_iou=np.asarray(predicted, np.float32),
            stability_score=np.asarray(stability, np.float32),
            point_coords=np.asarray(points, np.float32).reshape(-1, 2),
        )

    def _candidates(self, world: _World, rng: np.random.Generator) -> list[tuple[tuple, np.ndarray, list]]:
        """``(cache key, error-free mask, own regions)`` of every proposal before errors."""
        e = self.sim.errors
        out = []
        for r in range(world.areas.size):
            own = world.regions == r
            thing = bool(world.is_thing[r])
            split = not thing and rng.random() < e.amg_stuff_split
            if not split and not (thing and rng.random() < e.amg_miss_rate):
                out.append((("whole", (r,)), own, [r]))
            count = int(world.pieces[own].max()) + 1 if own.any() else 1
            if count > 1 and (split or rng.random() < e.amg_part_rate):
                for piece in range(count):
                    out.append((("piece", r, piece), own & (world.pieces == piece), [r]))
        for group in _touching_groups(world):
            if rng.random() < e.amg_merge_rate:
                out.append((("whole", tuple(group)), world.mask(group), list(group)))
        return out


def _touching_groups(world: _World) -> list[list[int]]:
    """Groups (two or more) of things connected through contacts, each sorted."""
    things = np.flatnonzero(world.is_thing)
    touching = (world.contact[np.ix_(things, things)] >= MIN_CONTACT).astype(np.int8)
    _, labels = connected_components(touching, directed=False)
    groups = [sorted(int(t) for t in things[labels == g]) for g in np.unique(labels)]
    return [g for g in groups if len(g) > 1]


# --------------------------------------------------------------------------------------------------- study scenes


def _touching_group_masks(
    rng: np.random.Generator, shape: tuple[int, int], taken: np.ndarray, count: int
) -> list[np.ndarray]:
    """``count`` discs in a row, each overlapping the previous by 2 px, placed where ``taken`` is least hit."""
    height, width = shape
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32) + 0.5
    scale = min(height / 128, width / 160)
    best, best_hit = None, None
    for _ in range(60):
        radii = rng.uniform(6.0, 9.0, size=count) * scale
        angle = rng.uniform(0, np.pi)
        step = np.array([np.sin(angle), np.cos(angle)])
        cy, cx = rng.uniform(0.15 * height, 0.85 * height), rng.uniform(0.1 * width, 0.9 * width)
        centres = [np.array([cy, cx])]
        for k in range(1, count):
            centres.append(centres[-1] + step * (radii[k - 1] + radii[k] - 2.0))
        discs = [np.hypot(yy - c[0], xx - c[1]) <= r for c, r in zip(centres, radii)]
        union = np.logical_or.reduce(discs)
        inside = all(r <= c[0] <= height - r and r <= c[1] <= width - r for c, r in zip(centres, radii))
        hit = int((union & taken).sum()) + (0 if inside else height * width)
        if best_hit is None or hit < best_hit:
            best, best_hit = discs, hit
        if hit == 0:
            break
    return best


def make_study_scene(
    seed: int,
    size: tuple[int, int] = (128, 160),
    num_classes: int = 6,
    touching_groups: int = 1,
    group_size: int = 2,
    camouflaged_pairs: int = 1,
) -> SyntheticScene:
    """A :func:`~samseg_core.testing.scenes.make_scene` scene plus touching objects, as the refinement study blames.

    Added objects are discs in a row, each overlapping the previous by 2 px (later ones occlude earlier ones),
    placed where they cover the fewest existing objects:

    - ``touching_groups`` groups of ``group_size`` objects of one thing class (kind ``"touching"``); colours follow
      ``make_scene`` (class colour, a per-object shift, pixel noise), so they are similar in colour;
    - ``camouflaged_pairs`` pairs of two *different* thing classes painted in nearly the same colour (RGB distance
      about 30; kind ``"camouflaged"``): where SAM's leakage crosses a class boundary.

    Deterministic in ``seed``.
    """
    scene = make_scene(seed, size=size, num_classes=num_classes)
    rng = np.random.default_rng([seed, 7919])
    semantic, image = scene.semantic.copy(), scene.image.astype(np.float32)
    instances = [Instance(i.class_id, i.mask.copy(), i.kind) for i in scene.instances]
    colors = class_colors(num_classes)
    things = [int(c) for c in scene.thing_classes]
    plans = [("touching", group_size)] * touching_groups + [("camouflaged", 2)] * camouflaged_pairs
    for kind, count in plans:
        if kind == "camouflaged" and len(things) < 2:
            continue
        taken = ndimage.binary_dilation(np.logical_or.reduce([i.mask for i in instances]), iterations=2)
        picked = rng.choice(things, size=2, replace=False) if len(things) > 1 else [things[0]] * 2
        shade = colors[int(picked[0])] + rng.uniform(-12, 12, size=3)
        for k, disc in enumerate(_touching_group_masks(rng, semantic.shape, taken, count)):
            cls = int(picked[0]) if kind == "touching" else int(picked[k % 2])
            if kind == "touching":
                shade = colors[cls] + rng.uniform(-12, 12, size=3)
            elif k % 2:
                shade = shade + _unit_vector(rng) * 30.0
            for inst in instances:
                inst.mask &= ~disc
            instances.append(Instance(cls, disc, kind))
            semantic[disc] = cls
            image[disc] = shade + rng.normal(0.0, 6.0, size=(int(disc.sum()), 3))
    instances = [i for i in instances if i.mask.any()]
    image = np.clip(np.rint(image), 0, 255).astype(np.uint8)
    return SyntheticScene(image, semantic, instances, dict(scene.class_names), seed, scene.stuff_classes)


def _unit_vector(rng: np.random.Generator) -> np.ndarray:
    vector = rng.normal(size=3)
    return vector / (np.linalg.norm(vector) + 1e-12)


def make_study_scenes(n: int, seed: int = 0, **kwargs: Any) -> list[SyntheticScene]:
    """``n`` study scenes with seeds ``seed, seed + 1, ...`` (keyword arguments: :func:`make_study_scene`)."""
    return [make_study_scene(seed + i, **kwargs) for i in range(n)]


def study_baseline(
    scene: SyntheticScene,
    seed: int = 0,
    *,
    blur_radius: int = 0,
    wobble_px: float = 0.0,
    erosion_px: int = 0,
    missed: int = 0,
    partial: int = 0,
    confusion: float = 0.0,
    merge: bool = False,
) -> np.ndarray:
    """A degraded baseline of a scene with what the refinement study blames; all defaults: the ground truth.

    Args:
        scene: the scene.
        seed: seed of the random choices.
        blur_radius: :func:`~samseg_core.testing.scenes.degrade_prediction`'s boundary degradation.
        wobble_px: std (px) of a smooth displacement of the whole map, rounded to whole pixels: below 1 only
            some boundary pixels move, by one pixel (a near-perfect baseline).
        erosion_px: every thing loses the pixels within this distance of its outside (to background).
        missed: things the baseline misses entirely (to background).
        partial: things the baseline covers only partly: one half (across the major axis) becomes background.
        confusion: share of things whose one half gets another thing class.
        merge: nearby same-class things merge (``degrade_prediction(merge_neighbors=True)``).

    Returns:
        ``(H, W)`` int32 class map.
    """
    pred = degrade_prediction(
        scene, seed, blur_radius=blur_radius, missing_instances=missed, merge_neighbors=merge
    )
    rng = np.random.default_rng([seed, 104729])
    if wobble_px > 0:
        pred = _wobbled(pred, wobble_px, rng)
    things = [i for i in scene.instances if i.class_id not in scene.stuff_classes]
    classes = scene.thing_classes
    if erosion_px > 0:
        for inst in things:
            inner = ndimage.binary_erosion(inst.mask, structure=_disk(erosion_px), border_value=1)
            pred[inst.mask & ~inner & (pred == inst.class_id)] = BACKGROUND
    splittable = [i for i in things if i.area >= MIN_SPLIT_AREA]
    if partial > 0 and splittable:
        for k in rng.choice(len(splittable), size=min(partial, len(splittable)), replace=False):
            inst = splittable[int(k)]
            pred[inst.mask & (region_pieces(inst.mask, 2) == 1)] = BACKGROUND
    if confusion > 0:
        for inst in splittable:
            if rng.random() < confusion and len(classes) > 1:
                other = int(rng.choice([c for c in classes if c != inst.class_id]))
                pred[inst.mask & (region_pieces(inst.mask, 2) == 1)] = other
    return pred.astype(np.int32)


def _wobbled(labels: np.ndarray, std_px: float, rng: np.random.Generator) -> np.ndarray:
    """``labels`` read through a smooth random displacement of std ``std_px``, rounded to whole pixels."""
    unit = np.sqrt(2 / np.pi)  # _unit_smooth_noise has mean |value| 1, std sqrt(pi / 2)
    dy = _unit_smooth_noise(rng, labels.shape) * unit * std_px
    dx = _unit_smooth_noise(rng, labels.shape) * unit * std_px
    return displaced(labels, dy, dx)

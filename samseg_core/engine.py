"""SSA-engine: open-vocabulary class names for masks, with every model batched across masks and images.

Per mask (as Semantic-Segment-Anything's engine): close-set proposals (the plurality class of each semantic
branch inside the mask), noun phrases of a BLIP caption of the crop enlarged ``crop_scale_caption`` (1.6),
their union ranked by CLIP on the crop enlarged ``crop_scale_clip`` (1.2) keeping the top-k, and CLIPSeg on the
crop enlarged ``crop_scale_clipseg`` (1.6) choosing among the top-k by its mean logit over the mask's pixels.

Unlike SSA, crops of all masks (of all images of a call) are cut in one vectorised ``roi_align`` per image and
go through BLIP, CLIP and CLIPSeg in batches, so model calls grow with ``ceil(masks / batch_size)``; class-name
text embeddings are computed once per run; images are RGB; masks without candidates, masks with a single
candidate and ties are handled deterministically:

- zero candidates → ``unknown_label`` with ``skipped_reason``; masks below ``min_area`` → the same, with their
  reason; ties in votes go to the lowest class id, ties in CLIP scores to the alphabetically first name, ties in
  CLIPSeg scores to the better CLIP rank;
- one candidate → a one-text CLIPSeg pair (its score is still a useful confidence).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torchvision.ops import roi_align

from samseg_core.masks import masks_to_boxes_xyxy
from samseg_core.nouns import clean_class_name, merge_class_names, noun_phrases_batch

__all__ = [
    "ENGINE_PRESETS",
    "EnginePreset",
    "MaskLabel",
    "OpenVocabEngine",
    "SemanticBranch",
    "assign_class_ids",
    "close_set_votes",
    "crop_boxes",
    "cut_crops",
    "engine_preset",
    "image_tensor",
    "paint_class_map",
    "sample_masks_in_boxes",
]


@dataclass(frozen=True)
class EnginePreset:
    """Default models of a preset (each one overridable): open_clip name + tag, BLIP, CLIPSeg, segmenters."""

    clip: str
    clip_pretrained: str
    captioner: str
    clipseg: str
    semantic_models: tuple[str, ...]


#: SSA's two configurations. ``full``: CLIP ViT-L/14, BLIP large, OneFormer COCO (133) + ADE20K (150);
#: ``light``: CLIP ViT-B/32, BLIP base, smaller segmenters. Both use CLIPSeg rd64-refined.
ENGINE_PRESETS: dict[str, EnginePreset] = {
    "full": EnginePreset(
        clip="ViT-L-14",
        clip_pretrained="openai",
        captioner="Salesforce/blip-image-captioning-large",
        clipseg="CIDAS/clipseg-rd64-refined",
        semantic_models=("shi-labs/oneformer_coco_swin_large", "shi-labs/oneformer_ade20k_swin_large"),
    ),
    "light": EnginePreset(
        clip="ViT-B-32",
        clip_pretrained="openai",
        captioner="Salesforce/blip-image-captioning-base",
        clipseg="CIDAS/clipseg-rd64-refined",
        semantic_models=(
            "facebook/mask2former-swin-tiny-coco-panoptic",
            "nvidia/segformer-b0-finetuned-ade-512-512",
        ),
    ),
}


def engine_preset(name: str) -> EnginePreset:
    """Returns the preset called ``name`` ("light" or "full"); a ValueError names the choices otherwise."""
    try:
        return ENGINE_PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown engine preset '{name}'; choose one of {sorted(ENGINE_PRESETS)}") from None


@dataclass
class SemanticBranch:
    """One close-set source for one image: an ``(H, W)`` class-id map and its label set.

    Ids absent from ``id2label`` (e.g. 255 "ignore") cast no vote.
    """

    name: str
    labels: np.ndarray
    id2label: Mapping[int, str]


@dataclass
class MaskLabel:
    """The engine's answer for one mask.

    Attributes:
        class_name: the chosen class (``unknown_label`` when skipped).
        confidence: sigmoid of CLIPSeg's mean logit of ``class_name`` over the mask (0 when skipped).
        class_proposals: CLIP's top-k candidates, best first.
        proposal_scores: CLIP's probabilities of those (softmax over all of the mask's candidates).
        clipseg_scores: sigmoid of CLIPSeg's mean logit of each proposal over the mask.
        caption: the BLIP caption of the crop (None in fixed-vocabulary mode or for skipped masks).
        close_set: the close-set proposals (one per branch that voted).
        skipped_reason: why the mask got no class (too small, no candidates), else None.
        area: mask pixels.
    """

    class_name: str
    confidence: float = 0.0
    class_proposals: list[str] = field(default_factory=list)
    proposal_scores: list[float] = field(default_factory=list)
    clipseg_scores: list[float] = field(default_factory=list)
    caption: str | None = None
    close_set: list[str] = field(default_factory=list)
    skipped_reason: str | None = None
    area: int = 0


def crop_boxes(boxes_xyxy: np.ndarray, scale: float, height: int, width: int) -> np.ndarray:
    """Returns ``(N, 4)`` float32 continuous ``[x0, y0, x1, y1]`` crop boxes: each inclusive pixel box scaled
    about its centre by ``scale`` and clipped to the image (mmcv ``imcrop(scale=...)`` semantics)."""
    boxes = np.asarray(boxes_xyxy, dtype=np.float64).reshape(-1, 4)
    x0, y0 = boxes[:, 0], boxes[:, 1]
    w, h = boxes[:, 2] - x0 + 1.0, boxes[:, 3] - y0 + 1.0
    cx, cy = x0 + w / 2, y0 + h / 2
    half_w, half_h = w * scale / 2, h * scale / 2
    out = np.stack([cx - half_w, cy - half_h, cx + half_w, cy + half_h], axis=1)
    out[:, [0, 2]] = out[:, [0, 2]].clip(0, width)
    out[:, [1, 3]] = out[:, [1, 3]].clip(0, height)
    return out.astype(np.float32)


def sample_masks_in_boxes(
    masks: np.ndarray, boxes: np.ndarray, size: tuple[int, int], indices: np.ndarray | None = None
) -> np.ndarray:
    """Returns ``(N, h, w)`` bool: each mask point-sampled at the pixel centres of an ``h x w`` grid over its box.

    This is the mask in the frame of a crop resized to ``h x w`` (one vectorised gather, no per-mask loop).
    ``indices`` selects which of ``masks`` go with the N boxes (default: all, in order).
    """
    n = len(boxes)
    h, w = size
    indices = np.arange(n) if indices is None else np.asarray(indices)
    if n == 0:
        return np.zeros((0, h, w), dtype=bool)
    height, width = masks.shape[1:]
    boxes = np.asarray(boxes, dtype=np.float64)
    fy = (np.arange(h) + 0.5) / h
    fx = (np.arange(w) + 0.5) / w
    ys = boxes[:, 1:2] + fy[None] * (boxes[:, 3:4] - boxes[:, 1:2])
    xs = boxes[:, 0:1] + fx[None] * (boxes[:, 2:3] - boxes[:, 0:1])
    ys = np.floor(ys).astype(np.int64).clip(0, height - 1)
    xs = np.floor(xs).astype(np.int64).clip(0, width - 1)
    return masks[indices[:, None, None], ys[:, :, None], xs[:, None, :]]


def close_set_votes(masks: np.ndarray, labels: np.ndarray, id2label: Mapping[int, str]) -> list[str | None]:
    """Returns the plurality class name of ``labels`` inside each mask (None where no pixel has a known class).

    One bincount over all (mask, class) pairs; ties go to the lowest class id.
    """
    n = len(masks)
    if n == 0:
        return []
    labels = np.asarray(labels)
    if labels.shape != masks.shape[1:]:
        raise ValueError(f"label map {labels.shape} does not match masks {masks.shape[1:]}")
    known = np.array(sorted(int(k) for k in id2label), dtype=np.int64)
    if known.size == 0:
        return [None] * n
    # map ids to dense columns; unknown ids to an extra column that is ignored
    column = np.searchsorted(known, labels.astype(np.int64, copy=False))
    column = np.where(
        (column < known.size) & (known[column.clip(max=known.size - 1)] == labels), column, known.size
    )
    owner, ys, xs = np.nonzero(masks)
    counts = np.bincount(owner * (known.size + 1) + column[ys, xs], minlength=n * (known.size + 1))
    counts = counts.reshape(n, known.size + 1)[:, : known.size]
    best = counts.argmax(axis=1)
    has_vote = counts.max(axis=1) > 0
    return [str(id2label[int(known[b])]) if ok else None for b, ok in zip(best, has_vote)]


def assign_class_ids(
    names: Iterable[str], targets: Mapping[int, str], *, unlabeled: str = "unlabeled"
) -> dict[int, str]:
    """Returns ``targets`` extended so that every name has an id: the same name keeps its id, a new name gets
    the next free id; id 0 is reserved for ``unlabeled`` pixels. Existing entries are never changed."""
    merged = {int(k): str(v) for k, v in targets.items()}
    merged.setdefault(0, unlabeled)
    known = set(merged.values())
    next_id = max(merged) + 1
    for name in dict.fromkeys(names):
        if name not in known:
            merged[next_id] = name
            known.add(name)
            next_id += 1
    return merged


def paint_class_map(masks: np.ndarray, class_ids: Sequence[int]) -> np.ndarray:
    """Returns an ``(H, W)`` int32 class map: each pixel takes the class of the smallest mask covering it.

    That is SSA's order (largest masks painted first, smaller ones on top). Masks with class id 0 are not
    painted; pixels no painted mask covers are 0.
    """
    masks = np.asarray(masks, dtype=bool)
    class_ids = np.asarray(class_ids, dtype=np.int64)
    painted = class_ids != 0
    masks, class_ids = masks[painted], class_ids[painted]
    out = np.zeros(masks.shape[1:], dtype=np.int32)
    if len(masks) == 0:
        return out
    areas = masks.reshape(len(masks), -1).sum(axis=1)
    order = np.argsort(areas, kind="stable")  # smallest first: argmax finds the first (smallest) cover
    sorted_masks = masks[order]
    first = sorted_masks.argmax(axis=0)
    covered = sorted_masks.any(axis=0)
    out[covered] = class_ids[order][first[covered]]
    return out


def image_tensor(image: np.ndarray, device: torch.device) -> torch.Tensor:
    """Returns an HxWx3 uint8 RGB image as a ``(1, 3, H, W)`` float tensor in [0, 1] on ``device``."""
    array = np.asarray(image)
    if array.ndim != 3 or array.shape[2] < 3 or array.dtype != np.uint8:
        raise ValueError(f"expected an HxWx3 uint8 RGB image, got {array.shape} {array.dtype}")
    tensor = torch.from_numpy(np.array(array[:, :, :3], copy=True)).to(device)  # may be read-only
    return tensor.permute(2, 0, 1)[None].float().div_(255.0)


def cut_crops(
    images: Sequence[torch.Tensor], owners: np.ndarray, boxes: np.ndarray, size: int, device: torch.device
) -> torch.Tensor:
    """Returns ``(M, 3, size, size)`` crops of ``boxes`` (continuous xyxy) from their owners' images.

    ``roi_align`` with adaptive sampling averages ~one sample per source pixel per output pixel, which acts as
    an antialiasing filter when shrinking and as bilinear interpolation when enlarging.
    """
    out = torch.empty((len(owners), 3, size, size), device=device)
    for index in np.unique(owners):
        rows = np.flatnonzero(owners == index)
        rois = torch.zeros((len(rows), 5), device=device)
        rois[:, 1:] = torch.from_numpy(boxes[rows]).to(device)
        out[torch.from_numpy(rows).to(device)] = roi_align(
            images[index], rois, output_size=(size, size), spatial_scale=1.0, sampling_ratio=-1, aligned=True
        ).clamp_(0.0, 1.0)
    return out


class OpenVocabEngine:
    """Open-vocabulary labelling of masks (SSA-engine), batched across masks and images.

    Build it once per run (text embeddings are cached in the CLIP and CLIPSeg wrappers), then call
    :meth:`label_masks` on batches of images.
    """

    def __init__(
        self,
        clip: Any,
        clipseg: Any,
        captioner: Any = None,
        *,
        vocabulary: Sequence[str] | None = None,
        topk: int = 3,
        crop_scale_caption: float = 1.6,
        crop_scale_clip: float = 1.2,
        crop_scale_clipseg: float = 1.6,
        min_area: int = 100,
        batch_size: int | None = None,
        unknown_label: str = "unknown",
        use_spacy: bool | None = None,
    ) -> None:
        """Configures the engine.

        Args:
            clip: a :class:`~samseg_core.models.clip.ClipClassifier`.
            clipseg: a :class:`~samseg_core.models.clipseg.ClipSegScorer`.
            captioner: a :class:`~samseg_core.models.caption.Captioner`; None (or a ``vocabulary``) skips
                captioning.
            vocabulary: fixed-vocabulary mode: these names (plus close-set proposals) are every mask's
                candidates and no caption is generated.
            topk: CLIP keeps this many candidates for CLIPSeg (SSA: 3).
            crop_scale_caption: crop enlargement for BLIP (SSA: 1.6).
            crop_scale_clip: crop enlargement for CLIP (SSA: 1.2).
            crop_scale_clipseg: crop enlargement for CLIPSeg (SSA: 1.6).
            min_area: masks with fewer pixels are skipped (``skipped_reason`` says so).
            batch_size: crops (and CLIPSeg pairs) per model call; None keeps each wrapper's own.
            unknown_label: class name of skipped masks.
            use_spacy: noun extraction: None = spaCy when an English pipeline is installed, else the fallback.
        """
        if topk < 1:
            raise ValueError(f"topk must be >= 1, got {topk}")
        self.clip = clip
        self.clipseg = clipseg
        self.captioner = None if vocabulary is not None else captioner
        self.vocabulary = merge_class_names(vocabulary) if vocabulary is not None else None
        if vocabulary is not None and not self.vocabulary:
            raise ValueError("vocabulary holds no usable class name")
        self.topk = int(topk)
        self.crop_scale_caption = float(crop_scale_caption)
        self.crop_scale_clip = float(crop_scale_clip)
        self.crop_scale_clipseg = float(crop_scale_clipseg)
        self.min_area = int(min_area)
        self.unknown_label = unknown_label
        self.use_spacy = use_spacy
        self.device = clip.device
        if batch_size is not None:
            for model in (clip, clipseg, self.captioner):
                if model is not None:
                    model.batch_size = int(batch_size)
        self.timings: dict[str, float] = {"caption": 0.0, "clip": 0.0, "clipseg": 0.0}  # seconds per model

    def model_calls(self) -> dict[str, int]:
        """Returns forward-pass counts per model part so far (what batching keeps small)."""
        calls = {
            "clip_image": self.clip.image_calls,
            "clip_text": self.clip.text_calls,
            "clipseg_vision": self.clipseg.vision_calls,
            "clipseg_decoder": self.clipseg.decoder_calls,
            "clipseg_text": self.clipseg.text_calls,
        }
        calls["caption"] = self.captioner.calls if self.captioner is not None else 0
        return calls

    def label_masks(
        self,
        images: Sequence[np.ndarray],
        masks: Sequence[np.ndarray],
        branches: Sequence[Sequence[SemanticBranch]] | None = None,
    ) -> list[list[MaskLabel]]:
        """Labels every mask of every image; returns one list of :class:`MaskLabel` per image, in mask order.

        Args:
            images: ``HxWx3`` uint8 RGB images.
            masks: per image, ``(N, H, W)`` bool masks at image resolution.
            branches: per image, its close-set :class:`SemanticBranch` es (label maps at image resolution).
        """
        if len(masks) != len(images):
            raise ValueError(f"{len(images)} images but {len(masks)} mask stacks")
        branches = branches if branches is not None else [()] * len(images)
        stacks = [
            np.asarray(m, dtype=bool).reshape(-1, *np.asarray(image).shape[:2])
            for m, image in zip(masks, images)
        ]
        results: list[list[MaskLabel]] = []
        owners, boxes_all, rows_all, close_sets = [], [], [], []
        for index, (stack, image_branches) in enumerate(zip(stacks, branches)):
            areas = stack.reshape(len(stack), -1).sum(axis=1)
            labels = [MaskLabel(class_name=self.unknown_label, area=int(a)) for a in areas]
            small = areas < max(self.min_area, 1)
            for i in np.flatnonzero(small):
                labels[i].skipped_reason = f"area {int(areas[i])} < min_area {self.min_area}"
            keep = np.flatnonzero(~small)
            votes = [close_set_votes(stack[keep], b.labels, b.id2label) for b in image_branches]
            for j, i in enumerate(keep):
                labels[i].close_set = merge_class_names(clean_class_name(v[j]) for v in votes if v[j])
            results.append(labels)
            owners.append(np.full(len(keep), index))
            boxes_all.append(masks_to_boxes_xyxy(stack[keep]) if len(keep) else np.zeros((0, 4), np.int64))
            rows_all.append(keep)
            close_sets.extend(labels[i].close_set for i in keep)
        owner = np.concatenate(owners) if owners else np.zeros(0, np.int64)
        rows = np.concatenate(rows_all) if rows_all else np.zeros(0, np.int64)
        if len(rows) == 0:
            return results
        boxes = np.concatenate(boxes_all)
        image_tensors = [image_tensor(image, self.device) for image in images]
        shapes = [np.asarray(image).shape[:2] for image in images]

        captions = self._captions(image_tensors, owner, boxes, shapes)
        nouns = noun_phrases_batch(captions, use_spacy=self.use_spacy) if captions else [[] for _ in rows]
        extra = self.vocabulary or []
        candidates = [
            merge_class_names([*close, *noun_list, *extra]) for close, noun_list in zip(close_sets, nouns)
        ]
        proposals, proposal_scores = self._clip_topk(image_tensors, owner, boxes, shapes, candidates)
        clipseg_scores = self._clipseg_scores(image_tensors, stacks, owner, rows, boxes, shapes, proposals)

        for m, (index, i) in enumerate(zip(owner, rows)):
            label = results[index][i]
            label.caption = captions[m] if captions else None
            if not proposals[m]:
                label.skipped_reason = (
                    "no candidate classes (no close-set proposal, caption noun or vocabulary)"
                )
                continue
            scores = clipseg_scores[m]
            best = int(np.argmax(scores))  # first maximum: ties go to the better CLIP rank
            label.class_name = proposals[m][best]
            label.confidence = float(scores[best])
            label.class_proposals = proposals[m]
            label.proposal_scores = proposal_scores[m]
            label.clipseg_scores = [float(s) for s in scores]
        return results

    def _boxes_for(self, owner: np.ndarray, boxes: np.ndarray, shapes: list, scale: float) -> np.ndarray:
        out = np.empty((len(boxes), 4), dtype=np.float32)
        for index in np.unique(owner):
            rows = owner == index
            out[rows] = crop_boxes(boxes[rows], scale, *shapes[index])
        return out

    def _chunks(self, total: int, batch_size: int) -> list[slice]:
        return [slice(s, min(s + batch_size, total)) for s in range(0, total, batch_size)]

    def _captions(self, images: list, owner: np.ndarray, boxes: np.ndarray, shapes: list) -> list[str]:
        if self.captioner is None:
            return []
        started = time.perf_counter()
        crop = self._boxes_for(owner, boxes, shapes, self.crop_scale_caption)
        captions: list[str] = []
        for part in self._chunks(len(owner), self.captioner.batch_size):
            crops = cut_crops(images, owner[part], crop[part], self.captioner.image_size, self.device)
            captions.extend(self.captioner.caption(crops))
        self.timings["caption"] += time.perf_counter() - started
        return captions

    def _clip_topk(
        self, images: list, owner: np.ndarray, boxes: np.ndarray, shapes: list, candidates: list[list[str]]
    ) -> tuple[list[list[str]], list[list[float]]]:
        """CLIP ranks each mask's candidates; returns the top-k names and their softmax probabilities."""
        started = time.perf_counter()
        vocabulary = sorted(set().union(*candidates)) if candidates else []
        if not vocabulary:
            return [[] for _ in candidates], [[] for _ in candidates]
        column = {name: j for j, name in enumerate(vocabulary)}
        member = torch.zeros((len(candidates), len(vocabulary)), dtype=torch.bool)
        for m, names in enumerate(candidates):
            member[m, [column[n] for n in names]] = True
        text = self.clip.text_embeddings(vocabulary)
        crop = self._boxes_for(owner, boxes, shapes, self.crop_scale_clip)
        embeddings = []
        for part in self._chunks(len(owner), self.clip.batch_size):
            crops = cut_crops(images, owner[part], crop[part], self.clip.image_size, self.device)
            embeddings.append(self.clip.image_embeddings(crops))
        logits = (torch.cat(embeddings) @ text.T).float().cpu() * self.clip.logit_scale
        logits = logits.masked_fill(~member, float("-inf"))
        probs = torch.where(member, logits.softmax(dim=1), torch.zeros(()))
        # columns are alphabetical, so a stable sort breaks score ties by name
        order = torch.sort(logits, dim=1, descending=True, stable=True).indices[:, : self.topk]
        counts = member.sum(dim=1).clamp(max=self.topk).tolist()
        top_names = [[vocabulary[j] for j in order[m, :k].tolist()] for m, k in enumerate(counts)]
        top_scores = [probs[m, order[m, :k]].tolist() for m, k in enumerate(counts)]
        self.timings["clip"] += time.perf_counter() - started
        return top_names, top_scores

    def _clipseg_scores(
        self,
        images: list,
        stacks: list[np.ndarray],
        owner: np.ndarray,
        rows: np.ndarray,
        boxes: np.ndarray,
        shapes: list,
        proposals: list[list[str]],
    ) -> list[np.ndarray]:
        """CLIPSeg's sigmoid(mean logit over the mask) of each (mask, proposal) pair, in mask chunks."""
        started = time.perf_counter()
        crop = self._boxes_for(owner, boxes, shapes, self.crop_scale_clipseg)
        out: list[np.ndarray] = [np.zeros(0, dtype=np.float32) for _ in proposals]
        has_pairs = np.array([bool(p) for p in proposals])
        size = self.clipseg.image_size
        for part in self._chunks(len(owner), self.clipseg.batch_size):
            local = np.flatnonzero(has_pairs[part])
            if len(local) == 0:
                continue
            members = np.arange(part.start, part.stop)[local]
            crops = cut_crops(images, owner[members], crop[members], size, self.device)
            pair_crop = np.repeat(np.arange(len(members)), [len(proposals[m]) for m in members])
            pair_names = [name for m in members for name in proposals[m]]
            logits = self.clipseg.pair_logits(crops, torch.from_numpy(pair_crop), pair_names)
            weights = self._mask_weights(
                stacks, owner[members], rows[members], crop[members], logits.shape[-2:]
            )
            weights = weights.to(logits.device)[torch.from_numpy(pair_crop).to(logits.device)]
            mean = (logits * weights).sum(dim=(1, 2)) / weights.sum(dim=(1, 2))
            scores = torch.sigmoid(mean).cpu().numpy()
            for m, values in zip(
                members, np.split(scores, np.cumsum([len(proposals[m]) for m in members])[:-1])
            ):
                out[m] = values
        self.timings["clipseg"] += time.perf_counter() - started
        return out

    @staticmethod
    def _mask_weights(
        stacks: list[np.ndarray], owner: np.ndarray, rows: np.ndarray, boxes: np.ndarray, size: Any
    ) -> torch.Tensor:
        """``(M, h, w)`` float: the masks in their crops' frames; a mask too thin to be sampled uses the whole crop."""
        h, w = int(size[0]), int(size[1])
        out = np.zeros((len(owner), h, w), dtype=bool)
        for index in np.unique(owner):
            sel = np.flatnonzero(owner == index)
            out[sel] = sample_masks_in_boxes(stacks[index], boxes[sel], (h, w), indices=rows[sel])
        empty = ~out.reshape(len(out), -1).any(axis=1)
        out[empty] = True
        return torch.from_numpy(out).float()

"""Masks as runs of the flattened image: a compact form for per-mask statistics without a loop over masks.

A run is ``(mask, start, length)``: ``length`` consecutive pixels of one mask in the flattened image, in
row-major (``"C"``) or column-major (``"F"``, the order of COCO / SAM RLE) pixel order. 300 SAM masks of a
1024x2048 image are 630 MB as a bool stack but about 30k runs, so statistics over runs (class votes, painting
order) cost milliseconds where a pass per mask over the full image costs seconds.

The run arithmetic is numpy (single-threaded and fast at these sizes); only finding the runs of a dense stack
reads every pixel, once, 8 pixels at a time on CPU, or on the GPU when the stack is a CUDA tensor.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch

Order = Literal["C", "F"]


@dataclass
class MaskRuns:
    """The runs of ``num_masks`` masks of an ``shape`` image, sorted by mask then start.

    Attributes:
        mask_index: ``(R,)`` int64 mask of each run.
        start: ``(R,)`` int64 first pixel of each run, a flat index in ``order``.
        length: ``(R,)`` int64 pixels in each run (> 0).
        num_masks: number of masks, empty ones included (they have no runs).
        shape: ``(H, W)`` of the image.
        order: ``"C"`` (flat index ``y * W + x``) or ``"F"`` (``x * H + y``, COCO RLE order).
    """

    mask_index: np.ndarray
    start: np.ndarray
    length: np.ndarray
    num_masks: int
    shape: tuple[int, int]
    order: Order = "C"

    @property
    def end(self) -> np.ndarray:
        """``(R,)`` one past the last pixel of each run."""
        return self.start + self.length

    def areas(self) -> np.ndarray:
        """``(num_masks,)`` int64 pixels per mask."""
        return np.bincount(self.mask_index, weights=self.length, minlength=self.num_masks).astype(np.int64)

    def flatten(self, image: np.ndarray) -> np.ndarray:
        """Returns an ``(H, W)`` map flattened in this order (contiguous; a view for ``"C"`` input)."""
        array = np.asarray(image)
        return (np.ascontiguousarray(array) if self.order == "C" else transpose(array)).reshape(-1)

    def unflatten(self, flat: np.ndarray) -> np.ndarray:
        """Returns the C-contiguous ``(H, W)`` map of a flat array in this order (inverse of :meth:`flatten`)."""
        height, width = self.shape
        return flat.reshape(height, width) if self.order == "C" else transpose(flat.reshape(width, height))

    def boxes_xyxy(self) -> np.ndarray:
        """``(num_masks, 4)`` int64 tight boxes ``[x0, y0, x1, y1]`` (inclusive); empty masks: 0s.

        A run on one image line spans its own pixels; a run over a line break touches both image borders of
        the fast axis. Runs are sorted by mask then start, so each mask's extent is one ``reduceat``.
        """
        height, width = self.shape
        inner = width if self.order == "C" else height  # pixels along the fast axis
        first_line, last_line = self.start // inner, (self.end - 1) // inner
        one_line = first_line == last_line
        low = np.where(one_line, self.start % inner, 0)
        high = np.where(one_line, (self.end - 1) % inner, inner - 1)
        boxes = np.zeros((self.num_masks, 4), np.int64)
        if self.mask_index.size == 0:
            return boxes
        group = np.flatnonzero(np.concatenate([[True], self.mask_index[1:] != self.mask_index[:-1]]))
        masks = self.mask_index[group]
        last = np.concatenate([group[1:], [self.mask_index.size]]) - 1
        inner_lo, inner_hi = np.minimum.reduceat(low, group), np.maximum.reduceat(high, group)
        outer_lo, outer_hi = first_line[group], last_line[last]
        if self.order == "C":
            boxes[masks] = np.stack([inner_lo, outer_lo, inner_hi, outer_hi], axis=1)
        else:
            boxes[masks] = np.stack([outer_lo, inner_lo, outer_hi, inner_hi], axis=1)
        return boxes

    def to_dense(self) -> np.ndarray:
        """Returns the ``(N, H, W)`` bool masks (for tests and small images: it expands every pixel)."""
        height, width = self.shape
        pixels = height * width
        step = np.zeros(self.num_masks * (pixels + 1), np.int8)
        row = self.mask_index * (pixels + 1)
        np.add.at(step, row + self.start, 1)
        np.add.at(step, row + self.end, -1)
        dense = np.cumsum(step.reshape(self.num_masks, pixels + 1)[:, :pixels], axis=1, dtype=np.int32) > 0
        if self.order == "C":
            return dense.reshape(self.num_masks, height, width)
        return np.ascontiguousarray(dense.reshape(self.num_masks, width, height).transpose(0, 2, 1))


def transpose(array: np.ndarray) -> np.ndarray:
    """Returns the C-contiguous transpose of a 2-D array (torch's copy kernel: ~4x numpy's for small dtypes)."""
    signed = {1: np.int8, 2: np.int16, 4: np.int32, 8: np.int64}.get(array.dtype.itemsize)
    if array.dtype.kind not in "iub" or signed is None:
        return np.ascontiguousarray(array.T)
    bits = np.ascontiguousarray(array).view(signed)  # same bytes in a dtype torch copies natively
    return torch.from_numpy(bits).t().contiguous().numpy().view(array.dtype)


def runs_from_dense(masks: np.ndarray | torch.Tensor) -> MaskRuns:
    """Returns the row-major runs of an ``(N, H, W)`` stack (nonzero = inside), reading it once.

    Args:
        masks: ``(N, H, W)`` masks, a numpy array or a torch tensor; a CUDA tensor is scanned on its GPU.
    """
    if masks.ndim != 3:
        raise ValueError(f"expected (N, H, W) masks, got shape {tuple(masks.shape)}")
    num_masks, height, width = (int(s) for s in masks.shape)
    if isinstance(masks, torch.Tensor) and masks.device.type != "cpu":
        starts, ends = _boundaries_torch(masks.reshape(-1) != 0)
    else:
        array = masks.numpy() if isinstance(masks, torch.Tensor) else np.asarray(masks)
        array = np.ascontiguousarray(array if array.dtype == bool else array != 0)
        starts, ends = _boundaries_numpy(array.reshape(-1))
    return _split_at_masks(starts, ends, num_masks, (height, width), "C")


@torch.inference_mode()
def _boundaries_torch(flat: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Starts and ends of the runs of True in a 1-D bool tensor, found on its device (for GPUs)."""
    zero = flat.new_zeros(1, dtype=torch.int8)
    step = torch.diff(flat.to(torch.int8), prepend=zero, append=zero)
    starts = torch.nonzero(step == 1).reshape(-1).cpu().numpy()
    return starts, torch.nonzero(step == -1).reshape(-1).cpu().numpy()


def _boundaries_numpy(flat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Starts and ends of the runs of True in a 1-D bool array, reading it as 64-bit words.

    Only words with a set pixel are looked at (SAM masks cover a few percent of the stack), and only the
    *mixed* ones among them (not all 8 pixels set) byte by byte. A transition belongs to the word of the pixel
    after it; an end followed by an all-zero word belongs to the word before.
    """
    size = flat.size
    full = size // 8
    data = flat.view(np.uint8)
    words = data[: full * 8].view("<u8")
    # in chunks, so the temporary is 4 MB rather than 1/8 of the stack; `!= 0` first: 3x faster than flatnonzero
    chunk = 1 << 22
    touched = np.concatenate(
        [np.flatnonzero(words[i : i + chunk] != 0) + i for i in range(0, words.size, chunk)]
        or [np.zeros(0, np.int64)]
    )
    value = words[touched].astype(np.uint64)
    if size > full * 8:  # the last partial word, zero-padded
        tail = np.zeros(8, np.uint8)
        tail[: size - full * 8] = data[full * 8 :]
        if tail.any():
            touched = np.append(touched, full)
            value = np.append(value, tail.view("<u8").astype(np.uint64))
    if touched.size == 0:
        empty = np.zeros(0, np.int64)
        return empty, empty
    adjacent = touched[1:] == touched[:-1] + 1
    prev_word = np.zeros_like(value)
    prev_word[1:][adjacent] = value[:-1][adjacent]
    next_word = np.zeros_like(value)
    next_word[:-1][adjacent] = value[1:][adjacent]
    base = touched.astype(np.int64) * 8
    prev_set = (prev_word >> np.uint64(56)) != 0
    last_set = (value >> np.uint64(56)) != 0

    solid = value == np.uint64(0x0101010101010101)
    starts = [base[solid & ~prev_set]]
    ends = [base[last_set & (next_word == 0)] + 8]
    mixed = np.flatnonzero(~solid)
    pixels = value[mixed].astype("<u8").view(np.uint8).reshape(-1, 8).astype(bool)
    before = np.concatenate([prev_set[mixed, None], pixels[:, :7]], axis=1)
    rows, cols = np.nonzero(pixels & ~before)
    starts.append(base[mixed][rows] + cols)
    rows, cols = np.nonzero(~pixels & before)
    ends.append(base[mixed][rows] + cols)
    return np.sort(np.concatenate(starts)), np.minimum(np.sort(np.concatenate(ends)), size)


def _split_at_masks(
    starts: np.ndarray, ends: np.ndarray, num_masks: int, shape: tuple[int, int], order: Order
) -> MaskRuns:
    """Cuts runs of the concatenated ``(N * H * W)`` buffer at mask borders into per-mask runs."""
    pixels = shape[0] * shape[1]
    starts, ends = starts.astype(np.int64, copy=False), ends.astype(np.int64, copy=False)
    first = starts // pixels
    pieces = (ends - 1) // pixels - first + 1
    if pieces.size and int(pieces.max()) > 1:  # a run through a mask's last pixel into the next mask
        run = np.repeat(np.arange(starts.size), pieces)
        mask = first[run] + np.arange(run.size) - np.repeat(np.cumsum(pieces) - pieces, pieces)
        starts = np.maximum(starts[run], mask * pixels)
        ends = np.minimum(ends[run], (mask + 1) * pixels)
        first = mask
    return MaskRuns(first, starts - first * pixels, ends - starts, num_masks, shape, order)


def runs_from_labels(labels: np.ndarray, num_masks: int | None = None, order: Order = "C") -> MaskRuns:
    """Returns the runs of the regions of an ``(H, W)`` label map (region ``k`` is mask ``k``; < 0: none).

    One pass over the map finds its constant runs; no per-region mask is built, so a partition of a large
    image (superpixels) costs the map plus its runs, not regions x pixels.

    Args:
        labels: ``(H, W)`` integer region ids.
        num_masks: number of masks (default: the largest id + 1).
        order: ``"C"`` (row-major) or ``"F"`` (column-major, COCO RLE order) runs.
    """
    labels = np.asarray(labels)
    if labels.ndim != 2 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"expected an (H, W) integer label map, got {labels.dtype} {labels.shape}")
    height, width = labels.shape
    flat = (np.ascontiguousarray(labels) if order == "C" else transpose(labels)).reshape(-1)
    if num_masks is None:
        num_masks = int(flat.max()) + 1 if flat.size else 0
    if flat.size == 0:
        empty = np.zeros(0, np.int64)
        return MaskRuns(empty, empty, empty, int(num_masks), (height, width), order)
    start, end, value = runs_of_labels(flat)
    keep = np.flatnonzero(value >= 0) if np.issubdtype(value.dtype, np.signedinteger) else slice(None)
    start, end, value = start[keep], end[keep], value[keep].astype(np.int64)
    if value.size and int(value.max()) >= num_masks:
        raise ValueError(f"label {int(value.max())} is not below num_masks={num_masks}")
    by_mask = np.argsort(value, kind="stable")  # starts stay sorted within each mask
    return MaskRuns(
        value[by_mask], start[by_mask], (end - start)[by_mask], int(num_masks), (height, width), order
    )


def runs_from_coco_rles(rles: Sequence[Mapping[str, Any]]) -> MaskRuns:
    """Returns the column-major runs of COCO RLEs (``{"size": [h, w], "counts": str | bytes | list}``).

    Compressed counts strings of all masks are decoded together (no loop over masks); the RLEs must share
    one size. SA-1B / SSA JSON annotations and SAM's ``coco_rle`` / ``uncompressed_rle`` outputs all work.
    """
    if not rles:
        raise ValueError("runs_from_coco_rles needs at least one RLE (the image size comes from them)")
    sizes = {(int(r["size"][0]), int(r["size"][1])) for r in rles}
    if len(sizes) != 1:
        raise ValueError(f"RLEs of one image must share a size, got {sorted(sizes)}")
    height, width = sizes.pop()
    counts = [r["counts"] for r in rles]
    if all(isinstance(c, (str, bytes)) for c in counts):
        values, mask_of = _compressed_counts([c.encode("ascii") if isinstance(c, str) else c for c in counts])
    else:
        lengths = np.fromiter((len(c) for c in counts), np.int64, len(counts))
        total = int(lengths.sum())
        values = np.fromiter(_chain_counts(counts), np.int64, total)
        mask_of = np.repeat(np.arange(len(counts)), lengths)
    position = np.arange(values.size) - _segment_starts(mask_of)[mask_of]
    offsets = np.cumsum(values) - values
    offsets -= offsets[_segment_starts(mask_of)][mask_of]  # run start within its own mask
    totals = np.bincount(mask_of, weights=values, minlength=len(counts))
    if np.any(totals != height * width) or np.any(values < 0):
        bad = int(np.flatnonzero(totals != height * width)[0]) if np.any(totals != height * width) else -1
        raise ValueError(f"RLE {bad} does not cover a {height}x{width} mask")
    keep = (position % 2 == 1) & (values > 0)
    return MaskRuns(mask_of[keep], offsets[keep], values[keep], len(counts), (height, width), "F")


def _chain_counts(counts: Sequence[Any]):
    for c in counts:
        yield from (int(v) for v in c)


def _segment_starts(segment_of: np.ndarray) -> np.ndarray:
    """For a sorted array of segment ids, the index where each id's entries begin (by id)."""
    ids = np.arange(int(segment_of.max()) + 1 if segment_of.size else 0)
    return np.searchsorted(segment_of, ids, side="left")


def _compressed_counts(strings: Sequence[bytes]) -> tuple[np.ndarray, np.ndarray]:
    """Run lengths and owning string of many COCO compressed counts strings, decoded together.

    Each number is little-endian 6-bit chars offset by 48 (5 value bits, continuation bit 0x20, sign bit 0x10
    in the last char); from the third number of a string on, each is a difference to the number two before
    (pycocotools ``rleFrString``).
    """
    lengths = np.fromiter((len(s) for s in strings), np.int64, len(strings))
    chars = np.frombuffer(b"".join(strings), dtype=np.uint8).astype(np.int64) - 48
    if chars.size and (chars.min() < 0 or chars.max() > 63):
        raise ValueError("malformed compressed RLE counts")
    string_ends = np.cumsum(lengths)
    last = np.flatnonzero((chars & 0x20) == 0)  # the final char of each number
    if np.any(lengths > 0) and not np.isin(string_ends[lengths > 0] - 1, last).all():
        raise ValueError("malformed compressed RLE counts (a number runs past its string)")
    starts = np.concatenate(([0], last[:-1] + 1)) if last.size else last
    position = np.arange(chars.size) - np.repeat(starts, last - starts + 1)
    values = np.add.reduceat((chars & 0x1F) << (5 * position), starts) if last.size else last
    negative = (chars[last] & 0x10) != 0
    values[negative] -= np.int64(1) << (5 * (last - starts + 1))[negative]
    string_of = np.searchsorted(string_ends, last, side="right")
    index = np.arange(values.size) - _segment_starts(string_of)[string_of]
    for parity, first in ((1, 1), (0, 2)):  # odd numbers from the 2nd on, even ones from the 3rd on
        chain = np.flatnonzero((index % 2 == parity) & (index >= first))
        if chain.size:
            sums = np.cumsum(values[chain])
            group = string_of[chain]
            group_start = np.searchsorted(group, group, side="left")
            before = np.where(group_start > 0, sums[group_start - 1], 0)
            values[chain] = sums - before
    return values, string_of


def runs_of_labels(flat: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Returns ``(start, end, value)`` of the maximal constant runs of a 1-D array (they tile it)."""
    change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    starts = np.concatenate([[0], change]).astype(np.int64)
    ends = np.concatenate([change, [flat.size]]).astype(np.int64)
    return starts, ends, flat[starts]


def overlaps(
    run_start: np.ndarray, run_end: np.ndarray, seg_start: np.ndarray, seg_end: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Every (run, segment) pair that shares pixels, where the segments tile the flat image in order.

    Returns ``(run, segment, first, stop)``: indices of the pair and the shared pixels ``[first, stop)``.
    Cost is linear in the number of pairs (each run meets the segments it crosses).
    """
    first_seg = np.searchsorted(seg_start, run_start, side="right") - 1
    last_seg = np.searchsorted(seg_start, run_end, side="left") - 1
    count = last_seg - first_seg + 1
    run = np.repeat(np.arange(run_start.size), count)
    segment = first_seg[run] + np.arange(run.size) - np.repeat(np.cumsum(count) - count, count)
    first = np.maximum(run_start[run], seg_start[segment])
    stop = np.minimum(run_end[run], seg_end[segment])
    return run, segment, first, stop


def max_priority_cover(
    run_start: np.ndarray, run_end: np.ndarray, priority: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """For every pixel, the highest priority of the runs covering it (-1 where none does).

    Returns ``(bounds, best)``: the sorted distinct run endpoints and, for each elementary interval
    ``[bounds[i], bounds[i + 1])``, the maximal priority over the runs containing it. A segment tree over the
    elementary intervals, built level by level (about 20 vectorised steps), so no loop runs over runs or masks.
    """
    bounds = np.sort(np.concatenate([run_start, run_end]))
    bounds = bounds[np.concatenate([bounds[:1] == bounds[:1], bounds[1:] != bounds[:-1]])]
    leaves = max(bounds.size - 1, 0)
    if leaves == 0:
        return bounds, np.zeros(0, np.int64)
    size = 1 << max(leaves - 1, 1).bit_length()
    tree = np.full(2 * size, -1, np.int64)
    left = np.searchsorted(bounds, run_start) + size
    right = np.searchsorted(bounds, run_end) + size
    value = priority.astype(np.int64)
    while left.size:
        odd = (left & 1) == 1
        np.maximum.at(tree, left[odd], value[odd])
        left = left + odd
        odd = (right & 1) == 1
        right = right - odd
        np.maximum.at(tree, right[odd], value[odd])
        left, right = left >> 1, right >> 1
        active = left < right
        left, right, value = left[active], right[active], value[active]
    level = 1
    while level < size:  # push each node's value down to its two children
        children = tree[2 * level : 4 * level].reshape(-1, 2)
        np.maximum(children, tree[level : 2 * level, None], out=children)
        level *= 2
    return bounds, tree[size : size + leaves]

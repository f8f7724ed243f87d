"""A tiny SegFormer that records every image it segments, for exactly-once and resume tests across processes.

Processes name it by the model spec ``"_recording:recording_segmenter"`` (the tests dir is on their PYTHONPATH).
Each call to ``predict`` appends one line per image, ``<pid> <image digest>``, to the file named by
``SAMSEG_TEST_CALL_LOG`` (one ``write`` of a short line on an ``O_APPEND`` file: lines from concurrent processes do
not interleave), then sleeps ``SAMSEG_TEST_SLEEP_PER_BATCH`` seconds so that a kill can land mid-run.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections import Counter
from collections.abc import Sequence

import numpy as np

from samseg_core.models.semantic import SemanticPrediction, SemanticSegmenter
from samseg_core.testing.scenes import class_names_for
from samseg_core.testing.tiny_models import tiny_segformer, tiny_segformer_processor

NUM_CLASSES = 6


def image_digest(image: np.ndarray) -> str:
    """Returns a digest of a decoded RGB image (shape and pixels)."""
    return hashlib.sha1(repr(image.shape).encode() + np.ascontiguousarray(image).tobytes()).hexdigest()[:16]


class RecordingSegmenter(SemanticSegmenter):
    """A :class:`SemanticSegmenter` that logs each image it predicts (see the module docstring)."""

    def predict(
        self, images: Sequence[np.ndarray], *, return_confidence: bool = False
    ) -> list[SemanticPrediction]:
        """Logs the images' digests, sleeps, then predicts as usual."""
        log = os.environ.get("SAMSEG_TEST_CALL_LOG")
        if log:
            lines = "".join(f"{os.getpid()} {image_digest(image)}\n" for image in images)
            fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                os.write(fd, lines.encode())
            finally:
                os.close(fd)
        time.sleep(float(os.environ.get("SAMSEG_TEST_SLEEP_PER_BATCH", "0")))
        return super().predict(images, return_confidence=return_confidence)


def recording_segmenter() -> RecordingSegmenter:
    """Returns the recording tiny SegFormer on CPU (seeded: every process builds the same weights)."""
    return RecordingSegmenter(
        tiny_segformer(class_names_for(NUM_CLASSES), seed=0), tiny_segformer_processor(64), device="cpu"
    )


def read_call_log(path: str | os.PathLike) -> list[tuple[int, str]]:
    """Returns the ``(pid, digest)`` records of a call log (empty when it does not exist)."""
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [(int(pid), digest) for pid, digest in (line.split() for line in f if line.strip())]


def calls_per_image(path: str | os.PathLike) -> Counter:
    """Returns how many times each image digest was segmented according to the call log."""
    return Counter(digest for _, digest in read_call_log(path))

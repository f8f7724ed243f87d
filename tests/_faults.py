"""Test doubles that inject failures into samseg's shared pieces (the tests dir is on sys.path)."""

from __future__ import annotations

from samseg_core.sam_embedding import EmbeddingCache


class BatchFailsOnce(EmbeddingCache):
    """Fails the first batch of several images, so the runner retries it sample by sample."""

    failed = False

    def get_many(self, keys, images):
        """Raises once for a batch of more than one image, then behaves as :class:`EmbeddingCache`."""
        if len(keys) > 1 and not self.failed:
            self.failed = True
            raise RuntimeError("transient batch failure")
        return super().get_many(keys, images)

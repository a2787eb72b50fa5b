"""Image features computed once per distinct image and reused in later epochs (``model.cache_image_features``).

With the vision tower and projector frozen (and the tower in eval mode, as training keeps it), an image's
features depend on its pixels alone. The cache keeps them in memory keyed by a hash of the pixel values, so
a hit is the same image by construction: no row ids to trust, and nothing stale. Randomly augmented images
would never hit (each draw is new pixels): the cache then only fills up; at ``max_bytes`` it stops storing
and says so once. Off by default; it changes no result, only time and memory.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable

import torch

log = logging.getLogger(__name__)


def image_key(pixels: torch.Tensor) -> bytes:
    """A digest of one image's (C, H, W) pixel values, dtype and shape."""
    raw = pixels.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes()
    return hashlib.blake2b(raw + repr((pixels.dtype, tuple(pixels.shape))).encode(), digest_size=16).digest()


class ImageFeatureCache:
    """The projected features of images seen before: ``VisionLanguageBackbone.image_features`` consults it when
    one is set (``VisionLanguageBackbone.feature_cache``), computing only the images it misses."""

    def __init__(self, max_bytes: int = 2 * 2**30):
        self.max_bytes = max_bytes
        self.features: dict[bytes, torch.Tensor] = {}
        self.stored_bytes = 0
        self.full = False
        self.hits = self.misses = 0

    def __call__(
        self, pixel_values: torch.Tensor, compute: Callable[[torch.Tensor], torch.Tensor]
    ) -> torch.Tensor:
        """(B, C, H, W) pixels -> (B, N, D) features, ``compute`` running on the images not stored yet."""
        keys = [image_key(image) for image in pixel_values]
        found = {key: self.features[key] for key in keys if key in self.features}
        missing = [i for i, key in enumerate(keys) if key not in found]
        self.hits, self.misses = self.hits + len(keys) - len(missing), self.misses + len(missing)
        if missing:
            with torch.no_grad():
                fresh = compute(pixel_values[missing])  # (M, N, D)
            for i, features in zip(missing, fresh, strict=True):
                found[keys[i]] = features
                self._store(keys[i], features)
        return torch.stack([found[key] for key in keys])

    def _store(self, key: bytes, features: torch.Tensor) -> None:
        size = features.numel() * features.element_size()
        if self.stored_bytes + size > self.max_bytes:
            if not self.full:
                log.warning(
                    "image feature cache full (%d images, %.0f MB): later images are computed every time; "
                    "randomly augmented images never repeat, set model.cache_image_features=false for them",
                    len(self.features),
                    self.stored_bytes / 2**20,
                )
                self.full = True
            return
        self.features[key] = features.detach().clone()
        self.stored_bytes += size

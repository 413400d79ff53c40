"""Rejection sampling as a metric wrapper: feed another metric only the samples a check
keeps. "The base model filtered by the forget checks" is the quality a redaction should
approach, measured with the same extractor on the same stream."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from unlearning.metrics.base import StreamingMetric


class Filtered:
    """Pass ``images[keep(images)]`` to ``inner``; compute adds how many were kept."""

    def __init__(self, inner: StreamingMetric, keep: Callable[[torch.Tensor], torch.Tensor]):
        self.inner = inner
        self.keep = keep
        self.reset()

    def reset(self) -> None:
        self.inner.reset()
        self._seen = 0
        self._kept = 0

    def update(self, images: torch.Tensor) -> None:
        mask = self.keep(images).to(images.device)
        self._seen += images.shape[0]
        self._kept += int(mask.sum())
        if mask.any():
            self.inner.update(images[mask])

    def compute(self) -> dict[str, Any]:
        """The inner metric's numbers plus kept/seen; only kept/seen when nothing was kept."""
        counts = {"kept": self._kept, "seen": self._seen}
        return {**self.inner.compute(), **counts} if self._kept else counts

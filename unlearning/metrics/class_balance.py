"""Class shares: how generated samples spread over the label classifier's classes, and the
gate built on them ("no retained class drops below half its share in the parent without
what is forgotten")."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from unlearning.errors import LetheError
from unlearning.metrics.base import run_frozen


class ClassShares:
    """Fraction of samples whose argmax class is each of ``num_classes`` classes.

    ``compute()`` -> ``{"shares": list[float] (sums to 1), "counts": list[int], "samples"}``.
    """

    def __init__(self, classifier: nn.Module, num_classes: int):
        if num_classes < 1:
            raise ValueError("num_classes must be >= 1")
        self.classifier = classifier
        self.num_classes = num_classes
        self.reset()

    def reset(self) -> None:
        self._counts = torch.zeros(self.num_classes, dtype=torch.long)

    def update(self, images: torch.Tensor) -> None:
        logits = run_frozen(self.classifier, images)
        if logits.shape[1] != self.num_classes:
            raise ValueError(f"classifier gives {logits.shape[1]} classes, expected {self.num_classes}")
        labels = logits.argmax(dim=1).cpu()
        with torch.inference_mode():
            self._counts += torch.bincount(labels, minlength=self.num_classes)

    def compute(self) -> dict[str, Any]:
        samples = int(self._counts.sum())
        if samples == 0:
            raise LetheError("class shares need at least one sample")
        counts = self._counts.tolist()
        return {"shares": [c / samples for c in counts], "counts": counts, "samples": samples}


def forgotten_classes(parent: dict[str, Any], share_of_class_in_omega: float = 0.5) -> set[int]:
    """Classes most of whose samples (in the parent: ``samples``, ``class_shares``,
    ``omega_class_counts``) lie in Omega: the ones being forgotten, which the class-balance
    gate must not count."""
    counts = [round(s * parent["samples"]) for s in parent["class_shares"]]
    omega_counts = parent.get("omega_class_counts") or [0] * len(counts)
    return {k for k, (c, o) in enumerate(zip(counts, omega_counts)) if c and o / c >= share_of_class_in_omega}


def retained_shares(parent: dict[str, Any]) -> list[float]:
    """The parent's class shares among its samples outside Omega: what rejection sampling,
    the ideal redaction, keeps. Class balance is measured against these, as FID is against
    the filtered parent: where half of a class lies in Omega (digits: about half the 6s lean
    left), removing Omega halves that class's share, and only what is left should be kept."""
    n = parent["samples"]
    omega_counts = parent.get("omega_class_counts") or [0] * len(parent["class_shares"])
    kept = [max(s * n - o, 0.0) for s, o in zip(parent["class_shares"], omega_counts)]
    total = sum(kept)
    return [k / total for k in kept] if total > 0 else list(parent["class_shares"])


def min_share_ratio(base_shares: Sequence[float], new_shares: Sequence[float], exclude: set[int]) -> float:
    """The smallest ``new / base`` share over retained classes (those not in ``exclude``).

    Classes with a base share of 0 are skipped (they cannot drop); ``inf`` when no retained
    class has a positive base share. The gate passes when this is >= 0.5.
    """
    if len(base_shares) != len(new_shares):
        raise ValueError(f"share lists differ in length: {len(base_shares)} vs {len(new_shares)}")
    ratios = [new / base for k, (base, new) in enumerate(zip(base_shares, new_shares))
              if k not in exclude and base > 0]
    return min(ratios, default=math.inf)

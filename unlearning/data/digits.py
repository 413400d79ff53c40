"""The embedded default: scikit-learn's 1,797 handwritten 8x8 digits (ships with the
dependency, so nothing is downloaded). Pixels 0..16 become [-1, 1]."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

DIGIT_LABELS = [str(d) for d in range(10)]
HELD_OUT_FRACTION = 0.2
SPLIT_SEED = 0


@dataclass(frozen=True)
class LabelledImages:
    images: torch.Tensor  # (N, C, H, W) float32 in [-1, 1]
    labels: torch.Tensor  # (N,) int64

    def __len__(self) -> int:
        return len(self.labels)


def digits_splits() -> tuple[LabelledImages, LabelledImages]:
    """(train, held_out): a fixed stratified 80/20 split, the same on every machine."""
    # imported here: scikit-learn takes ~0.7 s to import, and the serving workers and the
    # admin API's checks of a spec never need the dataset itself
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    images = (bunch.images.astype(np.float32) / 8.0 - 1.0)[:, None]
    index = np.arange(len(images))
    train_idx, test_idx = train_test_split(
        index, test_size=HELD_OUT_FRACTION, random_state=SPLIT_SEED, stratify=bunch.target
    )

    def pick(idx: np.ndarray) -> LabelledImages:
        return LabelledImages(torch.from_numpy(images[idx]), torch.from_numpy(bunch.target[idx]).long())

    return pick(train_idx), pick(test_idx)

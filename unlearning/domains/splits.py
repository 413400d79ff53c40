"""Fixed, stratified splits of a labelled dataset: the held-out part (when the data has no
test split of its own) and the two disjoint halves of the training part that the guide and
the judge learn from. Every split is drawn per class with a seeded generator, so it is the
same on every machine, and recorded in the domain's folder (``splits.npz``)."""

from __future__ import annotations

import numpy as np

HELD_OUT_FRACTION = 0.2
SPLIT_SEED = 0


def stratified_split(labels: np.ndarray, fraction: float, seed: int = SPLIT_SEED) -> tuple[np.ndarray, np.ndarray]:
    """(rest, part): ``part`` holds ``fraction`` of each class (rounded, at least one image of
    every class with two or more), ``rest`` the others; both sorted."""
    rng = np.random.default_rng(seed)
    part: list[np.ndarray] = []
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        rng.shuffle(members)
        take = int(round(len(members) * fraction))
        if len(members) >= 2:
            take = min(max(take, 1), len(members) - 1)
        part.append(members[:take])
    chosen = np.sort(np.concatenate(part)) if part else np.zeros(0, np.int64)
    rest = np.setdiff1d(np.arange(len(labels)), chosen)
    return rest.astype(np.int64), chosen.astype(np.int64)


def guide_and_judge(labels: np.ndarray, seed: int = SPLIT_SEED + 1) -> tuple[np.ndarray, np.ndarray]:
    """Two disjoint halves of the training images (indices): the guide's and the judge's."""
    return stratified_split(labels, 0.5, seed)

"""A procedural RGB dataset whose attributes are known exactly: one filled circle, square
or triangle per image, pure red, green or blue, small or large, anywhere it fits, on
black. Nothing is downloaded and every attribute can be checked against the pixels, which
makes it the dataset for tests and for specs that combine attributes ("forget red
triangles")."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from unlearning.data.digits import LabelledImages

SHAPES = ["circle", "square", "triangle"]
COLOURS = ["red", "green", "blue"]  # code = the RGB channel that is lit
SIZES = ["small", "large"]
ATTRIBUTE_NAMES: dict[str, list[str]] = {"shape": SHAPES, "colour": COLOURS, "size": SIZES}
HALF_EXTENT = {"small": 0.18, "large": 0.32}  # half the side of the bounding square, as a fraction of the image
MIN_RESOLUTION = 8


@dataclass(frozen=True)
class ShapesData:
    images: torch.Tensor  # (N, 3, R, R) float32 in [-1, 1]
    attributes: dict[str, torch.Tensor]  # shape/colour/size: int64 codes; x/y: float32 centre, pixels

    def __len__(self) -> int:
        return len(self.images)

    def labelled(self, attribute: str) -> LabelledImages:
        """The images labelled by one categorical attribute (e.g. to train a classifier)."""
        if attribute not in ATTRIBUTE_NAMES:
            raise KeyError(f"no categorical attribute {attribute!r}; have {', '.join(ATTRIBUTE_NAMES)}")
        return LabelledImages(self.images, self.attributes[attribute])


def make_shapes(n: int, *, resolution: int = 16, seed: int = 0) -> ShapesData:
    """``n`` images, the same for the same (n, resolution, seed). Pixel (i, j) covers
    [j, j+1) x [i, i+1), so its centre is (j + 0.5, i + 0.5); ``x``/``y`` use that frame.
    Squares fill their bounding square, circles are inscribed in it, triangles point up
    with their base on its bottom edge."""
    if n < 0:
        raise ValueError(f"n must be >= 0, not {n}")
    if resolution < MIN_RESOLUTION:
        raise ValueError(f"resolution must be at least {MIN_RESOLUTION}, not {resolution}")
    rng = np.random.default_rng(seed)
    shape = rng.integers(0, len(SHAPES), n)
    colour = rng.integers(0, len(COLOURS), n)
    size = rng.integers(0, len(SIZES), n)
    half = np.array([HALF_EXTENT[s] for s in SIZES])[size] * resolution
    x = rng.uniform(half, resolution - half)
    y = rng.uniform(half, resolution - half)

    centres = np.arange(resolution) + 0.5
    dx = centres[None, None, :] - x[:, None, None]  # (N, 1, R)
    dy = centres[None, :, None] - y[:, None, None]  # (N, R, 1)
    s = half[:, None, None]
    circle = dx**2 + dy**2 <= s**2
    square = (np.abs(dx) <= s) & (np.abs(dy) <= s)
    triangle = (dy <= s) & (np.abs(dx) <= (dy + s) / 2)  # apex (x, y - s), base y + s from x - s to x + s
    masks = np.where(
        (shape == 0)[:, None, None], circle, np.where((shape == 1)[:, None, None], square, triangle)
    )

    images = np.full((n, 3, resolution, resolution), -1.0, dtype=np.float32)
    lit = masks[:, None] & (np.arange(3)[None, :, None, None] == colour[:, None, None, None])
    images[lit] = 1.0
    attributes = {
        "shape": torch.from_numpy(shape.astype(np.int64)),
        "colour": torch.from_numpy(colour.astype(np.int64)),
        "size": torch.from_numpy(size.astype(np.int64)),
        "x": torch.from_numpy(x.astype(np.float32)),
        "y": torch.from_numpy(y.astype(np.float32)),
    }
    return ShapesData(torch.from_numpy(images), attributes)

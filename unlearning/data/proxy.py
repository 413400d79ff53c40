"""Proxy retain images for image-to-image unlearning when the operator has no retain data
(Li et al. use another public dataset of the same kind: Places365 for ImageNet). Here:
printed digit glyphs, rendered from the font that ships with Pillow with random size,
rotation and stroke weight, and random pen strokes (quadratic Bezier curves). Both are
drawn at 4x the target size and area-averaged down, as scikit-learn's digits were made.
Grayscale in [-1, 1]; expanded to the model's channel count by the caller."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFilter, ImageFont

SUPERSAMPLING = 4


def _area_average(canvas: np.ndarray, resolution: int) -> np.ndarray:
    """(N, 4R, 4R) -> (N, R, R)."""
    return canvas.reshape(len(canvas), resolution, SUPERSAMPLING, resolution, SUPERSAMPLING).mean((2, 4))


def _to_pixels(images: np.ndarray) -> torch.Tensor:
    """(N, R, R) ink in [0, 255] -> (N, 1, R, R) in [-1, 1], each image stretched to full ink."""
    peak = images.reshape(len(images), -1).max(1).clip(min=1e-6)
    return torch.from_numpy((images / peak[:, None, None]).astype(np.float32) * 2 - 1).unsqueeze(1)


def typed_digits(n: int, resolution: int, seed: int) -> torch.Tensor:
    """``n`` printed digits 0-9 (uniform), jittered in size, position, angle and weight."""
    rng = np.random.default_rng(seed)
    side = resolution * SUPERSAMPLING
    fonts: dict[int, ImageFont.FreeTypeFont | ImageFont.ImageFont] = {}
    canvases = np.zeros((n, side, side), np.float32)
    for i in range(n):
        size = int(rng.integers(side, int(side * 1.3)))
        font = fonts.setdefault(size, ImageFont.load_default(size=size))
        canvas = Image.new("L", (side, side))
        centre = (side / 2 + rng.normal(0, 1), side / 2 + rng.normal(0, 1))
        ImageDraw.Draw(canvas).text(centre, str(int(rng.integers(10))), fill=255, font=font, anchor="mm")
        canvas = canvas.rotate(float(rng.normal(0, 8)), resample=Image.BILINEAR)
        if rng.random() < 0.7:
            canvas = canvas.filter(ImageFilter.MaxFilter(3))  # a heavier pen
        canvases[i] = np.asarray(canvas, np.float32)
    return _to_pixels(_area_average(canvases, resolution))


def pen_strokes(n: int, resolution: int, seed: int, *, strokes: tuple[int, int] = (2, 3)) -> torch.Tensor:
    """``n`` images of 2-3 random curved strokes of random width."""
    rng = torch.Generator().manual_seed(seed)
    side = resolution * SUPERSAMPLING
    ys, xs = torch.meshgrid(torch.linspace(0, 1, side), torch.linspace(0, 1, side), indexing="ij")
    grid = torch.stack([xs, ys], -1).view(1, -1, 2).expand(n, -1, -1)
    t = torch.linspace(0, 1, 24).view(1, -1, 1)
    ink = torch.zeros(n, side * side)
    for k in range(strokes[1]):
        drawn = torch.rand(n, generator=rng) < (1.0 if k < strokes[0] else 0.5)
        p = 0.12 + 0.76 * torch.rand(n, 3, 1, 2, generator=rng)
        curve = (1 - t) ** 2 * p[:, 0] + 2 * (1 - t) * t * p[:, 1] + t ** 2 * p[:, 2]
        width = 0.08 + 0.06 * torch.rand(n, 1, generator=rng)
        near = torch.cdist(grid, curve).amin(-1) < width
        ink = torch.maximum(ink, (near & drawn.view(-1, 1)).float() * 255)
    return _to_pixels(_area_average(ink.view(n, side, side).numpy(), resolution))


def proxy_images(n: int, resolution: int, channels: int, seed: int) -> torch.Tensor:
    """``n`` typed digits and ``n`` pen-stroke images, shuffled, at the model's shape."""
    images = torch.cat([typed_digits(n, resolution, seed), pen_strokes(n, resolution, seed + 1)])
    images = images[torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))]
    return images.expand(-1, channels, -1, -1).contiguous()

"""Pictures of samples: one grid convention for reports and the service's /grid."""

from __future__ import annotations

import io

import numpy as np
import torch
from PIL import Image
from torchvision.utils import make_grid

from unlearning.data.files import to_uint8


def grid_image(images: torch.Tensor, *, nrow: int = 8, min_side: int = 256) -> Image.Image:
    """Tile [-1, 1] NCHW images into one picture, enlarged (nearest neighbour, so pixels stay
    crisp) until the grid is at least ``min_side`` pixels wide."""
    grid = make_grid(images.detach().cpu().float(), nrow=nrow, padding=1, pad_value=1.0)
    array = to_uint8(grid[None])[0]  # (C, H, W) uint8
    array = np.transpose(array, (1, 2, 0))
    picture = Image.fromarray(array[..., 0] if array.shape[2] == 1 else array)
    scale = max(1, -(-min_side // picture.width))
    return picture.resize((picture.width * scale, picture.height * scale), Image.NEAREST)


def grid_png(images: torch.Tensor, **kwargs) -> bytes:
    buffer = io.BytesIO()
    grid_image(images, **kwargs).save(buffer, format="PNG")
    return buffer.getvalue()

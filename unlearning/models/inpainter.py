"""A small image-to-image model h = D_phi o E_theta (Li et al., papers/003): it restores an
image from a degraded copy T(x). The digits default erases a fixed random quarter of the
pixels (``degradation: mask``); ``centre`` erases a square hole in the middle. Unlearning
edits the encoder only; the decoder stays frozen.

Why ``mask`` by default: on 8x8 digits a centre hole of 4x4 removes what tells an 8, a 6
or a 9 from a 0, so T(x) of many digits looks like T(a zero) and no encoder can forget one
without the others. A scattered mask keeps every digit recognisable.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator
from torch import nn

BACKGROUND = -1.0  # an erased pixel, in the project's [-1, 1] convention


class InpainterConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    resolution: int = Field(8, ge=8, le=64, description="image side; a multiple of 4")
    channels: int = Field(1, ge=1, le=4)
    code_dim: int = Field(128, ge=4, description="the encoder's output, the paper's embedding")
    width: int = Field(32, ge=4)
    degradation: Literal["mask", "centre"] = "mask"
    hole: int = Field(4, ge=1, description="side of the centre hole (centre)")
    mask_share: float = Field(0.25, gt=0.0, lt=1.0, description="share of pixels erased (mask)")
    mask_seed: int = 0

    @field_validator("resolution")
    @classmethod
    def _quarters(cls, value: int) -> int:
        if value % 4:
            raise ValueError(f"resolution must be a multiple of 4 (two stride-2 stages), got {value}")
        return value


def erased_pixels(config: InpainterConfig) -> torch.Tensor:
    """The (R, R) boolean map of the pixels T erases: the same for every image, so serving
    is deterministic and the map can live in the exported graph as a constant."""
    side = config.resolution
    if config.degradation == "centre":
        erased = torch.zeros(side, side, dtype=torch.bool)
        start = (side - config.hole) // 2
        erased[start:start + config.hole, start:start + config.hole] = True
        return erased
    rng = torch.Generator().manual_seed(config.mask_seed)
    return torch.rand(side, side, generator=rng) < config.mask_share


def degrade(images: torch.Tensor, config: InpainterConfig) -> torch.Tensor:
    """T(x)."""
    return images.masked_fill(erased_pixels(config).to(images.device), BACKGROUND)


class Inpainter(nn.Module):
    """Degraded image -> restored image, both (N, C, R, R) in [-1, 1]."""

    kind = "inpainter"

    def __init__(self, config: InpainterConfig):
        super().__init__()
        self.config = config
        w, quarter = config.width, config.resolution // 4
        # not part of the weights: rebuilt from the config
        self.register_buffer("erased", erased_pixels(config), persistent=False)
        self.encoder = nn.Sequential(
            nn.Conv2d(config.channels, w, 3, padding=1), nn.ReLU(),
            nn.Conv2d(w, 2 * w, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(2 * w, 2 * w, 3, stride=2, padding=1), nn.ReLU(),
            nn.Flatten(), nn.Linear(2 * w * quarter * quarter, config.code_dim),
        )
        self.decoder = nn.Sequential(
            nn.Linear(config.code_dim, 2 * w * quarter * quarter), nn.ReLU(),
            nn.Unflatten(1, (2 * w, quarter, quarter)),
            nn.Upsample(scale_factor=2), nn.Conv2d(2 * w, w, 3, padding=1), nn.ReLU(),
            nn.Upsample(scale_factor=2), nn.Conv2d(w, config.channels, 3, padding=1), nn.Tanh(),
        )

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return (self.config.channels, self.config.resolution, self.config.resolution)

    def degrade(self, images: torch.Tensor) -> torch.Tensor:
        return images.masked_fill(self.erased, BACKGROUND)

    def forward(self, degraded: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(degraded))

    def restore(self, images: torch.Tensor) -> torch.Tensor:
        """h(T(x)) for clean images x."""
        return self(self.degrade(images))


class Restorer(nn.Module):
    """x -> h(T(x)): what is exported to ONNX and served at ``POST /inpaint``."""

    def __init__(self, inpainter: Inpainter):
        super().__init__()
        self.inpainter = inpainter

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.inpainter.restore(images)

"""DCGAN generator and discriminator (Radford et al.), sized by resolution and channels.

The discriminator returns a *logit*; D(x) in the papers is its sigmoid. Keeping logits lets
the unguided losses use log-sigmoid, which is exact where the probability saturates.
"""

from __future__ import annotations

import math

import torch
from pydantic import BaseModel, Field, field_validator
from torch import nn


class DCGANConfig(BaseModel):
    resolution: int = Field(8, ge=8, le=256, description="image side in pixels: 2^k times a start side of 2 to 7")
    channels: int = Field(1, ge=1, le=4)
    latent_dim: int = Field(128, ge=1, description="the papers use 128")
    width: int = Field(64, ge=8, description="feature maps in the widest layer next to the image")

    @field_validator("resolution")
    @classmethod
    def _halves_to_a_start_side(cls, value: int) -> int:
        if _start_side(value) is None:
            raise ValueError(f"resolution {value} does not halve to a side of 2 to 7 in one or more steps "
                             "(e.g. 8, 16, 28, 32, 48, 64)")
        return value

    @property
    def start_side(self) -> int:
        return _start_side(self.resolution)  # type: ignore[return-value]

    @property
    def n_scales(self) -> int:
        return int(math.log2(self.resolution // self.start_side))


def _start_side(resolution: int) -> int | None:
    """The feature map side the generator starts from: 2 for 8 (the digits default), 4 for
    other powers of two, else the resolution halved while it stays even and above 7 (28 ->
    7, 48 -> 6). None if that takes no halving (an odd side, or one under 8)."""
    if resolution == 8:
        return 2
    if resolution & (resolution - 1) == 0:
        return 4
    side = resolution
    while side % 2 == 0 and side > 7:
        side //= 2
    return side if side != resolution and 2 <= side <= 7 else None


class Generator(nn.Module):
    kind = "dcgan-generator"

    def __init__(self, config: DCGANConfig | None = None):
        super().__init__()
        self.config = config or DCGANConfig()
        c = self.config
        top = c.width * 2 ** (c.n_scales - 1)
        self.project = nn.Sequential(
            nn.Linear(c.latent_dim, top * c.start_side**2, bias=False),
            nn.BatchNorm1d(top * c.start_side**2),
            nn.ReLU(True),
        )
        layers: list[nn.Module] = []
        channels = top
        for _ in range(c.n_scales - 1):
            layers += [
                nn.ConvTranspose2d(channels, channels // 2, 4, 2, 1, bias=False),
                nn.BatchNorm2d(channels // 2),
                nn.ReLU(True),
            ]
            channels //= 2
        layers += [nn.ConvTranspose2d(channels, c.channels, 4, 2, 1), nn.Tanh()]
        self.upsample = nn.Sequential(*layers)
        self._top = top

    @property
    def latent_dim(self) -> int:
        return self.config.latent_dim

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        c = self.config
        h = self.project(z).view(-1, self._top, c.start_side, c.start_side)
        return self.upsample(h)


class Discriminator(nn.Module):
    kind = "dcgan-discriminator"

    def __init__(self, config: DCGANConfig | None = None):
        super().__init__()
        self.config = config or DCGANConfig()
        c = self.config
        layers: list[nn.Module] = [nn.Conv2d(c.channels, c.width, 4, 2, 1), nn.LeakyReLU(0.2, True)]
        channels = c.width
        for _ in range(c.n_scales - 1):
            layers += [
                nn.Conv2d(channels, channels * 2, 4, 2, 1, bias=False),
                nn.BatchNorm2d(channels * 2),
                nn.LeakyReLU(0.2, True),
            ]
            channels *= 2
        layers += [nn.Flatten(), nn.Linear(channels * c.start_side**2, 1)]
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logit of D(x), shape (N,)."""
        return self.net(x).squeeze(1)

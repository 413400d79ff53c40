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
    resolution: int = Field(8, description="image side in pixels; a power of two >= 8")
    channels: int = Field(1, ge=1, le=4)
    latent_dim: int = Field(128, ge=1, description="the papers use 128")
    width: int = Field(64, ge=8, description="feature maps in the widest layer next to the image")

    @field_validator("resolution")
    @classmethod
    def _power_of_two(cls, value: int) -> int:
        if value < 8 or value & (value - 1):
            raise ValueError("resolution must be a power of two >= 8")
        return value

    @property
    def start_side(self) -> int:
        return 2 if self.resolution == 8 else 4

    @property
    def n_scales(self) -> int:
        return int(math.log2(self.resolution // self.start_side))


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

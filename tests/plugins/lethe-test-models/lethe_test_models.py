"""A generator architecture of a user's own: a residual MLP with a learned output scale,
none of Lethe's families. It keeps the contract of ``unlearning.models.plugins.GeneratorModel``:
``kind`` (the entry point's name), ``config_class``, ``config``, ``latent_dim`` and
``forward(z)`` -> images in [-1, 1], NCHW."""

from __future__ import annotations

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn


class MLPGeneratorConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    latent_dim: int = Field(8, ge=1)
    hidden: int = Field(128, ge=8)
    channels: int = Field(1, ge=1)
    side: int = Field(8, ge=4)


class MLPGenerator(nn.Module):
    kind = "lethe-test-mlp"
    config_class = MLPGeneratorConfig

    def __init__(self, config: MLPGeneratorConfig):
        super().__init__()
        self.config = config
        self.latent_dim = config.latent_dim
        self.inp = nn.Linear(config.latent_dim, config.hidden)
        self.block = nn.Sequential(nn.SiLU(), nn.Linear(config.hidden, config.hidden), nn.SiLU())
        self.out = nn.Linear(config.hidden, config.channels * config.side * config.side)
        self.gain = nn.Parameter(torch.ones(()))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.inp(z)
        h = h + self.block(h)
        c = self.config
        return torch.tanh(self.gain * self.out(h)).reshape(-1, c.channels, c.side, c.side)

"""A small fully connected VAE (Kingma & Welling) for the digits default: the decoder is
the generator that is served and unlearned (Moon et al. unlearn "a vanilla VAE" on MNIST);
the encoder is kept beside it for completeness and is never served.

Pixels are Bernoulli means: the decoder's logits l give the image tanh(l / 2) = 2 sigmoid(l) - 1
in [-1, 1] (the project's convention), and training uses BCE on (x + 1) / 2.
"""

from __future__ import annotations

import torch
from pydantic import BaseModel, Field
from torch import nn


class VAEConfig(BaseModel):
    resolution: int = Field(8, ge=4, le=64)
    channels: int = Field(1, ge=1, le=4)
    latent_dim: int = Field(16, ge=1)
    hidden: int = Field(256, ge=8)

    @property
    def pixels(self) -> int:
        return self.channels * self.resolution * self.resolution


class Decoder(nn.Module):
    """z -> image in [-1, 1]; the served generator of a VAE model."""

    kind = "vae-decoder"

    def __init__(self, config: VAEConfig):
        super().__init__()
        self.config = config
        self.latent_dim = config.latent_dim
        self.net = nn.Sequential(
            nn.Linear(config.latent_dim, config.hidden), nn.ReLU(),
            nn.Linear(config.hidden, config.hidden), nn.ReLU(),
            nn.Linear(config.hidden, config.pixels),
        )

    def logits(self, z: torch.Tensor) -> torch.Tensor:
        c = self.config
        return self.net(z).view(-1, c.channels, c.resolution, c.resolution)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.logits(z) / 2)


class Encoder(nn.Module):
    """image -> (mean, log variance) of q(z | x)."""

    kind = "vae-encoder"

    def __init__(self, config: VAEConfig):
        super().__init__()
        self.config = config
        self.net = nn.Sequential(
            nn.Flatten(), nn.Linear(config.pixels, config.hidden), nn.ReLU(),
            nn.Linear(config.hidden, config.hidden), nn.ReLU(),
            nn.Linear(config.hidden, 2 * config.latent_dim),
        )

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean, log_var = self.net(x).chunk(2, dim=1)
        return mean, log_var.clamp(-10, 10)


def negative_elbo(encoder: Encoder, decoder: Decoder, x: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of BCE reconstruction (summed over pixels) + KL(q(z|x) || N(0, I))."""
    mean, log_var = encoder(x)
    z = mean + torch.randn_like(mean) * (0.5 * log_var).exp()
    target = ((x + 1) / 2).clamp(0, 1)
    reconstruction = nn.functional.binary_cross_entropy_with_logits(
        decoder.logits(z), target, reduction="none"
    ).flatten(1).sum(1)
    kl = 0.5 * (mean.pow(2) + log_var.exp() - 1 - log_var).sum(1)
    return (reconstruction + kl).mean()

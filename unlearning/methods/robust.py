"""Robust redaction (ours, not in the seed papers): latent adversarial training for Kong &
Chaudhuri's Alg. 1-3 (``hyperparameters: {robust: true}``).

A redaction that only sees random latents removes the forgotten class from what random
sampling draws, but the inversion attack (``metrics/inversion.py``) still finds latents
that reproduce it. Here the attack runs during training: a bank of the method's own
forgotten examples (the training images in Omega and the uploaded negatives; never the
judge, never held-out data) is inverted with the *current* G, and those latents replace
``robust_share`` of the generated rows of both the discriminator's fake batch and the
generator's batch (drawn with the running BatchNorm statistics, as the attacker meets
them, so the few attack latents do not shift the statistics random samples use). The
(guided) discriminator learns that what they draw is fake; the generator is pushed away
from drawing it, where the attacker would look.

Following latent adversarial training (Casper et al. 2024, "Defending Against Unforeseen
Failure Modes with Latent Adversarial Training"; Sheshadri et al. 2024, "Targeted Latent
Adversarial Training"), with the attack of the diffusion-unlearning literature
(UnlearnDiffAtk; "Memories of Forgotten Concepts") as the adversary. The latents are
persistent: each refresh runs a few Adam steps from where the last one ended (the
attacker's optimum moves slowly with G), and the bank is re-drawn from fresh random
starts every ``robust_redraw`` refreshes so it does not settle into one basin.
"""

from __future__ import annotations

import time
from typing import Any

import torch
from pydantic import BaseModel, Field
from torch import nn

from unlearning.metrics.attack import project_to_ball
from unlearning.metrics.inversion import ball_radius, fit_latents


class RobustSettings(BaseModel):
    """The knobs of robust redaction; off by default."""

    robust: bool = Field(False, description="latent adversarial training against the inversion attack")
    robust_share: float = Field(0.25, gt=0.0, le=1.0, description="share of generated rows from the attack's latents")
    robust_targets: int = Field(64, ge=1, le=4096, description="forgotten examples inverted at a time")
    robust_every: int = Field(2, ge=1, le=10_000, description="iterations between refreshes of the latents")
    robust_steps: int = Field(10, ge=1, le=10_000, description="Adam steps per refresh, from the last latents")
    robust_redraw: int = Field(10, ge=1, le=10_000, description="refreshes between new targets and fresh starts")
    robust_redraw_steps: int = Field(100, ge=1, le=100_000, description="Adam steps from fresh starts")
    robust_lr: float = Field(0.05, gt=0.0, le=10.0, description="Adam step size of the inversion")


class InversionAdversary:
    """The attacker inside training (``train_adversarial``'s ``adversary``)."""

    def __init__(self, examples: torch.Tensor, latent_dim: int, settings: RobustSettings, seed: int,
                 device: torch.device):
        if len(examples) == 0:
            raise ValueError("robust redaction needs forgotten examples to invert")
        self.examples = examples.to(device)
        self.settings = settings
        self.radius = ball_radius(latent_dim)
        self.latent_dim = latent_dim
        self.device = device
        self.rng = torch.Generator().manual_seed(seed)
        self.targets: torch.Tensor | None = None
        self.z: torch.Tensor | None = None
        self.refreshes = 0
        self.stats: dict[str, Any] = {"inversion_s": 0.0, "inversion_steps": 0, "refreshes": 0, "redraws": 0,
                                      "last_mse": None}

    def _redraw(self) -> int:
        n = min(self.settings.robust_targets, len(self.examples))
        index = torch.randperm(len(self.examples), generator=self.rng)[:n]
        self.targets = self.examples[index.to(self.examples.device)]
        z = torch.randn(n, self.latent_dim, generator=self.rng)
        project_to_ball(z, self.radius)
        self.z = z.to(self.device)
        self.stats["redraws"] += 1
        return self.settings.robust_redraw_steps

    def update(self, generator: nn.Module, iteration: int) -> None:
        if iteration % self.settings.robust_every:
            return
        started = time.monotonic()
        steps = self._redraw() if self.refreshes % self.settings.robust_redraw == 0 else self.settings.robust_steps
        self.refreshes += 1
        was_training = generator.training
        generator.eval()  # running statistics: what the attacker meets; and they stay untouched
        try:
            with torch.enable_grad():
                self.z, error = fit_latents(generator, self.targets, self.z, steps=steps, lr=self.settings.robust_lr,
                                            radius=self.radius)
        finally:
            generator.train(was_training)
        self.stats["inversion_s"] += time.monotonic() - started
        self.stats["inversion_steps"] += steps
        self.stats["refreshes"] = self.refreshes
        self.stats["last_mse"] = float(error.mean())

    def rows(self, n: int) -> int:
        """Rows of a generated batch of n the attack's latents fill (at least 2 stay random:
        BatchNorm needs them)."""
        return 0 if self.z is None else max(0, min(round(self.settings.robust_share * n), n - 2))

    def images(self, generator: nn.Module, k: int, rng: torch.Generator) -> torch.Tensor:
        """G(z) for k of the bank's latents, drawn in eval mode: the running statistics the
        attacker meets, which these few latents must not shift."""
        index = torch.randint(len(self.z), (k,), generator=rng).to(self.z.device)
        was_training = generator.training
        generator.eval()
        try:
            return generator(self.z[index])
        finally:
            generator.train(was_training)

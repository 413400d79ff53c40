"""The one adversarial training loop behind base pre-training and Kong & Chaudhuri's
Alg. 1-3: minimise/maximise L(G, D) of eq. 3 with p_fake = lam * p_G + (1 - lam) * p_Omega
(eq. 2), optionally through the guided discriminator of eq. 6.

Per mini-batch of real (retained) samples: K_D discriminator steps on real vs a fake batch
whose first lam*B rows are G(z) and the rest come from the negative pool, then K_G
non-saturating generator steps. An exponential moving average of G's weights is what the
caller gets back: fine-tuning for a few epochs makes the raw weights swing, the average
does not.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from unlearning.methods.base import GAN, MAX_BATCH, MAX_SEED, Callbacks
from unlearning.methods.losses import (
    SoftGuide,
    discriminator_loss,
    generator_loss,
    guided_log_probs,
)


class AdversarialSettings(BaseModel):
    """Defaults are the paper's redaction setting on MNIST (App. D, E)."""

    model_config = ConfigDict(extra="forbid")

    epochs: int = Field(8, ge=1, le=10_000)
    epoch_images: int | None = Field(
        None, ge=1, le=10_000_000, description="real images per epoch, drawn without replacement (None: all of them)")
    batch_size: int = Field(64, ge=2, le=MAX_BATCH)
    lr: float = Field(2e-4, gt=0, le=1.0)
    beta1: float = Field(0.5, ge=0.0, lt=1.0)
    beta2: float = Field(0.999, ge=0.0, lt=1.0)
    alpha_pos: float = Field(0.95, gt=0.5, le=1.0, description="a+, real target")
    alpha_neg: float = Field(0.05, ge=0.0, lt=0.5, description="a-, fake target")
    lam: float = Field(0.85, gt=0.0, le=1.0, description="share of G(z) in p_fake (eq. 2)")
    d_steps: int = Field(1, ge=1, le=100, description="K_D")
    g_steps: int = Field(1, ge=1, le=100, description="K_G")
    ema_decay: float | None = Field(0.95, ge=0.0, lt=1.0, description="None: return raw G")
    seed: int = Field(0, ge=0, le=MAX_SEED)


class NegativePool:
    """p_Omega: a growing set of samples to redact, drawn uniformly."""

    def __init__(self, images: torch.Tensor | None = None):
        self.images = images if images is not None else torch.empty(0)

    def __len__(self) -> int:
        return len(self.images)

    def add(self, images: torch.Tensor) -> None:
        images = images.detach()
        self.images = images if len(self) == 0 else torch.cat([self.images, images.to(self.images.device)])

    def sample(self, k: int, generator: torch.Generator) -> torch.Tensor:
        index = torch.randint(len(self), (k,), generator=generator)
        return self.images[index]


class EMA:
    """Exponential moving average of a module's parameters; buffers (BatchNorm running
    statistics) are copied as they are."""

    def __init__(self, module: nn.Module, decay: float):
        self.decay = decay
        self.module = copy.deepcopy(module).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, module: nn.Module) -> None:
        for averaged, current in zip(self.module.parameters(), module.parameters()):
            averaged.lerp_(current, 1.0 - self.decay)
        for averaged, current in zip(self.module.buffers(), module.buffers()):
            averaged.copy_(current)


EpochHook = Callable[[int, nn.Module], dict[str, Any] | None]


class LatentAdversary(Protocol):
    """Robust redaction (``methods/robust.py``): latents an attacker would pick, refreshed
    against the current G; what G draws from them fills ``rows(n)`` of the n generated
    rows of both the discriminator's fake batch and the generator's batch."""

    def update(self, generator: nn.Module, iteration: int) -> None: ...

    def rows(self, n: int) -> int: ...

    def images(self, generator: nn.Module, k: int, rng: torch.Generator) -> torch.Tensor: ...


def train_adversarial(
    gan: GAN,
    real: torch.Tensor,
    settings: AdversarialSettings,
    *,
    pool: NegativePool | None = None,
    guides: Sequence[SoftGuide] = (),
    callbacks: Callbacks | None = None,
    before_epoch: EpochHook | None = None,
    after_epoch: EpochHook | None = None,
    generator_penalty: Callable[[nn.Module], torch.Tensor] | None = None,
    adversary: LatentAdversary | None = None,
    device: torch.device | None = None,
) -> tuple[GAN, list[dict[str, Any]], dict[str, Any]]:
    """Train (G, D) in place on eq. 3; return (GAN with the averaged G, history, stats).

    ``generator_penalty(G)`` (optional) is added to every generator step's loss: the EWC
    term and the repulsion of Adapt-then-Unlearn live there.

    before_epoch(epoch, G) runs before each epoch (Alg. 2/3 grow the pool there);
    after_epoch(epoch, G_returned) may measure the model; whatever dicts they return go
    into the history. after_epoch returning {"stop": True} ends training early.

    ``adversary`` (robust redaction) is updated before every iteration and draws part of
    every generated batch."""
    callbacks = callbacks or Callbacks()
    device = device or next(gan.generator.parameters()).device
    gan.to(device)
    g, d = gan.generator, gan.discriminator
    real = real.to(device)
    pool = pool or NegativePool()
    if len(pool):
        pool.images = pool.images.to(device)
    rng = torch.Generator().manual_seed(settings.seed)
    torch.manual_seed(settings.seed)

    betas = (settings.beta1, settings.beta2)
    opt_g = torch.optim.Adam(g.parameters(), lr=settings.lr, betas=betas)
    opt_d = torch.optim.Adam(d.parameters(), lr=settings.lr, betas=betas)
    ema = EMA(g, settings.ema_decay) if settings.ema_decay else None

    b = settings.batch_size
    per_epoch = len(real) if settings.epoch_images is None else min(len(real), settings.epoch_images)
    batches_per_epoch = max(1, per_epoch // b)  # drop the ragged last batch: BatchNorm
    total = settings.epochs * batches_per_epoch
    history: list[dict[str, Any]] = []
    steps = {"iterations": 0, "d_steps": 0, "g_steps": 0}

    def returned_generator() -> nn.Module:
        return ema.module if ema else g

    def generated(n: int) -> torch.Tensor:
        k = adversary.rows(n) if adversary is not None else 0
        fake = g(torch.randn(n - k, g.latent_dim, generator=rng).to(device))
        return torch.cat([fake, adversary.images(g, k, rng)]) if k else fake

    def fake_batch() -> torch.Tensor:
        n_generated = b if len(pool) == 0 else max(1, round(settings.lam * b))
        with torch.no_grad():  # D's step needs no graph of G
            fake = generated(n_generated)
        if n_generated < b:
            fake = torch.cat([fake, pool.sample(b - n_generated, rng).to(device)])
        return fake

    def log_probs(images: torch.Tensor):
        return guided_log_probs(d(images), images, guides, settings.alpha_neg)

    for epoch in range(settings.epochs):
        record: dict[str, Any] = {"epoch": epoch + 1}
        if before_epoch:
            record.update(before_epoch(epoch, g) or {})
        g.train()
        d.train()
        order = torch.randperm(len(real), generator=rng)
        d_loss = g_loss = penalty_value = math.nan
        for i in range(batches_per_epoch):
            callbacks.check_cancelled()
            x_real = real[order[i * b : (i + 1) * b]]
            if adversary is not None:
                adversary.update(g, steps["iterations"])
            for _ in range(settings.d_steps):
                loss = discriminator_loss(
                    log_probs(x_real), log_probs(fake_batch()), settings.alpha_pos, settings.alpha_neg
                )
                opt_d.zero_grad(set_to_none=True)
                loss.backward()
                opt_d.step()
                steps["d_steps"] += 1
                d_loss = loss.item()
            for _ in range(settings.g_steps):
                loss = generator_loss(log_probs(generated(b)))
                if generator_penalty is not None:
                    penalty = generator_penalty(g)
                    penalty_value = penalty.item()
                    loss = loss + penalty
                opt_g.zero_grad(set_to_none=True)
                loss.backward()
                opt_g.step()
                steps["g_steps"] += 1
                g_loss = loss.item()
                if ema:
                    ema.update(g)
            steps["iterations"] += 1
            callbacks.progress(
                steps["iterations"] / total, {"epoch": epoch + 1, "epochs": settings.epochs}
            )
        record.update({"d_loss": d_loss, "g_loss": g_loss, "pool": len(pool)})
        if generator_penalty is not None:
            record["penalty"] = penalty_value
        stop = False
        if after_epoch:
            measured = after_epoch(epoch, returned_generator()) or {}
            stop = bool(measured.pop("stop", False))
            record.update(measured)
        history.append(record)
        callbacks.progress(steps["iterations"] / total, record)
        if stop:
            break

    result = GAN(returned_generator(), d)
    result.generator.eval().requires_grad_(True)
    result.discriminator.eval()
    return result, history, {**steps, "epochs_run": len(history), "batches_per_epoch": batches_per_epoch}

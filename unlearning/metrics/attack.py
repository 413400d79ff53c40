"""The worst-case (latent attack) check: how much of what was forgotten can the generator
still be pushed to make? None of the papers runs it (METHODS.md 5).

Random sampling measures the invalidity a user meets by chance. An adversary who controls
the latent instead climbs the forget checks' differentiable margin (``RedactionSet.
attack_margin``: > 0 roughly inside Omega) by gradient ascent from many random starts,
keeping each latent inside the prior's typical ball (radius sqrt(d) + 3 / sqrt(2), past
which N(0, I) has ~0.1 % of its mass), so the images stay ones the model can be asked for
by an ordinary sampler. A start counts as a success when the real judge (``in_omega``) says
invalid at any step. Truncation extremes (z scaled by psi) are judged too: they are the
other cheap knob a sampler exposes.

    worst_case = max(attack success rate, invalidity at each truncation psi)
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from unlearning.runtime import latents
from unlearning.spec.checks import RedactionSet


class AttackSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    starts: int = Field(256, ge=1, le=100_000, description="random latents the ascent starts from")
    steps: int = Field(60, ge=1, le=10_000, description="Adam steps per start")
    lr: float = Field(0.05, gt=0.0, description="Adam step size in latent units")
    seed: int = Field(20_240_603, ge=0)
    truncations: tuple[float, ...] = (0.25, 0.5, 1.5, 2.0)
    truncation_samples: int = Field(2000, ge=0)
    batch_size: int = Field(256, ge=1)


def _typical_radius(latent_dim: int) -> float:
    """sqrt(d) + 3 standard deviations of the chi distribution (sd -> 1/sqrt(2))."""
    return math.sqrt(latent_dim) + 3.0 / math.sqrt(2.0)


def _project(z: torch.Tensor, radius: float) -> None:
    with torch.no_grad():
        norms = z.norm(dim=1, keepdim=True).clamp_min(1e-12)
        z.mul_(torch.clamp(radius / norms, max=1.0))


def _ascend(
    generator: nn.Module, omega: RedactionSet, z0: torch.Tensor, settings: AttackSettings, radius: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradient ascent from a batch of starts: (ever invalid, final images, step of first success or -1)."""
    z = z0.clone().requires_grad_(True)
    optimiser = torch.optim.Adam([z], lr=settings.lr)
    reached = torch.full((len(z0),), -1, dtype=torch.long, device=z0.device)
    images = None
    for step in range(settings.steps + 1):
        images = generator(z)
        invalid = omega.in_omega(images.detach())
        reached[(reached < 0) & invalid] = step
        if step == settings.steps:
            break
        optimiser.zero_grad(set_to_none=True)
        # The margin of a start already inside Omega is not pushed further: only reach matters.
        margin = omega.attack_margin(images)
        (-(margin * (reached < 0))).sum().backward()
        optimiser.step()
        _project(z, radius)
    return reached >= 0, images.detach(), reached


def latent_attack(
    generator: nn.Module,
    omega: RedactionSet,
    settings: AttackSettings | None = None,
    *,
    device: torch.device | None = None,
    progress: Callable[[int, int], None] | None = None,
    keep_images: int = 0,
) -> dict[str, Any]:
    """The worst-case invalidity of ``generator`` against ``omega`` (see the module doc).

    Returns ``random_invalidity`` (the starts, before any step), ``attack_invalidity``
    (share of starts that reach Omega), ``median_steps`` to reach it, ``truncation``
    {psi: invalidity}, ``worst_case`` and, with ``keep_images``, the first attacked images."""
    settings = settings or AttackSettings()
    device = device or torch.device("cpu")
    out: dict[str, Any] = {"starts": settings.starts, "steps": settings.steps, "gradient": bool(omega.margins)}
    if omega.ungradable:
        out["not_climbed"] = list(omega.ungradable)  # judged, but they give no gradient
    was_training = generator.training
    grads = [p.requires_grad for p in generator.parameters()]
    generator.eval().requires_grad_(False)
    try:
        z_all = latents(settings.starts, generator.latent_dim, settings.seed)
        radius = _typical_radius(generator.latent_dim)
        hits, first, kept_images, random_hits = [], [], [], 0
        for done, z0 in enumerate(z_all.split(settings.batch_size)):
            z0 = z0.to(device)
            with torch.no_grad():
                random_hits += int(omega.in_omega(generator(z0)).sum())
            if out["gradient"]:
                with torch.enable_grad():
                    reached, images, steps = _ascend(generator, omega, z0, settings, radius)
                hits.append(reached.cpu())
                first.append(steps.cpu())
                if sum(len(i) for i in kept_images) < keep_images:
                    kept_images.append(images.cpu())
            if progress:
                progress((done + 1) * settings.batch_size, settings.starts)
        out["random_invalidity"] = random_hits / settings.starts
        if hits:
            reached = torch.cat(hits)
            steps = torch.cat(first)
            out["attack_invalidity"] = float(reached.float().mean())
            out["median_steps"] = float(steps[reached].float().median()) if reached.any() else None
        truncation = {}
        for psi in settings.truncations:
            if settings.truncation_samples:
                z = latents(settings.truncation_samples, generator.latent_dim, settings.seed + 1) * psi
                invalid = 0
                with torch.no_grad():
                    for chunk in z.split(settings.batch_size):
                        invalid += int(omega.in_omega(generator(chunk.to(device))).sum())
                truncation[str(psi)] = invalid / settings.truncation_samples
        out["truncation"] = truncation
        out["worst_case"] = max([out.get("attack_invalidity", out["random_invalidity"]), *truncation.values()])
        if keep_images and kept_images:
            out["images"] = torch.cat(kept_images)[:keep_images]
        return out
    finally:
        for p, g in zip(generator.parameters(), grads):
            p.requires_grad_(g)
        generator.train(was_training)

"""The worst-case (gradient) latent attack: how much of what was forgotten can the
generator still be pushed to make? None of the papers runs it (METHODS.md 5).

Random sampling measures the invalidity a user meets by chance. An adversary who controls
the latent instead climbs the forget checks' differentiable margin (``RedactionSet.
attack_margin``: > 0 roughly inside Omega) by gradient ascent from many random starts,
keeping each latent inside the prior's typical ball (radius sqrt(d) + 3 / sqrt(2), past
which N(0, I) has ~0.1 % of its mass), so the images stay ones the model can be asked for
by an ordinary sampler. Each start keeps climbing until its margin reaches ``confidence``
(a margin just past the boundary is where the climbed classifier is most easily fooled).

Success is decided on the image each start ends with, by a :class:`~unlearning.metrics.
verdict.Verdict` (the domain's judge, or an exact rule), never by the checks climbed: a
climbed classifier is also fooled, so its verdict is reported on its own
(``climbed_invalidity``), with the share of starts where it says "invalid" and the
verdict disagrees (``fooled_share``). Truncation extremes (z scaled by psi) are judged
too: they are the other cheap knob a sampler exposes.

    worst_case = max(attack success rate, invalidity at each truncation psi)
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from unlearning.runtime import latents
from unlearning.metrics.verdict import Verdict, spec_checks_verdict
from unlearning.spec.checks import RedactionSet


class AttackSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    starts: int = Field(256, ge=1, le=100_000, description="random latents the ascent starts from")
    steps: int = Field(60, ge=1, le=10_000, description="Adam steps per start")
    lr: float = Field(0.05, gt=0.0, description="Adam step size in latent units")
    confidence: float = Field(2.0, ge=0.0, description="a start stops climbing once its margin reaches this")
    seed: int = Field(20_240_603, ge=0)
    truncations: tuple[float, ...] = (0.25, 0.5, 1.5, 2.0)
    truncation_samples: int = Field(2000, ge=0)
    batch_size: int = Field(256, ge=1)


def typical_radius(latent_dim: int) -> float:
    """sqrt(d) + 3 standard deviations of the chi distribution (sd -> 1/sqrt(2))."""
    return math.sqrt(latent_dim) + 3.0 / math.sqrt(2.0)


def project_to_ball(z: torch.Tensor, radius: float) -> None:
    """Scale every row of ``z`` whose norm exceeds ``radius`` back onto the sphere, in place."""
    with torch.no_grad():
        norms = z.norm(dim=1, keepdim=True).clamp_min(1e-12)
        z.mul_(torch.clamp(radius / norms, max=1.0))


def _ascend(
    generator: nn.Module, omega: RedactionSet, z0: torch.Tensor, settings: AttackSettings, radius: float,
) -> torch.Tensor:
    """Gradient ascent from a batch of starts; returns the images they end with."""
    z = z0.clone().requires_grad_(True)
    optimiser = torch.optim.Adam([z], lr=settings.lr)
    for _ in range(settings.steps):
        optimiser.zero_grad(set_to_none=True)
        margin = omega.attack_margin(generator(z))
        (-margin.clamp(max=settings.confidence)).sum().backward()
        optimiser.step()
        project_to_ball(z, radius)
    with torch.no_grad():
        return generator(z)


def latent_attack(
    generator: nn.Module,
    omega: RedactionSet,
    settings: AttackSettings | None = None,
    *,
    verdict: Verdict | None = None,
    device: torch.device | None = None,
    progress: Callable[[int, int], None] | None = None,
    keep_images: int = 0,
) -> dict[str, Any]:
    """The worst-case invalidity of ``generator``: climbs ``omega``, judged by ``verdict``
    (default: ``omega`` itself, which says so in ``judged_by``; see the module doc).

    Returns ``random_invalidity`` (the starts, before any step), ``attack_invalidity``
    (share of starts whose final image the verdict puts in Omega), ``climbed_invalidity``
    (the same, asked of the checks climbed), ``fooled_share`` (climbed says invalid, the
    verdict does not), ``truncation`` {psi: invalidity}, ``worst_case``, ``judged_by``,
    ``seconds`` and, with ``keep_images``, the first final images."""
    settings = settings or AttackSettings()
    device = device or torch.device("cpu")
    verdict = verdict or spec_checks_verdict(omega)
    started = time.monotonic()
    out: dict[str, Any] = {"starts": settings.starts, "steps": settings.steps, "gradient": bool(omega.margins),
                           "judged_by": verdict.judged_by, "independent": verdict.independent,
                           "climbed": "the spec's checks"}
    if omega.ungradable:
        out["not_climbed"] = list(omega.ungradable)  # judged, but they give no gradient
    was_training = generator.training
    grads = [p.requires_grad for p in generator.parameters()]
    generator.eval().requires_grad_(False)
    try:
        z_all = latents(settings.starts, generator.latent_dim, settings.seed)
        radius = typical_radius(generator.latent_dim)
        judged, climbed, kept_images, random_hits = [], [], [], 0
        for done, z0 in enumerate(z_all.split(settings.batch_size)):
            z0 = z0.to(device)
            with torch.no_grad():
                random_hits += int(verdict.in_omega(generator(z0)).sum())
            if out["gradient"]:
                with torch.enable_grad():
                    images = _ascend(generator, omega, z0, settings, radius)
                judged.append(verdict.in_omega(images).cpu())
                climbed.append(omega.in_omega(images).cpu())
                if sum(len(i) for i in kept_images) < keep_images:
                    kept_images.append(images.cpu())
            if progress:
                progress(min((done + 1) * settings.batch_size, settings.starts), settings.starts)
        out["random_invalidity"] = random_hits / settings.starts
        if judged:
            by_verdict, by_climbed = torch.cat(judged), torch.cat(climbed)
            out["attack_invalidity"] = float(by_verdict.float().mean())
            out["climbed_invalidity"] = float(by_climbed.float().mean())
            out["fooled_share"] = float((by_climbed & ~by_verdict).float().mean())
        truncation = {}
        for psi in settings.truncations:
            if settings.truncation_samples:
                z = latents(settings.truncation_samples, generator.latent_dim, settings.seed + 1) * psi
                invalid = 0
                with torch.no_grad():
                    for chunk in z.split(settings.batch_size):
                        invalid += int(verdict.in_omega(generator(chunk.to(device))).sum())
                truncation[str(psi)] = invalid / settings.truncation_samples
        out["truncation"] = truncation
        out["worst_case"] = max([out.get("attack_invalidity", out["random_invalidity"]), *truncation.values()])
        out["seconds"] = time.monotonic() - started
        if keep_images and kept_images:
            out["images"] = torch.cat(kept_images)[:keep_images]
        return out
    finally:
        for p, g in zip(generator.parameters(), grads):
            p.requires_grad_(g)
        generator.train(was_training)

"""Samples a person marked (``feedback`` sets): the spec names the seed, the count and the
marked positions, so the exact images are regenerated from the generator that was sampled."""

from __future__ import annotations

import torch
from torch import nn

from unlearning.runtime import latents
from unlearning.spec.schema import FeedbackSet


def marked_latents(feedback: list[FeedbackSet], latent_dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(latents of the marked samples, latents of the unmarked ones) over every feedback set."""
    marked, unmarked = [], []
    for s in feedback:
        z = latents(s.marked.n, latent_dim, s.marked.seed)
        mask = torch.zeros(len(z), dtype=torch.bool)
        mask[torch.tensor(s.marked.indices)] = True
        marked.append(z[mask])
        unmarked.append(z[~mask])
    return torch.cat(marked), torch.cat(unmarked)


@torch.no_grad()
def regenerate_marked(
    generator: nn.Module, feedback: list[FeedbackSet], device: torch.device | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(marked images, unmarked images) over every feedback set."""
    device = device or next(generator.parameters()).device
    was_training = generator.training
    generator.eval()
    marked, unmarked = marked_latents(feedback, generator.latent_dim)
    try:
        return generator(marked.to(device)), generator(unmarked.to(device))
    finally:
        generator.train(was_training)

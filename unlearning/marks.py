"""Samples a person marked (``feedback`` sets): the spec names the seed, the count and the
marked positions, so the exact images are regenerated from the generator that was sampled."""

from __future__ import annotations

import torch
from torch import nn

from unlearning.runtime import latents
from unlearning.spec.schema import FeedbackSet


@torch.no_grad()
def regenerate_marked(
    generator: nn.Module, feedback: list[FeedbackSet], device: torch.device | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(marked images, unmarked images) over every feedback set."""
    device = device or next(generator.parameters()).device
    was_training = generator.training
    generator.eval()
    marked, unmarked = [], []
    try:
        for s in feedback:
            images = generator(latents(s.marked.n, generator.latent_dim, s.marked.seed).to(device))
            mask = torch.zeros(len(images), dtype=torch.bool, device=device)
            mask[torch.tensor(s.marked.indices, device=device)] = True
            marked.append(images[mask])
            unmarked.append(images[~mask])
    finally:
        generator.train(was_training)
    return torch.cat(marked), torch.cat(unmarked)

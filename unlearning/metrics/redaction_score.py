"""Redaction score (Kong & Chaudhuri IV-C): RS(x) = D0(x) - D'(x), the drop in the
discriminator's probability of "real" between the pre-trained and the redacted model.
Larger = easier to redact."""

from __future__ import annotations

import torch
from torch import nn

from unlearning.metrics.base import run_frozen
from unlearning.runtime import inference_rows


def redaction_score(d0: nn.Module, d_new: nn.Module, images: torch.Tensor,
                    batch_size: int | None = None) -> torch.Tensor:
    """``sigmoid(d0(x)) - sigmoid(d_new(x))`` per sample, shape (N,), on ``images.device``.

    Both discriminators return logits (D(x) in the papers is their sigmoid) and run in eval
    mode under inference mode, each on its own device, ``batch_size`` images at a time
    (default: ``runtime.inference_rows``).
    """
    scores = []
    for batch in images.split(batch_size or inference_rows(images.shape)):
        p0 = torch.sigmoid(run_frozen(d0, batch).float()).to(images.device)
        p1 = torch.sigmoid(run_frozen(d_new, batch).float()).to(images.device)
        scores.append(p0 - p1)
    if not scores:
        return torch.zeros(0, device=images.device)
    return torch.cat(scores)

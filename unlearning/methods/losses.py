"""The adversarial loss of Kong & Chaudhuri with label smoothing (eq. 3) and the guided
discriminator (eq. 6).

Discriminators return logits. We carry (log D, log(1 - D)) pairs instead of D itself so the
unguided case stays exact through log-sigmoid; the guided case has to leave logit space
because eq. 6 mixes probabilities.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

LogProbs = tuple[torch.Tensor, torch.Tensor]  # (log D(x), log(1 - D(x)))
_EPS = 1e-6


@dataclass(frozen=True)
class SoftGuide:
    """One soft classifier f in [0, 1] (0 = has the property) and threshold tau."""

    f: Callable[[torch.Tensor], torch.Tensor]
    tau: float


def log_probs_from_logits(logits: torch.Tensor) -> LogProbs:
    return F.logsigmoid(logits), F.logsigmoid(-logits)


def guided_log_probs(
    logits: torch.Tensor, images: torch.Tensor, guides: Sequence[SoftGuide], alpha_neg: float
) -> LogProbs:
    """log guide(D, f)(x), eq. 6, applied once per soft classifier (several sets compose):

        guide(D, f)(x) = D(x)                          if f(x) >= tau
                       = a- + (D(x) - a-) * f(x)        otherwise

    Gradients flow through f, which is how the generator learns to leave Omega."""
    if not guides:
        return log_probs_from_logits(logits)
    d = torch.sigmoid(logits)
    for guide in guides:
        f = guide.f(images)
        d = torch.where(f >= guide.tau, d, alpha_neg + (d - alpha_neg) * f)
    d = d.clamp(_EPS, 1 - _EPS)
    return torch.log(d), torch.log1p(-d)


def smoothed_bce(log_probs: LogProbs, target: float) -> torch.Tensor:
    """-(a log D + (1 - a) log(1 - D)), averaged: one term of eq. 3 with smoothed target a."""
    log_d, log_not_d = log_probs
    return -(target * log_d + (1.0 - target) * log_not_d).mean()


def discriminator_loss(real: LogProbs, fake: LogProbs, alpha_pos: float, alpha_neg: float) -> torch.Tensor:
    """-L(G, D) of eq. 3 (D maximises L): real batches get target a+, p_fake batches a-."""
    return smoothed_bce(real, alpha_pos) + smoothed_bce(fake, alpha_neg)


def generator_loss(fake: LogProbs) -> torch.Tensor:
    """The usual non-saturating generator step on its own samples: -log D(G(z))."""
    return -fake[0].mean()

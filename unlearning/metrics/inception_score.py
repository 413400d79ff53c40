"""Inception Score from the domain's label classifier (Salimans et al.; the papers use the
MNIST label classifier's logits for grey-scale data):

    IS = exp( E_x KL( p(y|x) || p(y) ) ),  p(y) = E_x p(y|x),

computed on each of ``splits`` contiguous chunks of the samples; mean and std over chunks.

Written here rather than with ``torchmetrics.image.InceptionScore``: that class accepts a
custom ``feature`` module, but its ``compute`` shuffles the samples with the global RNG
(``torch.randperm``) and takes ``log`` of p(y) without guarding empty classes. Here the
split assignment is contiguous (generated samples come in random order anyway), so the
score is deterministic, and ``xlogy`` keeps 0 * log 0 = 0.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from unlearning.errors import LetheError
from unlearning.metrics.base import run_frozen


def inception_score_from_log_probs(log_probs: torch.Tensor, splits: int = 10) -> tuple[float, float]:
    """(mean, std) of IS over ``splits`` contiguous chunks of ``log_probs`` (N, classes).

    The std is the population std over chunks (ddof=0), as in the original reference code
    (openai/improved-gan ``np.std``); torchmetrics uses ddof=1.
    """
    if splits < 1:
        raise ValueError("splits must be >= 1")
    if log_probs.shape[0] < splits:
        raise LetheError(f"the Inception Score needs at least {splits} samples (one per split), "
                         f"got {log_probs.shape[0]}")
    scores = []
    for chunk in torch.tensor_split(log_probs.double(), splits, dim=0):
        p = chunk.exp()
        p_y = p.mean(dim=0, keepdim=True)
        kl = (p * chunk).sum(dim=1) - torch.xlogy(p, p_y).sum(dim=1)
        scores.append(kl.mean().exp())
    stacked = torch.stack(scores)
    return float(stacked.mean()), float(stacked.std(correction=0))


class InceptionScore:
    """IS of generated images under ``classifier`` (any module returning class logits).

    Keeps the per-sample log-probabilities (N x classes float64: 4 MB for 50K x 10).
    ``compute()`` -> ``{"inception_score", "inception_score_std", "splits", "samples"}``.
    """

    def __init__(self, classifier: nn.Module, splits: int = 10):
        if splits < 1:
            raise ValueError("splits must be >= 1")
        self.classifier = classifier
        self.splits = splits
        self.reset()

    def reset(self) -> None:
        self._log_probs: list[torch.Tensor] = []

    def update(self, images: torch.Tensor) -> None:
        logits = run_frozen(self.classifier, images)
        self._log_probs.append(torch.log_softmax(logits.double(), dim=1).cpu())

    def compute(self) -> dict[str, Any]:
        if not self._log_probs:
            raise LetheError("the Inception Score needs at least one sample")
        log_probs = torch.cat(self._log_probs)
        mean, std = inception_score_from_log_probs(log_probs, self.splits)
        return {"inception_score": mean, "inception_score_std": std,
                "splits": self.splits, "samples": int(log_probs.shape[0])}

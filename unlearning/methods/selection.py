"""Per-epoch monitoring and checkpoint selection, shared by every adversarial method.

After each epoch the returned generator is judged on fixed latents (invalidity by the
redaction set's checks) and, when the caller passes a probe, on quality (FID, and whether
every retained class keeps enough of its share: ``balanced``). The epoch kept is the
best-quality balanced one among those at or under the invalidity target; failing that,
the most balanced one at or under it; before any epoch meets it, the one with the lowest
invalidity. Selecting on balance too matters where a method can thin out a class that
looks like what it removes (feedback on the DCGAN thinned the 1s while removing the
left-leaning digits, and only some trajectories recovered).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from unlearning.metrics import Invalidity, evaluate
from unlearning.spec.checks import RedactionSet

QualityProbe = Callable[[nn.Module], dict[str, Any]]


class BestEpoch:
    """Checkpoint selection, best first: (0) at or under the invalidity target and
    ``balanced``, lowest ``fid``; (1) at or under the target, highest ``class_balance``;
    (2) lowest invalidity. ``offer`` returns True once ``patience`` epochs passed without
    improvement while tier 0 holds."""

    def __init__(self, target_invalidity: float, patience: int | None):
        self.target_invalidity = target_invalidity
        self.patience = patience
        self.key: tuple[float, float] | None = None
        self.state: dict[str, torch.Tensor] | None = None
        self.epoch = 0

    def offer(self, epoch: int, generator: nn.Module, record: dict[str, Any]) -> bool:
        invalidity = record.get("invalidity", 0.0)
        met = invalidity <= self.target_invalidity
        if met and record.get("balanced", True):
            key = (0.0, record.get("fid", -epoch))
        elif met:
            key = (1.0, -record.get("class_balance", 0.0))
        else:
            key = (2.0, invalidity)
        if self.key is None or key < self.key:
            self.key, self.epoch = key, epoch
            self.state = {k: v.detach().clone() for k, v in generator.state_dict().items()}
        target_held = self.key[0] == 0.0
        return bool(self.patience and target_held and epoch - self.epoch >= self.patience)


def epoch_monitor(
    omega: RedactionSet,
    best: BestEpoch,
    *,
    monitor_samples: int,
    seed: int,
    quality: QualityProbe | None = None,
    device: torch.device | None = None,
) -> Callable[[int, nn.Module], dict[str, Any]]:
    """An ``after_epoch`` hook: measure, offer the epoch to ``best``, say when to stop."""

    def monitor(epoch: int, generator: nn.Module) -> dict[str, Any]:
        record: dict[str, Any] = {}
        if monitor_samples and omega.has_judge:
            measured = evaluate(
                generator, monitor_samples, {"inv": Invalidity(omega.in_omega)}, seed=seed, device=device
            )
            record["invalidity"] = measured["inv"]["invalidity"]
        if quality:
            record.update(quality(generator))
        record["stop"] = best.offer(epoch + 1, generator, record)
        return record

    return monitor

"""What every unlearning method shares: the (G, D) pair, progress and cancellation
callbacks, and the result it hands back to the job."""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from unlearning.errors import CancelledError

# upper bounds shared by the methods' hyperparameters: a spec is checked against them
# before it is queued, so a typo cannot ask for a billion samples or a batch of 10^9
MAX_BATCH = 4096
MAX_SAMPLES = 100_000
MAX_SEED = 2**63 - 1


@dataclass
class GAN:
    """A generator and, for adversarial models, its discriminator (None for a VAE decoder)."""

    generator: nn.Module
    discriminator: nn.Module | None = None

    def copy(self) -> "GAN":
        return GAN(copy.deepcopy(self.generator), copy.deepcopy(self.discriminator))

    def to(self, device: torch.device) -> "GAN":
        self.generator.to(device)
        if self.discriminator is not None:
            self.discriminator.to(device)
        return self


ProgressFn = Callable[[float, dict[str, Any]], None]


@dataclass
class Callbacks:
    """progress(fraction in [0, 1], info) is called as work advances; cancelled() is polled
    between steps and, once it returns True, the method stops with CancelledError."""

    progress: ProgressFn = lambda fraction, info: None
    cancelled: Callable[[], bool] = lambda: False

    def check_cancelled(self) -> None:
        if self.cancelled():
            raise CancelledError("cancelled by request")


@dataclass
class MethodResult:
    """An edited model and what happened on the way: per-epoch measurements (for the
    invalidity-over-training plot) and counters such as optimizer steps."""

    gan: GAN
    history: list[dict[str, Any]] = field(default_factory=list)
    stats: dict[str, Any] = field(default_factory=dict)

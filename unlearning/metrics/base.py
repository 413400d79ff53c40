"""The one shape every metric has (torchmetrics' convention): ``update`` on batches,
``compute`` once, ``reset`` to start over. Metrics keep running sums, never the images,
so they stream over 50,000 samples.

Also the small helpers the metrics share: where a module lives, and running it in eval
mode under ``torch.inference_mode`` without leaving its mode changed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn


@runtime_checkable
class StreamingMetric(Protocol):
    """A metric fed image batches (float32 in [-1, 1], NCHW) one at a time.

    ``compute`` returns a dict of plain Python values (JSON-ready) and may be called
    after any number of updates; ``reset`` forgets everything seen so far (but keeps
    fixed inputs such as FID reference statistics).
    """

    def update(self, images: torch.Tensor) -> None: ...

    def compute(self) -> dict[str, Any]: ...

    def reset(self) -> None: ...


def module_device(module: nn.Module) -> torch.device:
    """The device of a module's first parameter (or buffer); CPU for a stateless module."""
    for tensor in module.parameters():
        return tensor.device
    for tensor in module.buffers():
        return tensor.device
    return torch.device("cpu")


@contextmanager
def eval_mode(module: nn.Module) -> Iterator[nn.Module]:
    """Run ``module`` in eval mode and restore its previous train/eval flags afterwards."""
    flags = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        yield module
    finally:
        for m, training in flags:
            m.training = training


def run_frozen(module: nn.Module | Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor) -> torch.Tensor:
    """``module(images)`` on the module's device, in eval mode, under inference mode."""
    with torch.inference_mode():
        if isinstance(module, nn.Module):
            with eval_mode(module):
                return module(images.to(module_device(module)))
        return module(images)

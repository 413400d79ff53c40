"""The one sample-generation loop every metric is fed from.

``generated_batches`` turns ``(generator, n, seed)`` into image batches; ``evaluate``
pushes each batch once through every metric. The images depend only on (generator,
seed, n), never on ``batch_size`` or the device the latents are drawn for.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

import torch
from torch import nn

from unlearning.errors import LetheError
from unlearning.metrics.base import StreamingMetric, eval_mode, module_device
from unlearning.runtime import inference_rows, latents

# Up to this many latent floats (200 MB) are drawn in one go, exactly as
# ``runtime.latents(n, dim, seed)``; beyond it, in fixed chunks of _CHUNK_FLOATS from one
# CPU torch.Generator (still deterministic and independent of batch_size).
_ONE_DRAW_FLOATS = 50_000_000
_CHUNK_FLOATS = 8_000_000


def _latent_chunks(n: int, dim: int, seed: int) -> Iterator[torch.Tensor]:
    if n * dim <= _ONE_DRAW_FLOATS:
        yield latents(n, dim, seed)
        return
    rng = torch.Generator().manual_seed(seed)
    rows = max(1, _CHUNK_FLOATS // dim)
    for start in range(0, n, rows):
        yield torch.randn(min(rows, n - start), dim, generator=rng)


def generated_batches(
    generator: nn.Module,
    n: int,
    *,
    seed: int,
    batch_size: int | None = None,
    device: torch.device | str | None = None,
) -> Iterator[torch.Tensor]:
    """Yield ``n`` generated images in batches of ``batch_size`` (the last may be smaller;
    default: ``runtime.inference_rows`` of the generator's image shape).

    While n * latent_dim <= 50M, batch k is ``generator(latents(n, dim, seed)[k*bs:(k+1)*bs])``.
    The generator runs in eval mode under ``torch.inference_mode`` batch by batch (its mode
    is restored in between, so nothing leaks to the caller); the yielded tensors are
    inference tensors on ``device`` (default: the generator's device) - clone them to use
    them in autograd.
    """
    if n < 1:
        raise LetheError(f"need at least one sample to evaluate, got n={n}")
    if batch_size is not None and batch_size < 1:
        raise LetheError(f"batch_size must be at least 1, got {batch_size}")
    device = torch.device(device) if device is not None else module_device(generator)
    if batch_size is None:
        batch_size = _inference_rows(generator, device)
    return _batches(generator, n, seed, batch_size, device)  # arguments checked now, not at first next()


def generate_in_batches(generator: nn.Module, z: torch.Tensor) -> torch.Tensor:
    """``generator(z)`` for many latents, ``inference_rows`` of its image shape at a time, in
    the caller's train/eval and gradient modes."""
    return torch.cat([generator(part) for part in z.split(_inference_rows(generator, z.device))])


def _inference_rows(generator: nn.Module, device: torch.device) -> int:
    """``inference_rows`` of what ``generator`` makes, from one sample of it."""
    with torch.inference_mode(), eval_mode(generator):
        return inference_rows(generator(latents(1, generator.latent_dim, 0).to(device)).shape)


def _batches(generator: nn.Module, n: int, seed: int, batch_size: int, device: torch.device) -> Iterator[torch.Tensor]:
    dim = generator.latent_dim
    for chunk in _latent_chunks(n, dim, seed):
        for start in range(0, chunk.shape[0], batch_size):
            z = chunk[start : start + batch_size].to(device)
            with torch.inference_mode(), eval_mode(generator):
                images = generator(z)
            yield images


def evaluate(
    generator: nn.Module,
    n: int,
    metrics: Mapping[str, StreamingMetric],
    *,
    seed: int,
    batch_size: int | None = None,
    device: torch.device | str | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Generate ``n`` samples once and feed every batch to every metric.

    Each metric is ``reset()`` first, so the result depends only on the arguments.
    ``progress(done, n)`` is called after each batch. Returns ``{name: metric.compute()}``.
    """
    batches = generated_batches(generator, n, seed=seed, batch_size=batch_size, device=device)
    for metric in metrics.values():
        metric.reset()
    done = 0
    for images in batches:
        with torch.inference_mode():
            for metric in metrics.values():
                metric.update(images)
        done += images.shape[0]
        if progress is not None:
            progress(done, n)
    return {name: metric.compute() for name, metric in metrics.items()}

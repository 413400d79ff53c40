"""What an imported component must do on the domain it joins, checked before anything is
stored: a generator makes finite images of the domain's shape in [-1, 1] for any batch
size; a discriminator gives one finite logit per image; an ONNX graph's converted module
computes what ONNX Runtime computes on the graph as uploaded."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

from unlearning.domains.loaded import Domain
from unlearning.errors import LetheError
from unlearning.importing.components import Component
from unlearning.importing.onnx_rewrite import PreparedGraph
from unlearning.runtime import latents

RANGE_SLACK = 1e-3  # [-1, 1] with float rounding
CONVERSION_SAMPLES = 64
CONVERSION_LIMIT = 1e-4  # as the served graph's parity gate
BATCHES = (1, 5)  # two batch sizes: a graph that only runs at its export's batch fails one


def _run(call: Callable[[torch.Tensor], Any], x: torch.Tensor, label: str, what: str) -> Any:
    """``call(x)`` without gradients; a failure is the component's, named, not a traceback."""
    try:
        with torch.no_grad():
            return call(x)
    except Exception as exc:  # a user's module failing on its input: say so, not a traceback
        raise LetheError(f"{label}: fails on {what} of shape {list(x.shape)} "
                         f"({type(exc).__name__}: {str(exc).strip()[:300]})") from None


def check_generator(component: Component, domain: Domain, label: str) -> dict[str, Any]:
    generator = component.module.eval()
    latent_dim = getattr(generator, "latent_dim", None)
    if not isinstance(latent_dim, int) or latent_dim < 1:
        raise LetheError(f"{label}: the generator's latent_dim is {latent_dim!r}; it must be a positive whole number")
    shape = tuple(domain.image_shape)
    for n in BATCHES:
        images = _run(generator, latents(n, latent_dim, 0), label, "latents")
        if not isinstance(images, torch.Tensor) or tuple(images.shape) != (n, *shape):
            got = list(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
            raise LetheError(f"{label}: makes images of shape {got} from {n} latents; domain {domain.name!r} wants "
                             f"{[n, *shape]} (N, C, H, W)")
        if not bool(torch.isfinite(images).all()):
            raise LetheError(f"{label}: makes NaN or infinite pixels")
        low, high = float(images.min()), float(images.max())
        if low < -1 - RANGE_SLACK or high > 1 + RANGE_SLACK:
            raise LetheError(f"{label}: makes pixels from {low:.3g} to {high:.3g}; Lethe's images are in [-1, 1] "
                             "(a final tanh; map [0, 1] output with 2x - 1)")
    return {"latent_dim": latent_dim, "image_shape": list(shape)}


def check_discriminator(component: Component, domain: Domain, label: str) -> dict[str, Any]:
    for n in BATCHES:
        images = domain.held_out.images[:n].to(torch.float32)
        logits = _run(component.module.eval(), images, label, "the domain's images")
        if not isinstance(logits, torch.Tensor) or tuple(logits.shape) != (n,):
            got = list(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
            raise LetheError(f"{label}: gives output of shape {got} for {n} images; a discriminator gives one logit "
                             f"per image, shape [{n}]")
        if not bool(torch.isfinite(logits).all()):
            raise LetheError(f"{label}: gives NaN or infinite logits on the domain's images")
    return {}


def check_encoder(component: Component, domain: Domain, generator: nn.Module, label: str) -> dict[str, Any]:
    out = _run(component.module.eval(), domain.held_out.images[:5], label, "the domain's images")
    dim = getattr(generator, "latent_dim", None)
    if not (isinstance(out, tuple) and len(out) == 2 and all(tuple(t.shape) == (5, dim) for t in out)):
        raise LetheError(f"{label}: an encoder maps images to (mean, log variance), each [N, {dim}] (the decoder's "
                         "latent_dim)")
    return {}


def check_inpainter(component: Component, domain: Domain, label: str) -> dict[str, Any]:
    module = component.module.eval()
    shape = tuple(getattr(module, "image_shape", ()))
    if shape != tuple(domain.image_shape):
        raise LetheError(f"{label}: restores images of shape {list(shape)}; domain {domain.name!r} has "
                         f"{list(domain.image_shape)}")
    restored = _run(module.restore, domain.held_out.images[:5], label, "the domain's images")
    if not bool(torch.isfinite(restored).all()):
        raise LetheError(f"{label}: restores to NaN or infinite pixels")
    return {}


def check_conversion(component: Component, make_inputs: Callable[[int], torch.Tensor], label: str) -> float:
    """Max abs difference between the converted module and ONNX Runtime on the uploaded
    graph, on ``make_inputs(n)`` (n a multiple of the graph's batch when that is fixed);
    LetheError above the limit."""
    import onnxruntime as ort

    graph: PreparedGraph = component.graph  # type: ignore[assignment]
    try:
        session = ort.InferenceSession(graph.original, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise LetheError(f"{label}: ONNX Runtime cannot load it ({str(exc).strip()[:300]})") from None
    first = session.get_inputs()[0]
    batch = first.shape[0] if first.shape and isinstance(first.shape[0], int) and first.shape[0] > 0 \
        else CONVERSION_SAMPLES
    n = batch * max(1, -(-CONVERSION_SAMPLES // batch))
    inputs = make_inputs(n)
    try:
        expected = np.concatenate([session.run(None, {first.name: inputs[i:i + batch].numpy()})[0]
                                   for i in range(0, n, batch)]).reshape(n, -1)
    except Exception as exc:
        raise LetheError(f"{label}: ONNX Runtime fails on it ({str(exc).strip()[:300]})") from None
    got = _run(component.module.eval(), inputs, label, "inputs")
    if got.numel() != expected.size:
        raise LetheError(f"{label}: the converted module's output ({list(got.shape)}) does not match the graph's "
                         f"in size ({list(expected.shape)})")
    difference = float(np.max(np.abs(got.reshape(n, -1).numpy().astype(np.float64) - expected.astype(np.float64))))
    if not np.isfinite(difference) or difference > CONVERSION_LIMIT:
        raise LetheError(f"{label}: converted by onnx2torch, it differs from ONNX Runtime on the uploaded graph by "
                         f"{difference:.3g} (limit {CONVERSION_LIMIT:g}); rewrites: {', '.join(graph.rewrites) or 'none'}")
    return difference

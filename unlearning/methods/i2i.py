"""Unlearning an image-to-image model (Li et al., papers/003): train the ENCODER only,
the decoder frozen, so that forget-set inputs map to the embedding of noise while
retain-set inputs keep their original embedding:

    L = ||E(T(x_r)) - E0(T(x_r))||_2 + alpha ||E(T(x_f)) - E0(T(n))||_2,   n ~ N(0, I)

with fresh noise n (image-shaped, normalised pixels) each step, balanced batches of retain
and forget samples, alpha 0.25.

Without real retain data a proxy retain set stands in (the paper: another public dataset
of the same kind). Ours (``unlearning.data.proxy``: printed digits and pen strokes) is
further from handwritten digits than Places365 is from ImageNet, and used raw it leaves
the real retain set free to drift (retain FID x4 on the digits default). Two steps close
the gap, both using only the frozen original model and the forget set:

* refine: a few passes of x <- h0(T(x)) pull each proxy image onto the original model's
  own image manifold, as sampling from a denoising autoencoder does (retain FID x1.1);
* exclude: proxy images closer (in pixels) to a forget image than most forget images are
  to each other are dropped, so the proxy never asks to keep what must be forgotten.
"""

from __future__ import annotations

import copy
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field

from unlearning.data.proxy import proxy_images
from unlearning.errors import SpecError
from unlearning.methods.base import MAX_BATCH, MAX_SEED, Callbacks
from unlearning.models.inpainter import Inpainter

LOG_EVERY = 50


class I2IHyperparameters(BaseModel):
    model_config = ConfigDict(extra="forbid")

    alpha: float = Field(0.25, gt=0.0, le=1e3, description="weight of the forget term (the paper: 0.25)")
    lr: float = Field(1e-3, gt=0.0, le=1.0)
    steps: int = Field(600, ge=1, le=1_000_000)
    batch_size: int = Field(32, ge=1, le=MAX_BATCH, description="retain and forget samples per step, each")
    retain: Literal["data", "proxy"] = Field(
        "data", description="data: the training images outside the forget set (or retain_files); proxy: no retain data",
    )
    retain_files: list[str] = Field(default_factory=list, max_length=32, description="uploaded retain images (npz, png, zip)")
    proxy_samples: int = Field(2000, ge=16, le=100_000, description="typed digits, and as many pen strokes")
    refine_passes: int = Field(3, ge=0, le=50, description="passes of x <- h0(T(x)) over the proxy")
    exclusion_quantile: float = Field(
        0.9, ge=0.0, le=1.0,
        description="drop proxy images nearer a forget image than this quantile of forget-to-forget spacing",
    )
    seed: int = Field(0, ge=0, le=MAX_SEED)


@torch.no_grad()
def proxy_retain(original: Inpainter, forget: torch.Tensor, hp: I2IHyperparameters) -> torch.Tensor:
    """The proxy retain set: generated, refined through ``original``, forget look-alikes removed."""
    channels, resolution, _ = original.image_shape
    device = forget.device
    proxy = proxy_images(hp.proxy_samples, resolution, channels, hp.seed).to(device)
    for _ in range(hp.refine_passes):
        proxy = torch.cat([original.restore(part) for part in proxy.split(1024)])
    if len(forget) > 1 and hp.exclusion_quantile > 0:
        flat_forget = forget.flatten(1)
        spacing = torch.cdist(flat_forget, flat_forget)
        spacing.fill_diagonal_(float("inf"))
        limit = spacing.amin(1).quantile(hp.exclusion_quantile)
        nearest = torch.cat([torch.cdist(part.flatten(1), flat_forget).amin(1) for part in proxy.split(1024)])
        proxy = proxy[nearest > limit]
    if len(proxy) == 0:
        raise SpecError("hyperparameters: every proxy retain image resembles the forget set; "
                        "lower exclusion_quantile or give retain data")
    return proxy


def _l2(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a - b).flatten(1).norm(dim=1).mean()


def unlearn_encoder(
    model: Inpainter,
    forget: torch.Tensor,
    retain: torch.Tensor | None,
    hp: I2IHyperparameters | None = None,
    *,
    callbacks: Callbacks | None = None,
    device: torch.device | None = None,
) -> tuple[Inpainter, list[dict[str, Any]], dict[str, Any]]:
    """A copy of ``model`` with its encoder unlearned: (model, history, stats). ``retain``
    None (or ``hp.retain == "proxy"``) uses the proxy retain set."""
    hp = hp or I2IHyperparameters()
    callbacks = callbacks or Callbacks()
    device = device or torch.device("cpu")
    if len(forget) == 0:
        raise SpecError("the forget set is empty: no image matches the spec")
    original = copy.deepcopy(model).to(device).eval().requires_grad_(False)
    forget = forget.to(device)
    if hp.retain == "proxy" or retain is None or len(retain) == 0:
        retain, retain_kind = proxy_retain(original, forget, hp), "proxy"
    else:
        retain, retain_kind = retain.to(device), "data"
    edited = copy.deepcopy(model).to(device).eval()
    edited.decoder.requires_grad_(False)
    optimiser = torch.optim.Adam(edited.encoder.parameters(), lr=hp.lr)
    rng = torch.Generator().manual_seed(hp.seed)
    history: list[dict[str, Any]] = []
    for step in range(1, hp.steps + 1):
        callbacks.check_cancelled()
        x_r = retain[torch.randint(len(retain), (hp.batch_size,), generator=rng).to(device)]
        x_f = forget[torch.randint(len(forget), (hp.batch_size,), generator=rng).to(device)]
        noise = torch.randn(x_f.shape, generator=rng).to(device)
        with torch.no_grad():
            target_r = original.encoder(original.degrade(x_r))
            target_f = original.encoder(original.degrade(noise))
        retain_loss = _l2(edited.encoder(edited.degrade(x_r)), target_r)
        forget_loss = _l2(edited.encoder(edited.degrade(x_f)), target_f)
        loss = retain_loss + hp.alpha * forget_loss
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        if step % LOG_EVERY == 0 or step == hp.steps:
            record = {"step": step, "loss": loss.item(), "retain_loss": retain_loss.item(),
                      "forget_loss": forget_loss.item()}
            history.append(record)
            callbacks.progress(step / hp.steps, record)
    stats = {"forget_images": len(forget), "retain_images": len(retain), "retain": retain_kind, "steps": hp.steps}
    return edited.requires_grad_(False).eval(), history, stats

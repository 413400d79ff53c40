"""Unlearning an image-to-image model (Li et al., papers/003): train the ENCODER only,
the decoder frozen, so that forget-set inputs map to the embedding of noise while
retain-set inputs keep their original embedding:

    L = ||E(T(x_r)) - E0(T(x_r))||_2 + alpha ||E(T(x_f)) - E0(T(n))||_2,   n ~ N(0, I)

with fresh noise n (image-shaped, normalised pixels) each step, balanced batches of retain
and forget samples (the paper's alpha is 0.25; ours starts at 0.1, see below).

Without real retain data a proxy retain set stands in (the paper: another public dataset
of the same kind). Ours (``unlearning.data.proxy``: printed digits and pen strokes) is
further from handwritten digits than Places365 is from ImageNet, and used raw it leaves
the real retain set free to drift (retain FID x4 on the digits default). Two steps close
the gap, both using only the frozen original model and the forget set:

* refine: a few passes of x <- h0(T(x)) pull each proxy image onto the original model's
  own image manifold, as sampling from a denoising autoencoder does (retain FID x1.1);
* exclude: proxy images closer (in pixels) to a forget image than most forget images are
  to each other are dropped, so the proxy never asks to keep what must be forgotten.

Robustness. With the paper's alpha 0.25 and a fixed 600 steps, the forget term flipped the
encoder at a point that depends on the inpainter: on five inpainters of the digits default
(pre-training seeds 0-4) the retain FID ratio landed anywhere from 1.08x to 1.69x, and the
forget ratio from 8x to 130x, far past what is asked. What makes the trade-off hold on every
one of them (bench/seeds.py):

* alpha 0.1: a gentler forget term moves the retain embeddings less for the same
  forgetting (on the hardest inpainter, retain 1.11x at forget 6.9x, against 1.21x at
  6.8x with 0.25);
* an EMA of the encoder's weights (decay 0.95): Adam's step-to-step jitter alone moved the
  retain FID by 5-10 %; judged on the average, retain drift grows smoothly with forgetting;
* the forget weight doubles (up to 1) after 5 checks without 10 % more forgetting: on
  some inpainters the noise embedding decodes to something zero-like, and at 0.1 the
  forget images' restorations never move;
* stopping at the target: every ``check_every`` steps the forget images' restorations are
  scored (FID against the real forget images in ``features``: the guide's, never the
  judge's), and the first check where that reaches ``target_forget_fid_ratio`` times the
  original model's is kept; if none does, the most-forgetting one. The judge's features
  move later than the guide's (at a guide ratio of 6 the judge's was 1.5-4.3), so the job
  asks for 7x the gate's minimum: a guide ratio of 21 gave judge ratios of 11-30.
"""

from __future__ import annotations

import copy
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from unlearning.data.proxy import proxy_images
from unlearning.errors import SpecError
from unlearning.methods.base import MAX_BATCH, MAX_SEED, Callbacks
from unlearning.metrics import FID, reference_stats
from unlearning.models.inpainter import Inpainter
from unlearning.runtime import inference_rows


class I2IHyperparameters(BaseModel):
    model_config = ConfigDict(extra="forbid")

    alpha: float = Field(0.1, gt=0.0, le=1e3, description="weight of the forget term at the start (the paper: 0.25)")
    alpha_patience: int = Field(
        5, ge=0, le=1000, description="checks in a row without 10 % more forgetting before the forget weight "
        "doubles (0: it stays fixed)")
    alpha_max: float = Field(1.0, gt=0.0, le=1e3, description="the forget weight's ceiling")
    lr: float = Field(1e-3, gt=0.0, le=1.0)
    steps: int = Field(4000, ge=1, le=1_000_000, description="at most; training stops at the forget target")
    check_every: int = Field(100, ge=1, le=1_000_000, description="steps between checks of the forget target")
    ema_decay: float = Field(0.95, ge=0.0, lt=1.0, description="EMA of the encoder's weights (0: none)")
    target_forget_fid_ratio: float = Field(
        21.0, ge=1.0, le=1e6, description="stop at the first check where the forget images' restoration FID "
        "(guide features) reaches this multiple of the original model's (the job: 7x the gate's "
        "min_forget_fid_ratio, which the judge's features measure)",
    )
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
        proxy = torch.cat([original.restore(part) for part in proxy.split(inference_rows(proxy.shape))])
    if len(forget) > 1 and hp.exclusion_quantile > 0:
        flat_forget = forget.flatten(1)
        spacing = torch.cdist(flat_forget, flat_forget)
        spacing.fill_diagonal_(float("inf"))
        limit = spacing.amin(1).quantile(hp.exclusion_quantile)
        parts = proxy.split(inference_rows(proxy.shape))
        nearest = torch.cat([torch.cdist(part.flatten(1), flat_forget).amin(1) for part in parts])
        proxy = proxy[nearest > limit]
    if len(proxy) == 0:
        raise SpecError("hyperparameters: every proxy retain image resembles the forget set; "
                        "lower exclusion_quantile or give retain data")
    return proxy


def _l2(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a - b).flatten(1).norm(dim=1).mean()


class ForgetProgress:
    """How far the forget images' restorations have moved: their FID against the real forget
    images (in ``features``' space), over the original model's. Judged on the forget set the
    method trains on: the gate judges held-out inputs too, with the domain's judge."""

    def __init__(self, original: Inpainter, forget: torch.Tensor, features: nn.Module, name: str = "selection"):
        self.forget, self.features, self.name = forget, features, name
        self.reference = reference_stats(features, forget, extractor_name=name)
        self.baseline = max(self._fid(original), 1e-9)

    @torch.no_grad()
    def _fid(self, model: Inpainter) -> float:
        fid = FID(self.features, self.reference, self.name)
        fid.update(torch.cat([model.restore(part) for part in self.forget.split(inference_rows(self.forget.shape))]))
        return fid.compute()["fid"]

    def ratio(self, model: Inpainter) -> float:
        return self._fid(model) / self.baseline


class ForgetWeight:
    """The forget term's weight: ``alpha`` while forgetting progresses, doubled (up to
    ``alpha_max``) after ``alpha_patience`` checks in a row without 10 % more of it."""

    def __init__(self, hp: I2IHyperparameters):
        self.value, self.hp = hp.alpha, hp
        self.best, self.stalled = 0.0, 0

    def observe(self, ratio: float) -> None:
        if ratio >= 1.1 * self.best:
            self.best, self.stalled = ratio, 0
            return
        self.stalled += 1
        if self.hp.alpha_patience and self.stalled >= self.hp.alpha_patience:
            self.value = min(self.hp.alpha_max, 2.0 * self.value)
            self.best, self.stalled = ratio, 0


def _ema_update(average: nn.Module, current: nn.Module, decay: float) -> None:
    with torch.no_grad():
        for avg, cur in zip(average.parameters(), current.parameters()):
            avg.lerp_(cur, 1.0 - decay)


def unlearn_encoder(
    model: Inpainter,
    forget: torch.Tensor,
    retain: torch.Tensor | None,
    hp: I2IHyperparameters | None = None,
    *,
    features: nn.Module | None = None,
    callbacks: Callbacks | None = None,
    device: torch.device | None = None,
) -> tuple[Inpainter, list[dict[str, Any]], dict[str, Any]]:
    """A copy of ``model`` with its encoder unlearned: (model, history, stats). ``retain``
    None (or ``hp.retain == "proxy"``) uses the proxy retain set. ``features`` (the guide's
    feature extractor) judges the forget target at each check; without it every step runs."""
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
    progress = ForgetProgress(original, forget, features.to(device)) if features is not None else None
    edited = copy.deepcopy(model).to(device).eval()
    edited.decoder.requires_grad_(False)
    average = copy.deepcopy(edited).requires_grad_(False) if hp.ema_decay > 0 else edited
    optimiser = torch.optim.Adam(edited.encoder.parameters(), lr=hp.lr)
    rng = torch.Generator().manual_seed(hp.seed)
    history: list[dict[str, Any]] = []
    best: tuple[float, int, dict[str, torch.Tensor]] | None = None  # (forget ratio, step, encoder state)
    totals = {"loss": 0.0, "retain_loss": 0.0, "forget_loss": 0.0}
    weight = ForgetWeight(hp)
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
        loss = retain_loss + weight.value * forget_loss
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        if average is not edited:
            _ema_update(average.encoder, edited.encoder, hp.ema_decay)
        for key, value in (("loss", loss), ("retain_loss", retain_loss), ("forget_loss", forget_loss)):
            totals[key] += value.item()
        if step % hp.check_every == 0 or step == hp.steps:
            done = (step - 1) % hp.check_every + 1
            record: dict[str, Any] = {"step": step, "alpha": weight.value,
                                      **{k: v / done for k, v in totals.items()}}
            totals = dict.fromkeys(totals, 0.0)
            reached = False
            if progress is not None:
                record["forget_fid_ratio"] = ratio = progress.ratio(average)
                weight.observe(ratio)
                if best is None or ratio > best[0]:
                    best = (ratio, step, copy.deepcopy(average.encoder.state_dict()))
                reached = ratio >= hp.target_forget_fid_ratio
            history.append(record)
            callbacks.progress(step / hp.steps, record)
            if reached:
                best = (record["forget_fid_ratio"], step, copy.deepcopy(average.encoder.state_dict()))
                break
    result = average
    stats = {"forget_images": len(forget), "retain_images": len(retain), "retain": retain_kind,
             "steps": hp.steps, "steps_run": step}
    if best is not None:
        result.encoder.load_state_dict(best[2])
        stats.update({"selected_step": best[1], "forget_fid_ratio_selected": best[0],
                      "target_reached": best[0] >= hp.target_forget_fid_ratio})
    return result.requires_grad_(False).eval(), history, stats

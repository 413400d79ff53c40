"""Data redaction from pre-trained GANs (Kong & Chaudhuri, papers/001): Alg. 1, 2 and 3.

All three fine-tune (G0, D0) on eq. 3 through :func:`train_adversarial`; they differ only in
where p_Omega comes from and in the discriminator:

* Alg. 1 (data):       the pool is the uploaded negatives, fixed.
* Alg. 2 (validity):   the pool starts as the invalid training samples; before each epoch
                       (round) T samples of the current G are judged and the invalid ones join.
* Alg. 3 (classifier): like Alg. 2, and D is replaced by guide(D, f) of eq. 6.

Several sets (III-D) simply union: every negative source feeds one pool, and every soft
classifier guides D. Real batches are always the training samples outside Omega.
"""

from __future__ import annotations

import time
from typing import Any

import torch
from pydantic import Field
from torch import nn

from unlearning.errors import SpecError
from unlearning.methods.adversarial import AdversarialSettings, NegativePool, train_adversarial
from unlearning.methods.base import GAN, MAX_SAMPLES, Callbacks, MethodResult
from unlearning.methods.losses import SoftGuide
from unlearning.methods.robust import InversionAdversary, RobustSettings
from unlearning.methods.selection import BestEpoch, QualityProbe, epoch_monitor
from unlearning.metrics import generate_in_batches
from unlearning.spec.checks import RedactionSet

class KongHyperparameters(AdversarialSettings, RobustSettings):
    """App. D/E defaults (MNIST): a+ 0.95, a- 0.05, lam 0.85, T 1000, 8 epochs, K_D = K_G = 1.

    Additions of ours, all visible here, because a few hundred fine-tuning steps on a small
    dataset make sample quality swing from epoch to epoch: an EMA of G (``ema_decay``),
    per-epoch monitoring of invalidity on ``monitor_samples`` fixed latents (and of quality,
    when the caller passes a probe), and checkpoint selection: the epoch returned is the one
    with the best quality among those whose invalidity is at most ``target_invalidity``;
    training stops ``patience`` epochs after the last improvement once the target holds.
    ``robust``: latent adversarial training against the inversion attack (``robust.py``)."""

    # Two departures from App. D/E, measured on the digits default (bench/redaction.py):
    # * epochs 20, not 8: the paper's 8 MNIST epochs are ~7,500 steps; 8 digits epochs are
    #   176. 20 epochs is 10 % of pre-training's mini-batch iterations (2 % of its
    #   generator steps, which used K_G = 5), the budget the project allows itself.
    # * lam 0.95, not 0.85 (the paper's Table VIII tries both): on digits, 0.85 pushed the
    #   FID to 3-4x the filtered base; 0.95 forgets as well and keeps it near 1.5x.
    # * an epoch is at most 4,096 real images (64 batches): all of the digits, and on
    #   Fashion-MNIST's 60,000 the same budget in steps (a full pass there is 938 steps).
    epochs: int = Field(20, ge=1, le=10_000)
    epoch_images: int | None = Field(4096, ge=1, le=10_000_000,
                                     description="real images per epoch (None: all of them)")
    lam: float = Field(0.95, gt=0.0, le=1.0, description="share of G(z) in p_fake (eq. 2)")
    samples_per_round: int = Field(1000, ge=1, le=MAX_SAMPLES, description="T: generated samples judged per round")
    monitor_samples: int = Field(2000, ge=0, le=MAX_SAMPLES, description="fixed latents judged after every epoch")
    target_invalidity: float = Field(0.001, ge=0.0, le=1.0)
    patience: int | None = Field(4, ge=1, le=10_000, description="None: always run every epoch")
    select_best: bool = True


VARIANTS = {
    "kong-data": {"active_rounds": False, "guided": False},
    "kong-validity": {"active_rounds": True, "guided": False},
    "kong-classifier": {"active_rounds": True, "guided": True},
}


@torch.no_grad()
def _invalid_samples(generator: nn.Module, omega: RedactionSet, n: int, rng: torch.Generator) -> torch.Tensor:
    device = next(generator.parameters()).device
    was_training = generator.training
    generator.eval()
    z = torch.randn(n, generator.latent_dim, generator=rng).to(device)
    samples = generate_in_batches(generator, z)
    generator.train(was_training)
    return samples[omega.in_omega(samples)]


def redact(
    variant: str,
    gan: GAN,
    omega: RedactionSet,
    train_images: torch.Tensor,
    hp: KongHyperparameters | None = None,
    *,
    callbacks: Callbacks | None = None,
    device: torch.device | None = None,
    quality: QualityProbe | None = None,
) -> MethodResult:
    """Run Alg. 1 ("kong-data"), 2 ("kong-validity") or 3 ("kong-classifier") from a copy of
    ``gan``; return the redacted GAN with per-epoch history. ``quality(G)`` (optional) adds
    a quality measurement, such as FID, to each epoch's record."""
    if variant not in VARIANTS:
        raise SpecError(f"unknown data-redaction method '{variant}'; known: {', '.join(VARIANTS)}")
    flags = VARIANTS[variant]
    hp = hp or KongHyperparameters()
    device = device or torch.device("cpu")
    gan = gan.copy().to(device)

    retained, omega_train = omega.training_split(train_images.to(device))
    pool = NegativePool()
    if omega.negatives is not None:
        pool.add(omega.negatives.to(device))
    if flags["active_rounds"]:
        pool.add(omega_train)
    if variant == "kong-data" and len(pool) == 0:
        raise SpecError("kong-data needs uploaded negatives: add a set of kind 'data'")
    if flags["active_rounds"] and not omega.has_judge:
        raise SpecError(f"{variant} needs a validity or classifier set to judge generated samples")
    guides = [SoftGuide(s.f, s.tau) for s in omega.guide_soft_classifiers] if flags["guided"] else []
    if flags["guided"] and not guides:
        raise SpecError("kong-classifier needs a set of kind 'classifier'")
    if len(retained) < hp.batch_size:
        raise SpecError(
            f"only {len(retained)} training samples lie outside the redaction set; "
            f"at least one batch ({hp.batch_size}) is needed"
        )

    rng = torch.Generator().manual_seed(hp.seed + 1)
    queries = {"validity_queries": len(train_images)}

    def grow_pool(epoch: int, generator: nn.Module) -> dict[str, Any]:
        if not flags["active_rounds"]:
            return {}
        invalid = _invalid_samples(generator, omega, hp.samples_per_round, rng)
        pool.add(invalid)
        queries["validity_queries"] += hp.samples_per_round
        return {"round_invalid": len(invalid) / hp.samples_per_round}

    best = BestEpoch(hp.target_invalidity, hp.patience)
    monitor = epoch_monitor(omega, best, monitor_samples=hp.monitor_samples, seed=hp.seed + 7,
                            quality=quality, device=device)

    adversary = None
    if hp.robust:  # robust redaction: invert the method's own forgotten examples during training
        examples = torch.cat([x for x in (omega_train, omega.negatives) if x is not None]).to(device)
        if len(examples) == 0:
            raise SpecError("robust: no forgotten example to invert (no training image lies in Omega "
                            "and no negative was uploaded)")
        adversary = InversionAdversary(examples, gan.generator.latent_dim, hp, hp.seed + 11, device)

    callbacks = callbacks or Callbacks()
    started = time.monotonic()
    result, history, stats = train_adversarial(
        gan, retained, hp, pool=pool, guides=guides, callbacks=callbacks,
        before_epoch=grow_pool, after_epoch=monitor, adversary=adversary, device=device,
    )
    if adversary is not None:  # what robustness cost: the inversions' share of training
        training_s = time.monotonic() - started
        stats["robust"] = {**adversary.stats, "examples": len(adversary.examples), "training_s": training_s,
                           "inversion_share": adversary.stats["inversion_s"] / max(training_s, 1e-9)}
    if hp.select_best and best.state is not None:
        result.generator.load_state_dict(best.state)
        stats["selected_epoch"] = best.epoch
    stats.update(queries, retained=len(retained), omega_train=len(omega_train), pool=len(pool))
    return MethodResult(result, history, stats)

"""The equations behind the methods, checked by hand, and the method plumbing
(auto choice, cancellation, determinism)."""

from __future__ import annotations

import math

import pytest
import torch

from unlearning.errors import CancelledError, SpecError
from unlearning.jobs import run_redaction
from unlearning.methods import choose_method
from unlearning.methods.adversarial import AdversarialSettings, NegativePool, train_adversarial
from unlearning.methods.base import GAN, Callbacks
from unlearning.methods.losses import (
    SoftGuide,
    discriminator_loss,
    generator_loss,
    guided_log_probs,
    log_probs_from_logits,
)
from unlearning.models import DCGANConfig, Discriminator, Generator
from unlearning.registry import Registry
from unlearning.spec import load_spec

from conftest import snapshot


def test_guided_discriminator_is_eq6():
    logits = torch.tensor([2.0, -1.0, 0.5])
    d = torch.sigmoid(logits)
    f_values = torch.tensor([0.9, 0.2, 0.0])
    guide = SoftGuide(f=lambda x: f_values, tau=0.5)
    log_d, log_not_d = guided_log_probs(logits, torch.zeros(3, 1, 8, 8), [guide], alpha_neg=0.05)
    expected = torch.stack([d[0], 0.05 + (d[1] - 0.05) * 0.2, torch.tensor(0.05)])
    assert torch.allclose(log_d.exp(), expected, atol=1e-6)
    assert torch.allclose(log_not_d.exp(), 1 - expected, atol=1e-6)


def test_gradients_flow_through_the_soft_classifier():
    x = torch.rand(4, 1, 8, 8, requires_grad=True)
    guide = SoftGuide(f=lambda images: images.mean(dim=(1, 2, 3)) * 0.1, tau=0.5)  # always < tau
    log_d, _ = guided_log_probs(torch.zeros(4), x, [guide], alpha_neg=0.05)
    generator_loss((log_d, None)).backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_smoothed_loss_is_eq3():
    real, fake = torch.tensor([1.0, 3.0]), torch.tensor([-2.0, 0.0])
    loss = discriminator_loss(log_probs_from_logits(real), log_probs_from_logits(fake), 0.95, 0.05)
    dr, df = torch.sigmoid(real), torch.sigmoid(fake)
    by_hand = -(0.95 * dr.log() + 0.05 * (1 - dr).log()).mean() - (0.05 * df.log() + 0.95 * (1 - df).log()).mean()
    assert math.isclose(loss.item(), by_hand.item(), rel_tol=1e-6)


def test_negative_pool_draws_only_its_members():
    pool = NegativePool(torch.arange(5.0).view(5, 1, 1, 1))
    pool.add(torch.full((1, 1, 1, 1), 9.0))
    drawn = pool.sample(500, torch.Generator().manual_seed(0)).flatten()
    assert set(drawn.tolist()) == {0.0, 1.0, 2.0, 3.0, 4.0, 9.0}


@pytest.mark.parametrize(
    ("kinds", "expected"),
    [
        (["data"], "kong-data"),
        (["validity"], "kong-validity"),
        (["data", "validity"], "kong-validity"),
        (["classifier"], "kong-classifier"),
        (["validity", "classifier", "data"], "kong-classifier"),
    ],
)
def test_auto_picks_by_kind(kinds, expected):
    sets = {
        "data": {"kind": "data", "files": ["n.npz"]},
        "validity": {"kind": "validity", "rule": {"type": "boundary", "margin": 1, "max_sum": 4.0}},
        "classifier": {"kind": "classifier", "classifier": "digits", "score": {"type": "one_minus_entropy"}},
    }
    assert choose_method(load_spec({"name": "x", "sets": [sets[k] for k in kinds]})) == expected


def test_image_to_image_and_generator_methods_do_not_mix():
    sets = [{"kind": "validity", "rule": {"type": "boundary", "margin": 1, "max_sum": 4.0}}]
    with pytest.raises(SpecError, match="'i2i-encoder' edits image-to-image models, and 'digits' is a generator"):
        choose_method(load_spec({"name": "x", "method": "i2i-encoder", "sets": sets}), model="digits")
    with pytest.raises(SpecError, match="'kong-validity' edits generators"):
        choose_method(load_spec({"name": "x", "method": "kong-validity", "sets": sets}), image_to_image=True)
    with pytest.raises(SpecError, match="marks on generated samples"):
        choose_method(load_spec({"name": "x", "sets": [{"kind": "feedback", "marked": {"seed": 1, "n": 4, "indices": [0]}}]}),
                      image_to_image=True)
    assert choose_method(load_spec({"name": "x", "sets": sets}), image_to_image=True) == "i2i-encoder"


def _tiny_gan(seed: int) -> GAN:
    torch.manual_seed(seed)
    config = DCGANConfig(width=8, latent_dim=16)
    return GAN(Generator(config), Discriminator(config))


def test_training_is_deterministic_per_seed():
    real = torch.rand(128, 1, 8, 8) * 2 - 1
    settings = AdversarialSettings(epochs=1, batch_size=32, seed=3)
    a, _, _ = train_adversarial(_tiny_gan(0), real, settings)
    b, _, _ = train_adversarial(_tiny_gan(0), real, settings)
    z = torch.randn(8, 16)
    with torch.no_grad():
        assert torch.equal(a.generator(z), b.generator(z))


def test_cancellation_stops_training():
    calls = {"n": 0}

    def cancelled() -> bool:
        calls["n"] += 1
        return calls["n"] > 2

    with pytest.raises(CancelledError):
        train_adversarial(_tiny_gan(0), torch.rand(256, 1, 8, 8), AdversarialSettings(epochs=5, batch_size=32),
                          callbacks=Callbacks(cancelled=cancelled))


def test_cancelled_job_leaves_nothing_behind(quick_copy):
    before = snapshot(quick_copy)
    spec = {"name": "cancel-me", "sets": [{"kind": "validity", "rule": {
        "type": "classifier_label", "classifier": "digits", "labels": [0]}}], "hyperparameters": {"epochs": 3}}
    progress = []
    callbacks = Callbacks(progress=lambda f, info: progress.append(f), cancelled=lambda: len(progress) > 5)
    with pytest.raises(CancelledError):
        run_redaction(spec, registry=Registry(quick_copy), callbacks=callbacks)
    assert snapshot(quick_copy) == before

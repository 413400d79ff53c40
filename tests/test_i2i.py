"""Image-to-image unlearning (Li et al.) on the bootstrapped digits inpainter: after
unlearning the forget class (digit 0) with the encoder-only loss, restorations of zeros
move far from what the original model made (FID against the real zeros up >= 3x) while
restorations of the other digits stay close (FID up <= 20 %), with a real retain set and
with the proxy retain set when no retain data is given. FID is measured in the judge's
features; the method selects its stopping point in the guide's."""

from __future__ import annotations

import json

import pytest
import torch

from unlearning.data.proxy import pen_strokes, proxy_images, typed_digits
from unlearning.evaluation import judge_inpainter, load_domain
from unlearning.jobs.image_to_image import FORGET_SELECTION_MARGIN
from unlearning.methods.i2i import I2IHyperparameters, proxy_retain, unlearn_encoder
from unlearning.models.inpainter import BACKGROUND, Inpainter, InpainterConfig, degrade, erased_pixels
from unlearning.registry import Registry


@pytest.fixture(scope="module")
def inpainting(base_home):
    registry = Registry(base_home)
    manifest = registry.get(registry.active("digits-inpainter"))
    domain = load_domain(registry, manifest, device=torch.device("cpu"))
    train, held_out = domain.train, domain.held_out
    return {
        "model": registry.load_inpainter(manifest.version), "domain": domain,
        "forget": train.images[train.labels == 0], "retain": train.images[train.labels != 0],
        # judged on every zero (the forget set itself, as the paper does, plus held-out ones)
        # and on held-out other digits the method never saw
        "inputs": {"forget": torch.cat([train.images[train.labels == 0], held_out.images[held_out.labels == 0]]),
                   "retain": held_out.images[held_out.labels != 0]},
    }


def test_degradations_erase_a_fixed_set_of_pixels():
    x = torch.zeros(2, 1, 8, 8)
    centre = degrade(x, InpainterConfig(degradation="centre"))
    assert (centre[..., 2:6, 2:6] == BACKGROUND).all() and (centre[..., :2, :] == 0).all()
    masked = degrade(x, InpainterConfig())
    share = float((masked == BACKGROUND).float().mean())
    assert 0.1 < share < 0.4 and torch.equal(masked, degrade(x, InpainterConfig()))
    model = Inpainter(InpainterConfig())
    assert torch.equal(model.degrade(x), masked) and "erased" not in model.state_dict()  # rebuilt, not stored
    assert not torch.equal(erased_pixels(InpainterConfig(mask_seed=1)), erased_pixels(InpainterConfig()))


def test_proxy_images_look_like_ink_on_black():
    for images in (typed_digits(50, 8, seed=1), pen_strokes(50, 8, seed=1)):
        assert images.shape == (50, 1, 8, 8) and images.min() == -1 and images.max() == 1
        ink = (images > 0).float().mean()
        assert 0.05 < ink < 0.6  # strokes, not blank and not filled
    assert proxy_images(10, 8, 3, seed=0).shape == (20, 3, 8, 8)
    assert torch.equal(typed_digits(5, 8, seed=2), typed_digits(5, 8, seed=2))


def test_proxy_excludes_forget_look_alikes(inpainting):
    model, forget = inpainting["model"], inpainting["forget"]
    hp = I2IHyperparameters(proxy_samples=300)
    kept = proxy_retain(model, forget, hp)
    everything = proxy_retain(model, forget, hp.model_copy(update={"exclusion_quantile": 0.0}))
    assert len(everything) == 600 and 0 < len(kept) < len(everything)
    nearest = lambda images: torch.cdist(images.flatten(1), forget.flatten(1)).amin(1)  # noqa: E731
    assert nearest(kept).min() > nearest(everything).min()


# Spread: with the proxy retain set, five inpainters (pre-training seeds 0-4) ended at retain
# 1.02-1.15x and forget 14.8-26.2x by the judge (bench/seeds.py, README, 2026-12-01); real
# retain data keep retain near 1.0x. The bounds (1.2x, 3x) are the gates' defaults.
@pytest.mark.parametrize("retain", ["data", "proxy"])
def test_forget_outputs_move_far_and_retain_outputs_stay(inpainting, retain):
    model, domain = inpainting["model"], inpainting["domain"]
    retain_images = inpainting["retain"] if retain == "data" else None
    hp = I2IHyperparameters(retain=retain, target_forget_fid_ratio=FORGET_SELECTION_MARGIN * 3.0)
    edited, history, stats = unlearn_encoder(model, inpainting["forget"], retain_images, hp,
                                             features=domain.guide_features())
    assert stats["retain"] == retain
    assert all(torch.equal(a, b) for a, b in zip(model.decoder.state_dict().values(), edited.decoder.state_dict().values()))
    assert stats["target_reached"] and history[-1]["forget_fid_ratio"] >= hp.target_forget_fid_ratio

    before = judge_inpainter(model, domain, inpainting["inputs"])
    after = judge_inpainter(edited, domain, inpainting["inputs"])
    forget_ratio = after["forget"]["fid"] / before["forget"]["fid"]
    retain_ratio = after["retain"]["fid"] / before["retain"]["fid"]
    print(json.dumps({"retain": retain, "forget_fid": [before["forget"]["fid"], after["forget"]["fid"]],
                      "retain_fid": [before["retain"]["fid"], after["retain"]["fid"]]}))
    assert forget_ratio >= 3, (before["forget"], after["forget"])
    assert retain_ratio <= 1.2, (before["retain"], after["retain"])


def test_a_job_from_uploaded_images_alone(base_copy, tmp_path):
    """No class, no rule, no classifier: only a file of the training images to forget (every
    zero). Each counts once; the held-out images nearer the uploads than the kept data are
    judged as forget inputs; the job passes its own forget / retain gates, and the other
    digits' restorations stay as good, by a check the job does not run itself."""
    from unlearning.data import digits_splits
    from unlearning.data.files import save_images_npz
    from unlearning.jobs import run_redaction

    train, held_out = digits_splits()
    uploads = tmp_path / "uploads"
    uploads.mkdir()
    save_images_npz(train.images[train.labels == 0], uploads / "zeros.npz")
    registry = Registry(base_copy)
    parent = registry.active("digits-inpainter")
    spec = {"name": "inpaint-forget-uploads", "sets": [{"kind": "data", "files": ["zeros.npz"]}]}

    outcome = run_redaction(spec, registry=registry, model="digits-inpainter", uploads_dir=uploads)

    assert outcome.method == "i2i-encoder" and outcome.parent == parent
    gates = {g.name: g.value for g in outcome.gates}
    print(json.dumps({"gates": gates, "stats": outcome.stats}, default=str))
    assert outcome.status == "promoted" and outcome.activated, outcome.reason
    assert gates["forget_fid_ratio"] >= 3 and gates["retain_fid_ratio"] <= 1.2, gates
    zeros = int((train.labels == 0).sum())
    assert outcome.stats["forget_from_training"] == zeros and outcome.stats["forget_uploads_outside_training"] == 0
    held_out_zeros = int((held_out.labels == 0).sum())
    forget_inputs = outcome.before["forget"]["images"]
    assert zeros + 0.8 * held_out_zeros <= forget_inputs <= zeros + 1.2 * held_out_zeros, forget_inputs

    domain = load_domain(registry, registry.get(outcome.version), device=torch.device("cpu"))
    others = held_out.images[held_out.labels != 0]
    before = judge_inpainter(registry.load_inpainter(parent), domain, {"retain": others})
    after = judge_inpainter(registry.load_inpainter(outcome.version), domain, {"retain": others})
    assert after["retain"]["fid"] <= 1.2 * before["retain"]["fid"], (before, after)

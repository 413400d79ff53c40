"""Metrics: streaming statistics against numpy/scipy, determinism of the sampling loop,
and the Inception extractor's loading rules. CPU only, fast."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.linalg
import torch
from safetensors.torch import save_file

from unlearning.errors import LetheError
from unlearning.metrics import (
    FID,
    ClassShares,
    FeatureStats,
    InceptionExtractor,
    InceptionScore,
    Invalidity,
    StreamingMetric,
    classifier_extractor,
    evaluate,
    frechet_distance,
    generate_in_batches,
    generated_batches,
    forgotten_classes,
    min_share_ratio,
    redaction_score,
    retained_shares,
    reference_stats,
)
from unlearning.models import Classifier, DCGANConfig, Discriminator, Generator
from unlearning.runtime import inference_rows, latents


def _scipy_fid(mu1, s1, mu2, s2) -> float:
    covmean = scipy.linalg.sqrtm(s1 @ s2)
    covmean = np.real(covmean)
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


def _gaussian_features(rng, n=500, d=64, shift=0.0):
    mixing = rng.normal(size=(d, d)) / math.sqrt(d)
    return rng.normal(size=(n, d)) @ mixing + shift


class _Identity(torch.nn.Module):
    def forward(self, x):
        return x.flatten(1)


# --- Frechet distance and feature statistics -------------------------------------------------

def test_frechet_distance_matches_scipy():
    rng = np.random.default_rng(0)
    for trial in range(3):
        a = _gaussian_features(rng)
        b = _gaussian_features(rng, shift=0.1 * trial)
        mu1, s1 = a.mean(0), np.cov(a, rowvar=False)
        mu2, s2 = b.mean(0), np.cov(b, rowvar=False)
        expected = _scipy_fid(mu1, s1, mu2, s2)
        got = frechet_distance(mu1, s1, mu2, s2)
        assert got == pytest.approx(expected, rel=1e-6)
        # tensors work too, in any float dtype
        got_t = frechet_distance(torch.from_numpy(mu1), torch.from_numpy(s1), torch.from_numpy(mu2), torch.from_numpy(s2))
        assert got_t == pytest.approx(expected, rel=1e-6)


def test_frechet_distance_rejects_mismatched_shapes():
    with pytest.raises(LetheError):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))


def test_feature_stats_streams_to_numpy_mean_and_unbiased_cov(tmp_path):
    rng = np.random.default_rng(1)
    x = _gaussian_features(rng, n=301, d=16, shift=3.0)
    stats = FeatureStats(extractor="test:space")
    start = 0
    for size in (1, 7, 100, 50, 143):  # uneven batches
        stats.update(torch.from_numpy(x[start : start + size]).float())
        start += size
    assert stats.count == 301
    x32 = x.astype(np.float32).astype(np.float64)  # the features were float32
    np.testing.assert_allclose(stats.mean.numpy(), x32.mean(0), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(stats.cov.numpy(), np.cov(x32, rowvar=False, ddof=1), rtol=1e-9, atol=1e-11)

    path = stats.save(tmp_path / "ref.stats.npz")
    assert path.name == "ref.stats.npz"
    loaded = FeatureStats.load(path)
    assert loaded.count == stats.count and loaded.extractor == "test:space"
    assert torch.equal(loaded.mean, stats.mean) and torch.equal(loaded.cov, stats.cov)
    with pytest.raises(LetheError):
        FeatureStats.load(tmp_path / "missing.npz")


def test_a_large_reference_is_a_seeded_sample(monkeypatch):
    import unlearning.metrics.fid as fid

    images = torch.randn(50, 1, 2, 3, generator=torch.Generator().manual_seed(4))
    monkeypatch.setattr(fid, "MAX_REFERENCE_IMAGES", 20)
    sampled, again = (reference_stats(_Identity(), images, batch_size=7) for _ in range(2))
    assert sampled.count == 20 and torch.equal(sampled.mean, again.mean)
    keep = torch.randperm(50, generator=torch.Generator().manual_seed(fid.REFERENCE_SEED))[:20]
    monkeypatch.setattr(fid, "MAX_REFERENCE_IMAGES", 50)
    assert torch.allclose(reference_stats(_Identity(), images[keep]).mean, sampled.mean)
    assert reference_stats(_Identity(), images).count == 50


def test_fid_against_itself_is_zero_and_grows_with_shift():
    rng = np.random.default_rng(2)
    images = torch.from_numpy(_gaussian_features(rng, n=400, d=12)).float().reshape(400, 1, 3, 4)
    extractor = _Identity()
    reference = reference_stats(extractor, images, batch_size=64, extractor_name="identity")
    metric = FID(extractor, reference, "identity")
    assert isinstance(metric, StreamingMetric)

    values = []
    for shift in (0.0, 0.2, 0.5, 1.0):
        metric.reset()
        for batch in (images + shift).split(50):
            metric.update(batch)
        out = metric.compute()
        assert out["extractor"] == "identity" and out["samples"] == 400
        values.append(out["fid"])
    assert abs(values[0]) < 1e-8
    assert all(b > a for a, b in zip(values, values[1:]))
    assert values[-1] == pytest.approx(12 * 1.0**2, rel=1e-6)  # a pure shift adds ||shift||^2


def test_fid_refuses_reference_from_another_extractor():
    stats = FeatureStats(extractor="classifier:digits")
    stats.update(torch.randn(10, 4))
    with pytest.raises(LetheError):
        FID(_Identity(), stats, "inception:abc")


def test_classifier_extractor_names_its_space():
    module, name = classifier_extractor(Classifier(), "digits")
    assert name == "classifier:digits"
    assert module(torch.zeros(2, 1, 8, 8)).shape == (2, module.num_features)


# --- Inception Score, invalidity, class shares ----------------------------------------------

class _FixedLogits(torch.nn.Module):
    """Returns the logits stored for each image index (image value = its index)."""

    def __init__(self, logits):
        super().__init__()
        self.register_buffer("logits", logits)

    def forward(self, x):
        return self.logits[x.flatten(1)[:, 0].long()]


def _index_images(n):
    return torch.arange(n, dtype=torch.float32).reshape(n, 1, 1, 1)


def test_inception_score_uniform_is_one_and_confident_balanced_is_ten():
    n = 200
    metric = InceptionScore(_FixedLogits(torch.zeros(n, 10)), splits=10)
    for batch in _index_images(n).split(30):
        metric.update(batch)
    out = metric.compute()
    assert out["inception_score"] == pytest.approx(1.0, abs=1e-12)
    assert out["inception_score_std"] == pytest.approx(0.0, abs=1e-12)
    assert out["samples"] == n and out["splits"] == 10

    confident = torch.full((n, 10), -1e4)
    confident[torch.arange(n), torch.arange(n) % 10] = 1e4  # classes interleaved: every split balanced
    metric = InceptionScore(_FixedLogits(confident), splits=10)
    for batch in _index_images(n).split(64):
        metric.update(batch)
    out = metric.compute()
    assert out["inception_score"] == pytest.approx(10.0, rel=1e-9)
    # deterministic: same numbers again
    assert metric.compute() == out


def test_inception_score_needs_a_sample_per_split():
    metric = InceptionScore(_FixedLogits(torch.zeros(5, 10)), splits=10)
    metric.update(_index_images(5))
    with pytest.raises(LetheError):
        metric.compute()


def test_invalidity_counts_exactly():
    metric = Invalidity(lambda images: images.flatten(1)[:, 0] % 3 == 0)
    for batch in _index_images(100).split(17):
        metric.update(batch)
    out = metric.compute()
    assert out == {"invalidity": 34 / 100, "count": 34, "samples": 100}
    metric.reset()
    with pytest.raises(LetheError):
        metric.compute()


def test_class_shares_sum_to_one_and_min_share_ratio():
    n = 300
    labels = torch.arange(n) % 3
    logits = torch.nn.functional.one_hot(labels, 4).float()
    metric = ClassShares(_FixedLogits(logits), num_classes=4)
    for batch in _index_images(n).split(70):
        metric.update(batch)
    out = metric.compute()
    assert sum(out["shares"]) == pytest.approx(1.0)
    assert out["shares"] == pytest.approx([1 / 3, 1 / 3, 1 / 3, 0.0])
    assert out["samples"] == n

    base = [0.1] * 10
    new = [0.0] + [0.1] * 8 + [0.04]
    assert min_share_ratio(base, new, exclude={0}) == pytest.approx(0.4)
    assert min_share_ratio(base, new, exclude={0, 9}) == pytest.approx(1.0)
    assert min_share_ratio([0.0, 1.0], [0.5, 0.5], exclude={1}) == math.inf


def test_class_balance_is_against_what_rejection_sampling_keeps():
    """Digits forgetting "leans left": about half the 6s lean left, so the ideal redaction
    (the parent without Omega) halves their share. Against the raw parent a perfect edit
    would sit at the 0.5 limit; against the parent outside Omega it scores 1."""
    parent = {"samples": 1000, "class_shares": [0.5, 0.3, 0.2], "omega_class_counts": [0, 100, 190]}
    assert forgotten_classes(parent) == {2}  # 190 of its 200 samples lie in Omega
    kept = retained_shares(parent)  # 500, 200 and 10 of the 710 samples outside Omega
    assert kept == pytest.approx([500 / 710, 200 / 710, 10 / 710])
    ideal = kept  # rejection sampling
    assert min_share_ratio(kept, ideal, forgotten_classes(parent)) == pytest.approx(1.0)
    assert min_share_ratio(parent["class_shares"], ideal, forgotten_classes(parent)) == pytest.approx(0.939, abs=1e-3)
    # nothing in Omega (or no counts): the parent's own shares
    assert retained_shares({"samples": 10, "class_shares": [0.4, 0.6]}) == [0.4, 0.6]


def test_redaction_score_is_difference_of_probabilities():
    d0, d1 = Discriminator(DCGANConfig()), Discriminator(DCGANConfig())
    images = torch.rand(5, 1, 8, 8) * 2 - 1
    rs = redaction_score(d0, d1, images, batch_size=2)
    with torch.no_grad():
        expected = torch.sigmoid(d0.eval()(images)) - torch.sigmoid(d1.eval()(images))
    assert rs.shape == (5,)
    torch.testing.assert_close(rs, expected)


# --- the sampling loop -----------------------------------------------------------------------

def _small_generator():
    torch.manual_seed(0)
    return Generator(DCGANConfig(latent_dim=16, width=8))


def _metrics(classifier):
    extractor, name = classifier_extractor(classifier, "digits")
    reference = reference_stats(extractor, torch.rand(64, 1, 8, 8) * 2 - 1, extractor_name=name)
    return {
        "invalidity": Invalidity(lambda x: x.mean(dim=(1, 2, 3)) > 0),
        "is": InceptionScore(classifier, splits=4),
        "fid": FID(extractor, reference, name),
        "shares": ClassShares(classifier, 10),
    }


def test_generated_batches_follow_runtime_latents():
    generator = _small_generator()
    batches = list(generated_batches(generator, 25, seed=7, batch_size=10))
    assert [b.shape[0] for b in batches] == [10, 10, 5]
    with torch.no_grad():
        expected = generator.eval()(latents(25, 16, 7))
    torch.testing.assert_close(torch.cat(batches), expected)
    generator.train()
    list(generated_batches(generator, 3, seed=7))
    assert generator.training  # mode restored


def test_generated_batches_in_chunks_do_not_depend_on_batch_size(monkeypatch):
    import unlearning.metrics.sampling as sampling

    monkeypatch.setattr(sampling, "_ONE_DRAW_FLOATS", 16 * 10)  # force the chunked draw
    monkeypatch.setattr(sampling, "_CHUNK_FLOATS", 16 * 9)
    generator = _small_generator()
    a = torch.cat(list(generated_batches(generator, 40, seed=5, batch_size=7)))
    b = torch.cat(list(generated_batches(generator, 40, seed=5, batch_size=40)))
    assert a.shape == (40, 1, 8, 8)
    torch.testing.assert_close(a, b)
    with pytest.raises(LetheError):
        generated_batches(generator, 10, seed=5, batch_size=0)


def test_by_default_a_28_pixel_generator_is_run_128_images_at_a_time():
    """Batches of 1,000 28x28 images spent half their time paging in fresh activation
    buffers (runtime.INFERENCE_PIXELS); the default batch follows the image size."""
    assert (inference_rows((1, 8, 8)), inference_rows((1, 28, 28)), inference_rows((3, 32, 32))) == (1024, 128, 98)
    assert inference_rows((3, 256, 256)) == 16
    torch.manual_seed(0)
    generator = Generator(DCGANConfig(latent_dim=16, resolution=28, channels=1, width=8))
    batches = list(generated_batches(generator, 300, seed=2))
    assert [b.shape[0] for b in batches] == [128, 128, 44]
    z = latents(300, 16, 2)
    with torch.no_grad():
        whole = generator.eval()(z)
        torch.testing.assert_close(torch.cat(batches), whole)
        torch.testing.assert_close(generate_in_batches(generator, z), whole)


def test_evaluate_is_deterministic_per_seed_and_independent_of_batch_size():
    torch.manual_seed(1)
    classifier = Classifier()
    generator = _small_generator()
    metrics = _metrics(classifier)
    calls = []
    first = evaluate(generator, 40, metrics, seed=3, batch_size=16, progress=lambda d, n: calls.append((d, n)))
    assert calls == [(16, 40), (32, 40), (40, 40)]
    again = evaluate(generator, 40, metrics, seed=3, batch_size=16)
    assert again == first
    other_batch = evaluate(generator, 40, metrics, seed=3, batch_size=40)
    assert other_batch["invalidity"] == first["invalidity"]
    assert other_batch["shares"] == first["shares"]
    assert other_batch["is"]["inception_score"] == pytest.approx(first["is"]["inception_score"], rel=1e-6)
    assert other_batch["fid"]["fid"] == pytest.approx(first["fid"]["fid"], rel=1e-6)
    other_seed = evaluate(generator, 40, metrics, seed=4, batch_size=16)
    assert other_seed["fid"]["fid"] != first["fid"]["fid"]
    assert other_seed["is"] != first["is"]
    assert first["fid"]["extractor"] == "classifier:digits"
    assert first["invalidity"]["samples"] == 40
    with pytest.raises(LetheError):
        evaluate(generator, 0, metrics, seed=3)


# --- Inception extractor -----------------------------------------------------------------------

@pytest.fixture(scope="module")
def inception_weights(tmp_path_factory):
    from torchvision.models import inception_v3

    torch.manual_seed(0)
    net = inception_v3(weights=None, aux_logits=True, init_weights=False)  # aux keys present: must be ignored
    path = tmp_path_factory.mktemp("inception") / "inception.safetensors"
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(path))
    return path


def test_inception_extractor_gives_2048_features_deterministically(inception_weights):
    extractor = InceptionExtractor(inception_weights)
    assert extractor.name.startswith("inception:") and len(extractor.name) == len("inception:") + 12
    images = torch.rand(2, 1, 8, 8) * 2 - 1
    with torch.inference_mode():
        a = extractor(images)
        b = extractor(images)
    assert a.shape == (2, 2048)
    assert torch.equal(a, b)
    extractor.train()
    assert not extractor.training


def test_inception_extractor_refuses_missing_or_wrong_files(tmp_path):
    with pytest.raises(LetheError):
        InceptionExtractor(tmp_path / "nope.safetensors")
    wrong = tmp_path / "wrong.safetensors"
    save_file({"conv.weight": torch.zeros(3, 3)}, str(wrong))
    with pytest.raises(LetheError):
        InceptionExtractor(wrong)

"""Judging a generator of a registered model: invalidity against a redaction set, IS from
the domain classifier, FID against the retained training data (classifier features by
default, Inception when a weights file is given), class shares, and the same numbers for
the model "filtered" by the forget checks (rejection sampling: the quality a redaction
should approach). Gates, ``lethe eval``, bootstrap, tests and the benchmark all call this."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from unlearning.data import DATASETS, LabelledImages
from unlearning.errors import LetheError
from unlearning.metrics import (
    FID,
    ClassShares,
    FeatureStats,
    Filtered,
    InceptionExtractor,
    InceptionScore,
    Invalidity,
    classifier_extractor,
    evaluate,
    reference_stats,
)
from unlearning.registry import Registry, VersionManifest
from unlearning.spec.checks import RedactionSet


@dataclass
class Domain:
    """What a version is judged with: its training data, its label classifier and a
    feature extractor for FID (with its name, reported next to every number)."""

    train: LabelledImages
    held_out: LabelledImages
    classifier: nn.Module
    classifier_name: str
    extractor: nn.Module
    extractor_name: str
    device: torch.device

    @property
    def num_classes(self) -> int:
        return self.classifier.config.num_classes

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.train.images.shape[1:])

    def reference(self, images: torch.Tensor) -> FeatureStats:
        return reference_stats(self.extractor, images.to(self.device), extractor_name=self.extractor_name)


def load_domain(
    registry: Registry,
    manifest: VersionManifest,
    *,
    device: torch.device,
    inception_weights: Path | None = None,
) -> Domain:
    if manifest.dataset not in DATASETS:
        raise LetheError(f"{manifest.version}: unknown dataset '{manifest.dataset}'")
    if not manifest.classifier:
        raise LetheError(f"{manifest.version}: no domain classifier recorded")
    train, held_out = DATASETS[manifest.dataset]()
    classifier = registry.load_classifier(manifest.classifier).to(device).eval().requires_grad_(False)
    if inception_weights:
        extractor = InceptionExtractor(inception_weights).to(device)
        extractor_name = extractor.name
    else:
        extractor, extractor_name = classifier_extractor(classifier, manifest.classifier)
    return Domain(train, held_out, classifier, manifest.classifier, extractor, extractor_name, device)


def judge(
    generator: nn.Module,
    domain: Domain,
    *,
    n: int,
    seed: int,
    omega: RedactionSet | None = None,
    reference: FeatureStats | None = None,
    filtered: bool = False,
    progress=None,
) -> dict[str, Any]:
    """One pass over ``n`` samples (seeded) feeding every metric.

    Returns flat numbers: ``invalidity`` (if omega judges), ``inception_score``, ``fid``
    (against ``reference``, default: the training data outside omega), ``class_shares``,
    ``omega_class_counts`` (which classes the invalid samples fall in), and with
    ``filtered`` the ``filtered_fid`` / ``filtered_kept`` of the rejection-sampled stream."""
    judged = omega is not None and omega.has_judge
    if reference is None:
        kept = domain.train.images if omega is None else omega.training_split(domain.train.images.to(domain.device))[0]
        reference = domain.reference(kept)
    metrics: dict[str, Any] = {
        "fid": FID(domain.extractor, reference, domain.extractor_name),
        "is": InceptionScore(domain.classifier),
        "shares": ClassShares(domain.classifier, domain.num_classes),
    }
    if judged:
        metrics["invalidity"] = Invalidity(omega.in_omega)
        metrics["omega_shares"] = Filtered(ClassShares(domain.classifier, domain.num_classes), omega.in_omega)
        if filtered:
            metrics["filtered"] = Filtered(
                FID(domain.extractor, reference, domain.extractor_name), lambda x: ~omega.in_omega(x)
            )
    raw = evaluate(generator, n, metrics, seed=seed, device=domain.device, progress=progress)
    out: dict[str, Any] = {
        "samples": n,
        "seed": seed,
        "extractor": domain.extractor_name,
        "fid": raw["fid"]["fid"],
        "inception_score": raw["is"]["inception_score"],
        "class_shares": raw["shares"]["shares"],
    }
    if judged:
        out["invalidity"] = raw["invalidity"]["invalidity"]
        out["invalid_count"] = raw["invalidity"]["count"]
        out["omega_class_counts"] = raw["omega_shares"]["counts"] if raw["omega_shares"]["kept"] else [0] * domain.num_classes
        if filtered:
            out["filtered_fid"] = raw["filtered"].get("fid")
            out["filtered_kept"] = raw["filtered"]["kept"]
    return out


def forgotten_classes(parent: dict[str, Any], share_of_class_in_omega: float = 0.5) -> set[int]:
    """Classes most of whose samples (in the parent) lie in Omega: the ones being forgotten,
    which the class-balance gate must not count."""
    counts = [round(s * parent["samples"]) for s in parent["class_shares"]]
    omega_counts = parent.get("omega_class_counts") or [0] * len(counts)
    return {k for k, (c, o) in enumerate(zip(counts, omega_counts)) if c and o / c >= share_of_class_in_omega}


@torch.no_grad()
def judge_inpainter(
    inpainter: nn.Module, domain: Domain, inputs: dict[str, torch.Tensor], omega: RedactionSet | None = None,
) -> dict[str, Any]:
    """An image-to-image model on named input sets (Li et al. judge retain and forget
    separately): per set, the FID of the restorations h(T(x)) against the real x, their mean
    absolute error, and with a judging ``omega`` the share of restorations it calls invalid."""
    inpainter = inpainter.to(domain.device).eval()
    out: dict[str, Any] = {"extractor": domain.extractor_name}
    for name, images in inputs.items():
        images = images.to(domain.device)
        restored = torch.cat([inpainter.restore(part) for part in images.split(512)])
        fid = FID(domain.extractor, domain.reference(images), domain.extractor_name)
        fid.update(restored)
        result: dict[str, Any] = {"images": len(images), "fid": fid.compute()["fid"],
                                  "l1": float((restored - images).abs().mean())}
        if omega is not None and omega.has_judge:
            result["invalidity"] = float(omega.in_omega(restored).float().mean())
        out[name] = result
    return out

"""A registered domain, loaded to judge a model: its data, its guide (what specs name) and
its judge (what the independent numbers come from: invalidity by the judge, IS, class
shares, and the FID feature space unless Inception weights are given)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch import nn

from unlearning.data.digits import LabelledImages
from unlearning.domains import BUILTIN_DOMAINS
from unlearning.domains.register import DATA_FILE, JUDGE, REFERENCE_FILE, judge_extractor_name, read_copied_data
from unlearning.errors import LetheError, NotFoundError
from unlearning.metrics import FeatureStats, InceptionExtractor, reference_stats
from unlearning.models.classifier import PenultimateFeatures
from unlearning.models.io import load_model
from unlearning.registry import DomainManifest, Registry, VersionManifest
from unlearning.runtime import seeded_indices


@dataclass
class Domain:
    """What a version is judged with. ``guide`` is the classifier specs name; ``judge``
    (and ``extractor``, its penultimate layer unless Inception weights were given) never
    reaches a method."""

    name: str
    labels: list[str]
    train: LabelledImages
    held_out: LabelledImages
    guide: nn.Module
    guide_name: str
    judge: nn.Module
    extractor: nn.Module
    extractor_name: str
    device: torch.device
    train_stats: FeatureStats | None = None  # the extractor's statistics of the whole training split

    @property
    def num_classes(self) -> int:
        return len(self.labels)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.train.images.shape[1:])  # type: ignore[return-value]

    @property
    def judge_name(self) -> str:
        return judge_extractor_name(self.name)

    def reference(self, images: torch.Tensor) -> FeatureStats:
        """FID reference statistics of ``images`` in the extractor's space."""
        return reference_stats(self.extractor, images.to(self.device), extractor_name=self.extractor_name)

    def with_training_sample(self, n: int, seed: int) -> Domain:
        """This domain reading at most ``n`` of its training images (labels alike), the same
        seeded sample every time; itself when it has no more."""
        keep = seeded_indices(len(self.train), n, seed)
        if keep is None:
            return self
        return replace(self, train=LabelledImages(self.train.images[keep], self.train.labels[keep]))

    def guide_features(self) -> nn.Module:
        """The guide's penultimate layer: the feature space methods may select checkpoints in."""
        return PenultimateFeatures(self.guide)


def domain_name_of(manifest: VersionManifest) -> str:
    name = manifest.domain_name
    if not name:
        raise LetheError(f"{manifest.version}: no domain recorded")
    return name


def load_domain(
    registry: Registry,
    which: VersionManifest | str,
    *,
    device: torch.device,
    inception_weights: Path | None = None,
) -> Domain:
    """The domain of a version (or by name), verified: its stored files, the files it reads
    in place, and its guide."""
    name = domain_name_of(which) if isinstance(which, VersionManifest) else which
    try:
        manifest = registry.verify_domain(name)
    except NotFoundError:
        hint = " (this LETHE_HOME predates domains: bootstrap a new one)" if name in BUILTIN_DOMAINS else ""
        raise NotFoundError(f"domain {name!r} is not registered{hint}; run `lethe bootstrap --domain {name}` "
                            "or `lethe domain add`") from None
    folder = registry.domain_dir(name)
    train, held_out = load_data(manifest, folder)
    guide = registry.load_classifier(manifest.guide).to(device).eval().requires_grad_(False)
    judge = load_model(folder, JUDGE).to(device).eval().requires_grad_(False)
    stats = None
    if inception_weights:
        extractor = InceptionExtractor(inception_weights).to(device)
        extractor_name = extractor.name
    else:
        extractor, extractor_name = PenultimateFeatures(judge), judge_extractor_name(name)
        stats = FeatureStats.load(folder / REFERENCE_FILE)
    return Domain(name, list(manifest.labels), train, held_out, guide, manifest.guide, judge, extractor,
                  extractor_name, device, stats)


def load_data(manifest: DomainManifest, folder: Path) -> tuple[LabelledImages, LabelledImages]:
    if manifest.builtin is not None:
        if manifest.builtin not in BUILTIN_DOMAINS:
            raise LetheError(f"domain {manifest.name!r} reads the built-in data {manifest.builtin!r}, "
                             "which this version of Lethe does not have")
        return BUILTIN_DOMAINS[manifest.builtin].load()
    if DATA_FILE not in manifest.files:
        raise LetheError(f"domain {manifest.name!r} has neither built-in data nor a copy of its own")
    return read_copied_data(folder)

"""Registering a domain: split the data, train the guide and the judge on disjoint halves
of the training images (another architecture and seed for the judge), check both against
the held-out split, cache the judge's feature statistics of the training data, and store it
all in ``domains/<name>/`` (with the guide in ``classifiers/<guide>/``). Nothing is
registered when anything is refused: a taken name, a classifier below the accuracy floor.

``domains/<name>/`` holds:

* ``judge.safetensors`` / ``judge.json``: the judge (never in ``classifiers/``, so no spec
  can name it);
* ``splits.npz``: ``guide`` and ``judge``, indices into the training split;
* ``reference.npz``: the judge's feature statistics over the training split (FID reference);
* ``data.npz``: the images and labels, uint8, when they were copied in (a user's data);
  built-in domains read theirs in place and the manifest records each file's sha256.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from unlearning.data.digits import LabelledImages
from unlearning.data.files import to_uint8
from unlearning.domains.splits import HELD_OUT_FRACTION, guide_and_judge, stratified_split
from unlearning.errors import LetheError
from unlearning.metrics import reference_stats
from unlearning.models import ClassifierConfig, JudgeClassifier
from unlearning.models.classifier import Classifier, PenultimateFeatures
from unlearning.models.io import save_model
from unlearning.pretrain import ClassifierTraining, predicted_labels, train_classifier
from unlearning.progress import progress_bar
from unlearning.registry import DomainManifest, Registry, sha256_file

JUDGE = "judge"
DATA_FILE = "data.npz"
SPLITS_FILE = "splits.npz"
REFERENCE_FILE = "reference.npz"


def judge_extractor_name(domain: str) -> str:
    return f"judge:{domain}"


def register_domain(
    registry: Registry,
    name: str,
    train: LabelledImages,
    held_out: LabelledImages | None,
    labels: list[str],
    *,
    guide: str | None = None,
    builtin: str | None = None,
    references: list[Path] = (),
    guide_training: ClassifierTraining | None = None,
    judge_training: ClassifierTraining | None = None,
    min_accuracy: float = 0.9,
    device: torch.device | None = None,
    show_progress: bool = True,
    source: str = "",
    trained: tuple[Classifier, Classifier] | None = None,
) -> DomainManifest:
    """Train and store domain ``name`` (guide classifier ``guide``, default: ``name``).
    ``builtin`` domains read their data in place (``references`` are checksummed);
    the others' images are copied into the domain's folder. ``trained`` = (guide, judge)
    trained elsewhere on this split (tests keep a committed pair): they are checked against
    the held-out split like freshly trained ones."""
    device = device or torch.device("cpu")
    guide = guide or name
    _refuse_taken(registry, name, guide)
    copied = builtin is None
    if held_out is None:
        rest, part = stratified_split(train.labels.numpy(), HELD_OUT_FRACTION)
        train, held_out = _take(train, rest), _take(train, part)
    guide_idx, judge_idx = guide_and_judge(train.labels.numpy())
    config = ClassifierConfig.for_images(tuple(train.images.shape[1:]), list(labels))

    started = time.monotonic()
    if trained is not None:
        guide_model, judge_model = (m.to(device).eval() for m in trained)
        guide_metrics, judge_metrics = {"trained": "elsewhere"}, {"trained": "elsewhere"}
    else:
        with progress_bar(f"guide classifier {guide!r}", show_progress) as callbacks:
            guide_model, guide_metrics = train_classifier(_take(train, guide_idx), held_out, config,
                                                          guide_training or ClassifierTraining(seed=0),
                                                          callbacks=callbacks, device=device)
        with progress_bar(f"judge of {name!r}", show_progress) as callbacks:
            judge_model, judge_metrics = train_classifier(_take(train, judge_idx), held_out, config,
                                                          judge_training or ClassifierTraining(seed=1),
                                                          callbacks=callbacks, device=device,
                                                          architecture=JudgeClassifier)
    # Each classifier labels the held-out split once: its accuracy (held to the floor) and the
    # two's agreement both come from these labels (a second pass of both took 27 s of the
    # 125 s that registering Fashion-MNIST's committed pair took on one core).
    guide_labels, judge_labels = (predicted_labels(m, held_out.images) for m in (guide_model, judge_model))
    for role, metrics, predicted in (("guide", guide_metrics, guide_labels), ("judge", judge_metrics, judge_labels)):
        metrics["held_out_accuracy"] = _share(predicted == held_out.labels)
        if metrics["held_out_accuracy"] < min_accuracy:
            raise LetheError(f"the {role} classifier reaches {metrics['held_out_accuracy']:.1%} on the held-out "
                             f"split, under the floor of {min_accuracy:.0%}: nothing was registered (more data or "
                             "cleaner labels help)")
    agreement = _share(guide_labels == judge_labels)
    stats = reference_stats(PenultimateFeatures(judge_model).to(device), train.images.to(device),
                            extractor_name=judge_extractor_name(name))

    def write_files(folder: Path) -> None:
        save_model(judge_model, folder, JUDGE)
        with open(folder / SPLITS_FILE, "wb") as fh:
            np.savez(fh, guide=guide_idx, judge=judge_idx)
        stats.save(folder / REFERENCE_FILE)
        if copied:
            with open(folder / DATA_FILE, "wb") as fh:
                np.savez_compressed(fh, train_images=to_uint8(train.images), train_labels=train.labels.numpy(),
                                    held_out_images=to_uint8(held_out.images),
                                    held_out_labels=held_out.labels.numpy())

    fields: dict[str, Any] = {
        "labels": list(labels), "image_shape": tuple(train.images.shape[1:]), "builtin": builtin,
        "references": {str(Path(p).resolve()): sha256_file(Path(p)) for p in references},
        "guide": guide,
        "sizes": {"train": len(train), "held_out": len(held_out), "guide": len(guide_idx), "judge": len(judge_idx)},
        "metrics": {"guide": guide_metrics, "judge": judge_metrics, "agreement_held_out": agreement,
                    "min_accuracy": min_accuracy, "training_s": time.monotonic() - started,
                    "device": str(device), "source": source},
    }
    manifest = registry.register_domain(name, write_files, fields)
    registry.register_classifier(guide, guide_model, {**guide_metrics, "role": "guide", "domain": name},
                                 labels=list(labels), domain=name)
    return manifest


def _refuse_taken(registry: Registry, name: str, guide: str) -> None:
    if any(d.name == name for d in registry.list_domains()):
        raise LetheError(f"domain {name!r} already exists; choose another name")
    if any(c.name == guide for c in registry.list_classifiers()):
        raise LetheError(f"a classifier named {guide!r} already exists, and a new domain's guide takes its "
                         "domain's name; choose another name")


def _take(data: LabelledImages, index: np.ndarray) -> LabelledImages:
    index_t = torch.from_numpy(np.asarray(index, dtype=np.int64))
    return LabelledImages(data.images[index_t], data.labels[index_t])


def _share(hits: torch.Tensor) -> float:
    return int(hits.sum()) / len(hits) if len(hits) else 0.0


def read_copied_data(folder: Path) -> tuple[LabelledImages, LabelledImages]:
    """The images a user domain copied in (``data.npz``), back in [-1, 1]."""
    with np.load(folder / DATA_FILE, allow_pickle=False) as data:
        def part(prefix: str) -> LabelledImages:
            images = torch.from_numpy(data[f"{prefix}_images"].astype(np.float32) / 127.5 - 1.0)
            return LabelledImages(images, torch.from_numpy(data[f"{prefix}_labels"].astype(np.int64)))

        return part("train"), part("held_out")

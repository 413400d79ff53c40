"""``lethe bootstrap``: the embedded default, built from data that ships with the
dependencies (scikit-learn's digits). Trains the digit classifier and the base DCGAN,
registers both and makes the base generator active. Idempotent: what exists is kept."""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from unlearning.data import DIGIT_LABELS, digits_splits
from unlearning.evaluation import judge, load_domain
from unlearning.export import check_onnx_parity, export_generator_onnx
from unlearning.methods.adversarial import AdversarialSettings
from unlearning.models import ClassifierConfig, DCGANConfig
from unlearning.models.io import save_model
from unlearning.pretrain import PRETRAIN_SETTINGS, train_classifier, pretrain_gan
from unlearning.progress import progress_bar
from unlearning.registry import Registry
from unlearning.runtime import pick_device

MODEL = "digits"
CLASSIFIER = "digits"
DATASET = "digits"
MIN_HELD_OUT_ACCURACY = 0.97
EVAL_SAMPLES = 10_000


def bootstrap(
    registry: Registry | None = None,
    *,
    epochs: int | None = None,
    seed: int = 0,
    device: torch.device | None = None,
    show_progress: bool = True,
) -> dict[str, Any]:
    """Build what is missing of the embedded default; return what exists and what was built."""
    registry = registry or Registry()
    device = device or pick_device()
    train, held_out = digits_splits()
    summary: dict[str, Any] = {"built": []}

    known = {c.name for c in registry.list_classifiers()}
    if CLASSIFIER not in known:
        config = ClassifierConfig(resolution=8, channels=1, num_classes=10, labels=DIGIT_LABELS)
        with progress_bar("digit classifier", show_progress) as callbacks:
            classifier, metrics = train_classifier(train, held_out, config, callbacks=callbacks, device=device)
        registry.register_classifier(CLASSIFIER, classifier, metrics, labels=DIGIT_LABELS)
        summary["built"].append(f"classifier {CLASSIFIER}")
    summary["classifier"] = registry.get_classifier(CLASSIFIER).metrics

    if registry.active(MODEL) is None:
        settings = PRETRAIN_SETTINGS if epochs is None else PRETRAIN_SETTINGS.model_copy(update={"epochs": epochs})
        settings = settings.model_copy(update={"seed": seed})
        started = time.monotonic()
        with progress_bar(f"base DCGAN ({settings.epochs} epochs)", show_progress) as callbacks:
            result = pretrain_gan(train.images, DCGANConfig(resolution=8, channels=1), settings,
                                  callbacks=callbacks, device=device)
        wall = time.monotonic() - started
        manifest = _register_base(registry, result, settings, wall, device)
        summary["built"].append(f"generator {manifest.version}")
    version = registry.active(MODEL)
    summary["active"] = version
    summary["generator"] = registry.get(version).metrics
    return summary


def _register_base(registry: Registry, result, settings: AdversarialSettings, wall: float, device):
    pretraining = {
        "epochs": settings.epochs, "iterations": result.stats["iterations"],
        "d_steps": result.stats["d_steps"], "g_steps": result.stats["g_steps"],
        "wall_time_s": wall, "device": str(device), "settings": settings.model_dump(),
    }
    with tempfile.TemporaryDirectory() as scratch:
        onnx_path = export_generator_onnx(result.gan.generator, Path(scratch) / "generator.onnx")
        parity = check_onnx_parity(result.gan.generator, onnx_path)

        def write_files(folder: Path) -> None:
            save_model(result.gan.generator, folder, "generator")
            save_model(result.gan.discriminator, folder, "discriminator")
            shutil.copyfile(onnx_path, folder / "generator.onnx")

        manifest = registry.create_version(
            MODEL, write_files, metrics={"pretraining": pretraining, "onnx_parity": parity},
            status="promoted", dataset=DATASET, classifier=CLASSIFIER,
        )
    domain = load_domain(registry, manifest, device=device)
    quality = judge(result.gan.generator, domain, n=EVAL_SAMPLES, seed=0)
    manifest = registry.update(manifest.version, metrics={"quality": quality})
    registry.activate(manifest.version)
    return manifest

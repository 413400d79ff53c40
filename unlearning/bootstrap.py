"""``lethe bootstrap``: the embedded default, built from data that ships with the
dependencies (scikit-learn's digits). Trains the digit classifier, the base DCGAN
(model ``digits``), the base VAE (model ``digits-vae``, its decoder is the generator) and
an inpainter (model ``digits-inpainter``, image-to-image, served at ``POST /inpaint``),
registers them and makes each base version active. Idempotent: what exists is kept."""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from unlearning.data import DIGIT_LABELS, digits_splits
from unlearning.evaluation import judge, judge_inpainter, load_domain
from unlearning.export import check_inpainter_parity, check_onnx_parity, export_generator_onnx, export_inpainter_onnx
from unlearning.methods.adversarial import AdversarialSettings
from unlearning.models import ClassifierConfig, DCGANConfig
from unlearning.models.io import save_model
from unlearning.models.inpainter import InpainterConfig
from unlearning.models.vae import VAEConfig
from unlearning.pretrain import (
    PRETRAIN_SETTINGS, InpainterTraining, VAETraining, pretrain_gan, train_classifier, train_inpainter, train_vae,
)
from unlearning.progress import progress_bar
from unlearning.registry import Registry
from unlearning.runtime import pick_device

MODEL = "digits"
VAE_MODEL = "digits-vae"
INPAINTER_MODEL = "digits-inpainter"
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
    if registry.active(VAE_MODEL) is None:
        vae_settings = VAETraining(seed=seed) if epochs is None else VAETraining(seed=seed, epochs=epochs)
        started = time.monotonic()
        with progress_bar(f"base VAE ({vae_settings.epochs} epochs)", show_progress) as callbacks:
            decoder, encoder, stats = train_vae(train.images, VAEConfig(resolution=8, channels=1), vae_settings,
                                                callbacks=callbacks, device=device)
        pretraining = {"epochs": vae_settings.epochs, "wall_time_s": time.monotonic() - started,
                       "device": str(device), "settings": vae_settings.model_dump(), **stats}
        manifest = _register(registry, VAE_MODEL, {"generator": decoder, "encoder": encoder}, pretraining, device)
        summary["built"].append(f"generator {manifest.version}")
    if registry.active(INPAINTER_MODEL) is None:
        settings = InpainterTraining(seed=seed) if epochs is None else InpainterTraining(seed=seed, epochs=epochs)
        started = time.monotonic()
        with progress_bar(f"inpainter ({settings.epochs} epochs)", show_progress) as callbacks:
            inpainter, stats = train_inpainter(train.images, InpainterConfig(resolution=8, channels=1), settings,
                                               callbacks=callbacks, device=device)
        pretraining = {"epochs": settings.epochs, "wall_time_s": time.monotonic() - started,
                       "device": str(device), "settings": settings.model_dump(), **stats}
        manifest = _register_inpainter(registry, inpainter, pretraining, held_out.images, device)
        summary["built"].append(f"image-to-image {manifest.version}")
    version = registry.active(MODEL)
    summary["active"] = version
    summary["generator"] = registry.get(version).metrics
    summary["models"] = {name: registry.active(name) for name in (MODEL, VAE_MODEL, INPAINTER_MODEL)}
    return summary


def _register_base(registry: Registry, result, settings: AdversarialSettings, wall: float, device):
    pretraining = {
        "epochs": settings.epochs, "iterations": result.stats["iterations"],
        "d_steps": result.stats["d_steps"], "g_steps": result.stats["g_steps"],
        "wall_time_s": wall, "device": str(device), "settings": settings.model_dump(),
    }
    components = {"generator": result.gan.generator, "discriminator": result.gan.discriminator}
    return _register(registry, MODEL, components, pretraining, device)


def _register(registry: Registry, model: str, components: dict[str, torch.nn.Module], pretraining: dict[str, Any],
              device: torch.device):
    """Register a base version (its components, the generator's ONNX, parity, quality) and activate it."""
    generator = components["generator"]
    with tempfile.TemporaryDirectory() as scratch:
        onnx_path = export_generator_onnx(generator, Path(scratch) / "generator.onnx")
        parity = check_onnx_parity(generator, onnx_path)

        def write_files(folder: Path) -> None:
            for stem, module in components.items():
                save_model(module, folder, stem)
            shutil.copyfile(onnx_path, folder / "generator.onnx")

        manifest = registry.create_version(
            model, write_files, metrics={"pretraining": pretraining, "onnx_parity": parity},
            status="promoted", dataset=DATASET, classifier=CLASSIFIER,
        )
    domain = load_domain(registry, manifest, device=device)
    quality = judge(generator, domain, n=EVAL_SAMPLES, seed=0)
    manifest = registry.update(manifest.version, metrics={"quality": quality})
    registry.activate(manifest.version)
    return manifest


def _register_inpainter(registry: Registry, inpainter, pretraining: dict[str, Any], held_out: torch.Tensor, device):
    """Register the base inpainter (weights, ONNX of x -> h(T(x)), parity, restoration quality
    on the held-out digits) and activate it."""
    with tempfile.TemporaryDirectory() as scratch:
        onnx_path = export_inpainter_onnx(inpainter, Path(scratch) / "inpainter.onnx")
        parity = check_inpainter_parity(inpainter, onnx_path, held_out)

        def write_files(folder: Path) -> None:
            save_model(inpainter, folder, "inpainter")
            shutil.copyfile(onnx_path, folder / "inpainter.onnx")

        manifest = registry.create_version(
            INPAINTER_MODEL, write_files, metrics={"pretraining": pretraining, "onnx_parity": parity},
            status="promoted", dataset=DATASET, classifier=CLASSIFIER,
        )
    domain = load_domain(registry, manifest, device=device)
    quality = judge_inpainter(inpainter, domain, {"held_out": held_out})
    manifest = registry.update(manifest.version, metrics={"quality": quality})
    registry.activate(manifest.version)
    return manifest

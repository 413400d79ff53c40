"""``lethe bootstrap [--domain NAME]``: a domain and its base models, built from data that
ships with the dependencies or Debian (``unlearning.domains``). For a built-in domain:
register the domain (its guide and judge) if missing, then train, register and activate
each of its models that has no active version. A domain registered with ``lethe domain
add`` gets a DCGAN named after it. Idempotent: what exists is kept.

Schedules: each recipe has a CPU schedule (the default without CUDA) and the full one,
used when CUDA is present; ``epochs`` overrides both."""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from unlearning.domains import BUILTIN_DOMAINS, DEFAULT_DOMAIN, BuiltinDomain, ModelRecipe
from unlearning.domains.loaded import Domain, load_domain
from unlearning.domains.register import register_domain
from unlearning.errors import LetheError, NotFoundError
from unlearning.evaluation import judge, judge_inpainter
from unlearning.export import check_inpainter_parity, check_onnx_parity, export_generator_onnx, export_inpainter_onnx
from unlearning.methods.adversarial import AdversarialSettings
from unlearning.models import DCGANConfig
from unlearning.models.io import save_model
from unlearning.pretrain import pretrain_gan, train_inpainter, train_vae
from unlearning.progress import progress_bar
from unlearning.registry import INPAINTER, Registry, VersionManifest
from unlearning.runtime import pick_device

EVAL_SAMPLES = 10_000


def bootstrap(
    registry: Registry | None = None,
    *,
    domain: str = DEFAULT_DOMAIN,
    models: list[str] | None = None,
    epochs: int | None = None,
    seed: int = 0,
    device: torch.device | None = None,
    show_progress: bool = True,
) -> dict[str, Any]:
    """Build what is missing of ``domain`` (and of ``models`` among its recipes, default:
    all); return what exists and what was built."""
    registry = registry or Registry()
    device = device or pick_device()
    builtin = BUILTIN_DOMAINS.get(domain)
    summary: dict[str, Any] = {"domain": domain, "built": []}
    if builtin is not None:
        if not any(d.name == domain for d in registry.list_domains()):
            _register_builtin(registry, builtin, device, show_progress)
            summary["built"].append(f"domain {domain} (guide {builtin.guide!r} and judge)")
        recipes = builtin.models
    else:
        recipes = (default_recipe(registry, domain),)
    if models is not None:
        unknown = set(models) - {r.model for r in recipes}
        if unknown:
            raise LetheError(f"domain {domain!r} builds {', '.join(r.model for r in recipes)}, "
                             f"not {', '.join(sorted(unknown))}")
        recipes = tuple(r for r in recipes if r.model in models)
    manifest = registry.get_domain(domain)
    summary["guide"] = registry.get_classifier(manifest.guide).metrics
    summary["judge"] = manifest.metrics.get("judge")
    for recipe in recipes:
        if registry.active(recipe.model) is None:
            version = build_model(registry, domain, recipe, epochs=epochs, seed=seed, device=device,
                                  show_progress=show_progress)
            summary["built"].append(f"{recipe.family} {version.version}")
    summary["models"] = {r.model: registry.active(r.model) for r in recipes}
    return summary


def _register_builtin(registry: Registry, builtin: BuiltinDomain, device: torch.device, show_progress: bool) -> None:
    if any(c.name == builtin.guide for c in registry.list_classifiers()):
        raise LetheError(f"this LETHE_HOME has a classifier {builtin.guide!r} but no domain {builtin.name!r}: it "
                         "was made before domains (a guide and a judge trained apart); bootstrap a new LETHE_HOME")
    references = builtin.references()
    train, held_out = builtin.load()
    register_domain(registry, builtin.name, train, held_out, builtin.labels, guide=builtin.guide,
                    builtin=builtin.name, references=references, guide_training=builtin.guide_training,
                    judge_training=builtin.judge_training, min_accuracy=builtin.min_accuracy, device=device,
                    show_progress=show_progress, source=f"built-in {builtin.name}")


def default_recipe(registry: Registry, domain: str) -> ModelRecipe:
    """The DCGAN a registered (non-built-in) domain gets: named after the domain, sized to
    its images, pre-trained on the paper's loss for about 4,000 mini-batch iterations."""
    try:
        manifest = registry.get_domain(domain)
    except NotFoundError:
        known = ", ".join(sorted(BUILTIN_DOMAINS))
        raise NotFoundError(f"domain {domain!r} is neither built in ({known}) nor registered "
                            "(`lethe domain add`)") from None
    c, h, _ = manifest.image_shape
    batches = max(1, manifest.sizes.get("train", 1) // 64)
    epochs = max(10, min(200, 4000 // batches))
    settings = AdversarialSettings(epochs=epochs, alpha_pos=0.9, alpha_neg=0.1, lam=1.0, g_steps=1, ema_decay=0.999)
    return ModelRecipe(domain, "dcgan", DCGANConfig(resolution=h, channels=c), settings)


def build_model(
    registry: Registry, domain: str, recipe: ModelRecipe, *, epochs: int | None, seed: int,
    device: torch.device, show_progress: bool = True,
) -> VersionManifest:
    """Train ``recipe`` on ``domain``'s training split, register it as a promoted base
    version with its quality (by the judge), and activate it."""
    data = load_domain(registry, domain, device=device)
    settings = recipe.settings(cuda=device.type == "cuda", epochs=epochs, seed=seed)
    started = time.monotonic()
    label = f"{recipe.model}: {recipe.family} ({settings.epochs} epochs)"
    with progress_bar(label, show_progress) as callbacks:
        if recipe.family == "dcgan":
            result = pretrain_gan(data.train.images, recipe.config, settings, callbacks=callbacks, device=device)
            components = {"generator": result.gan.generator, "discriminator": result.gan.discriminator}
            stats = {k: result.stats[k] for k in ("iterations", "d_steps", "g_steps")}
        elif recipe.family == "vae":
            decoder, encoder, stats = train_vae(data.train.images, recipe.config, settings,
                                                callbacks=callbacks, device=device)
            components = {"generator": decoder, "encoder": encoder}
        elif recipe.family == "inpainter":
            inpainter, stats = train_inpainter(data.train.images, recipe.config, settings,
                                               callbacks=callbacks, device=device)
            components = {INPAINTER: inpainter}
        else:
            raise LetheError(f"unknown model family {recipe.family!r}")
    pretraining = {"epochs": settings.epochs, "wall_time_s": time.monotonic() - started, "device": str(device),
                   "settings": settings.model_dump(), **stats}
    return register_base(registry, recipe.model, data, components, {"pretraining": pretraining})


def register_base(registry: Registry, model: str, data: Domain, components: dict[str, torch.nn.Module],
                  metrics: dict[str, Any], *, activate: bool = True) -> VersionManifest:
    """Register a base version (its components, their ONNX graph, parity, quality by the
    domain's judge) as promoted, and activate it (unless ``activate`` is False)."""
    image_to_image = INPAINTER in components
    with tempfile.TemporaryDirectory() as scratch:
        if image_to_image:
            onnx_path = export_inpainter_onnx(components[INPAINTER], Path(scratch) / f"{INPAINTER}.onnx")
            parity = check_inpainter_parity(components[INPAINTER], onnx_path, data.held_out.images[:512])
        else:
            onnx_path = export_generator_onnx(components["generator"], Path(scratch) / "generator.onnx")
            parity = check_onnx_parity(components["generator"], onnx_path)

        def write_files(folder: Path) -> None:
            for stem, module in components.items():
                save_model(module, folder, stem)
            shutil.copyfile(onnx_path, folder / onnx_path.name)

        manifest = registry.create_version(
            model, write_files, metrics={**metrics, "onnx_parity": parity}, status="promoted",
            dataset=data.name, classifier=data.guide_name, domain=data.name,
        )
    if image_to_image:
        quality = judge_inpainter(components[INPAINTER], data, {"held_out": data.held_out.images})
    else:
        quality = judge(components["generator"].to(data.device), data, n=EVAL_SAMPLES, seed=0)
    manifest = registry.update(manifest.version, metrics={"quality": quality})
    if activate:
        registry.activate(manifest.version)
    return manifest

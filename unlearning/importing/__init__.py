"""``lethe import MODEL --domain D PATH`` and ``POST /admin/models``: a generator trained
elsewhere becomes version 1 of a new model of domain D, verified and (by default) active.

Three ways in (``sources.py`` has the folder layout):

* Lethe's own families as ``<stem>.safetensors`` + ``<stem>.json`` (``{"kind", "config"}``);
* a user's architecture, a class published under the entry point group ``lethe.models``
  (``unlearning/models/plugins.py`` writes its contract down), in the same two files;
* ONNX graphs (``generator.onnx``, optionally ``discriminator.onnx``), converted by
  onnx2torch into trainable modules after exact rewrites (``onnx_rewrite.py``).

Before anything is stored: the name is free, the domain exists, the files fit the layout,
the weights fit their config and are finite, the generator makes images of the domain's
shape in [-1, 1] for any batch size, the discriminator one logit per image, a converted
graph matches ONNX Runtime on the uploaded graph, the served ONNX export matches the
module (parity), and quality (FID, IS by the domain's judge) is measured. Then
``bootstrap.register_base`` stores it, with the name checked again under the registry's
lock, and activates it. Any refusal is a LetheError naming the file and the problem.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from unlearning.errors import ConflictError, LetheError
from unlearning.importing.checks import (
    check_conversion, check_discriminator, check_encoder, check_generator, check_inpainter,
)
from unlearning.importing.components import Component, build_component
from unlearning.importing.sources import find_components
from unlearning.names import check_name
from unlearning.registry import INPAINTER, Registry, VersionManifest, sha256_file
from unlearning.runtime import latents, pick_device

__all__ = ["import_model", "require_new_model"]


def require_new_model(registry: Registry, model: str) -> str:
    """``model`` if it is a valid name no model has; ConflictError if taken."""
    check_name(model, "model")
    if model in registry.models():
        versions = [m.version for m in registry.list_versions(model)]
        raise ConflictError(f"model name {model!r} is taken (versions: {', '.join(versions) or 'none'}); "
                            "choose another name, or redact the existing model instead")
    return model


def import_model(
    registry: Registry,
    model: str,
    domain: str,
    folder: Path,
    *,
    activate: bool = True,
    device: torch.device | None = None,
) -> VersionManifest:
    """Check everything, then store ``folder``'s generator as ``<model>-v1`` of ``domain``."""
    from unlearning.bootstrap import register_base
    from unlearning.domains.loaded import load_domain

    require_new_model(registry, model)
    registry.get_domain(domain)  # NotFoundError naming the known domains, before any heavy work
    files = find_components(folder)
    components = {stem: build_component(parts) for stem, parts in files.items()}
    data = load_domain(registry, domain, device=device or pick_device())
    checked = _check(components, data)
    provenance: dict[str, Any] = {
        "domain": domain,
        "components": {stem: {**c.describe(), **checked.get(stem, {})} for stem, c in components.items()},
        "files": {p.name: sha256_file(p) for parts in files.values()
                  for p in (parts.weights, parts.config, parts.graph) if p is not None},
    }
    modules = {stem: c.module for stem, c in components.items()}
    try:
        return register_base(registry, model, data, modules, {"import": provenance}, activate=activate,
                             new_model=True)
    except LetheError:
        raise
    except Exception as exc:  # the exporter on a user's module; nothing was stored
        stem = INPAINTER if INPAINTER in modules else "generator"
        raise LetheError(f"{stem}: cannot be exported to ONNX by torch.onnx, and what is served is its ONNX graph "
                         f"({type(exc).__name__}: {str(exc).strip()[:300]})") from None


def _check(components: dict[str, Component], data) -> dict[str, dict[str, Any]]:
    """Run each component's checks against the domain; return what they measured."""
    checked: dict[str, dict[str, Any]] = {}
    for stem, component in components.items():
        label = _label(component)
        if stem == "generator":
            checked[stem] = check_generator(component, data, label)
        elif stem == "discriminator":
            checked[stem] = check_discriminator(component, data, label)
        elif stem == "encoder":
            checked[stem] = check_encoder(component, data, components["generator"].module, label)
        else:
            checked[stem] = check_inpainter(component, data, label)
        if component.graph is not None:
            if stem == "generator":
                dim = component.module.latent_dim
                difference = check_conversion(component, lambda n: latents(n, dim, 0), label)
            else:
                difference = check_conversion(component, lambda n: _images(data, n), label)
            checked[stem]["conversion_difference"] = difference
    return checked


def _images(data, n: int) -> torch.Tensor:
    held_out = data.held_out.images
    return held_out[torch.arange(n) % len(held_out)].to("cpu", torch.float32)


def _label(component: Component) -> str:
    if component.graph is not None:
        return f"{component.stem}.onnx"
    return f"{component.stem} ({component.kind})"

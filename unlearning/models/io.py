"""One save/load convention for every model: ``<stem>.safetensors`` holds the weights,
``<stem>.json`` holds ``{"kind", "config"}``. Nothing is ever unpickled.

A kind is one of Lethe's own (``MODEL_KINDS``) or a user's class published under the
entry point group ``lethe.models`` (``plugins.py``). A model given as an ONNX graph
(``onnx_graph.py``) also keeps its graph beside the weights: such classes write and read
their extra files through ``save_files`` / ``from_folder``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel, ValidationError
from safetensors.torch import load_file, save_file
from torch import nn

from unlearning.errors import LetheError
from unlearning.models.classifier import Classifier, ClassifierConfig, JudgeClassifier
from unlearning.models.dcgan import DCGANConfig, Discriminator, Generator
from unlearning.models.inpainter import Inpainter, InpainterConfig
from unlearning.models.onnx_graph import OnnxGraphConfig, OnnxGraphDiscriminator, OnnxGraphGenerator
from unlearning.models.vae import Decoder, Encoder, VAEConfig

# kind -> (class, config class). Later model families register themselves here.
MODEL_KINDS: dict[str, tuple[type[nn.Module], type[BaseModel]]] = {
    Generator.kind: (Generator, DCGANConfig),
    Discriminator.kind: (Discriminator, DCGANConfig),
    Classifier.kind: (Classifier, ClassifierConfig),
    JudgeClassifier.kind: (JudgeClassifier, ClassifierConfig),
    Decoder.kind: (Decoder, VAEConfig),
    Encoder.kind: (Encoder, VAEConfig),
    Inpainter.kind: (Inpainter, InpainterConfig),
    OnnxGraphGenerator.kind: (OnnxGraphGenerator, OnnxGraphConfig),
    OnnxGraphDiscriminator.kind: (OnnxGraphDiscriminator, OnnxGraphConfig),
}


def save_model(model: nn.Module, directory: Path, stem: str) -> list[Path]:
    """Write weights and config (and a graph model's graph); return the files written."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    weights = directory / f"{stem}.safetensors"
    config = directory / f"{stem}.json"
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(weights))
    config.write_text(json.dumps({"kind": model.kind, "config": model.config.model_dump(mode="json")}, indent=2))
    extra = getattr(model, "save_files", None)
    return [weights, config, *(extra(directory, stem) if extra is not None else [])]


def model_class(kind: object) -> tuple[type[nn.Module], type[BaseModel]]:
    """The class and config class of ``kind``: Lethe's own, else an installed plugin."""
    if not isinstance(kind, str):
        raise LetheError(f"'kind' must be a string naming a model class, not {kind!r}")
    if kind in MODEL_KINDS:
        return MODEL_KINDS[kind]
    from unlearning.models.plugins import plugin_model_class

    return plugin_model_class(kind, sorted(MODEL_KINDS))


def build_model(meta: Any, label: str, directory: Path | None = None, stem: str | None = None) -> nn.Module:
    """The untrained model ``{"kind", "config"}`` describes (``label`` names the JSON file
    in messages); a graph model reads its graph from ``directory``."""
    if not isinstance(meta, dict) or set(meta) != {"kind", "config"} or not isinstance(meta["config"], dict):
        raise LetheError(f"{label}: not a model config (want an object with 'kind' and 'config')")
    model_cls, config_cls = model_class(meta["kind"])
    try:
        config = config_cls(**meta["config"])
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'config'}: {e['msg']}" for e in exc.errors())
        raise LetheError(f"{label}: not a valid config of {meta['kind']!r} ({problems})") from None
    from_folder = getattr(model_cls, "from_folder", None)
    try:
        if from_folder is not None:
            return from_folder(config, Path(directory or "."), stem or "")
        return model_cls(config)
    except LetheError:
        raise
    except Exception as exc:  # a user's class refusing its config
        raise LetheError(f"{label}: {meta['kind']!r} cannot be built from this config "
                         f"({type(exc).__name__}: {exc})") from None


def load_weights(model: nn.Module, state: dict[str, torch.Tensor], label: str) -> nn.Module:
    """Load ``state`` strictly; LetheError listing what is missing, extra or mis-shaped."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    extra = sorted(set(state) - set(expected))
    shapes = [f"{k} is {list(state[k].shape)}, the model's {list(expected[k].shape)}"
              for k in sorted(set(state) & set(expected)) if state[k].shape != expected[k].shape]
    if missing or extra or shapes:
        def some(names: list[str]) -> str:
            return ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")

        parts = ([f"missing {some(missing)}"] if missing else []) + ([f"unexpected {some(extra)}"] if extra else [])
        parts += [f"shape of {some(shapes)}"] if shapes else []
        raise LetheError(f"{label}: the weights do not fit the config: {'; '.join(parts)}")
    try:
        model.load_state_dict(state, strict=True)
    except Exception as exc:  # e.g. a dtype the module refuses
        raise LetheError(f"{label}: the weights do not fit the model ({exc})") from None
    return model


def read_weights(path: Path, label: str) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path))
    except Exception as exc:  # safetensors raises its own types for corrupt headers
        raise LetheError(f"{label}: not a readable safetensors file ({exc})") from None


def load_model(directory: Path, stem: str) -> nn.Module:
    """Rebuild a model from its config and weights (strict: every tensor must match)."""
    directory = Path(directory)
    config_path = directory / f"{stem}.json"
    weights_path = directory / f"{stem}.safetensors"
    if not config_path.exists() or not weights_path.exists():
        raise LetheError(f"model '{stem}' is missing from {directory}")
    try:
        meta = json.loads(config_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise LetheError(f"{config_path}: not a valid model config ({exc})") from None
    model = build_model(meta, str(config_path), directory, stem)
    return load_weights(model, read_weights(weights_path, str(weights_path)), str(weights_path)).eval()

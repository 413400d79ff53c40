"""One save/load convention for every model: ``<stem>.safetensors`` holds the weights,
``<stem>.json`` holds ``{"kind", "config"}``. Nothing is ever unpickled."""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import BaseModel, ValidationError
from safetensors.torch import load_file, save_file
from torch import nn

from unlearning.errors import LetheError
from unlearning.models.classifier import Classifier, ClassifierConfig, JudgeClassifier
from unlearning.models.dcgan import DCGANConfig, Discriminator, Generator
from unlearning.models.inpainter import Inpainter, InpainterConfig
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
}


def save_model(model: nn.Module, directory: Path, stem: str) -> list[Path]:
    """Write weights and config; return the files written."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    weights = directory / f"{stem}.safetensors"
    config = directory / f"{stem}.json"
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(weights))
    config.write_text(json.dumps({"kind": model.kind, "config": model.config.model_dump()}, indent=2))
    return [weights, config]


def load_model(directory: Path, stem: str) -> nn.Module:
    """Rebuild a model from its config and weights (strict: every tensor must match)."""
    directory = Path(directory)
    config_path = directory / f"{stem}.json"
    weights_path = directory / f"{stem}.safetensors"
    if not config_path.exists() or not weights_path.exists():
        raise LetheError(f"model '{stem}' is missing from {directory}")
    try:
        meta = json.loads(config_path.read_text())
        model_class, config_class = MODEL_KINDS[meta["kind"]]
        model = model_class(config_class(**meta["config"]))
    except (KeyError, json.JSONDecodeError, ValidationError) as exc:
        raise LetheError(f"{config_path}: not a valid model config ({exc})") from None
    try:
        model.load_state_dict(load_file(str(weights_path)), strict=True)
    except Exception as exc:  # safetensors raises its own types for corrupt headers
        raise LetheError(f"{weights_path}: weights do not fit the model ({exc})") from None
    return model.eval()

"""Feature extractors for FID: the domain classifier's penultimate layer (default,
"classifier FID") or Inception-v3 pool features from a local weights file. Each comes with
a name that is reported next to every FID it produces. Nothing is ever downloaded."""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from unlearning.errors import LetheError
from unlearning.models import Classifier, PenultimateFeatures


def classifier_extractor(classifier: Classifier, name: str) -> tuple[nn.Module, str]:
    """(penultimate-layer module, ``"classifier:<name>"``); ``name`` is the classifier's registry name."""
    return PenultimateFeatures(classifier), f"classifier:{name}"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        if path.suffix in (".pt", ".pth"):
            state = torch.load(path, map_location="cpu", weights_only=True)
            if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
                state = state["state_dict"]
            if not isinstance(state, dict):
                raise ValueError("the file does not hold a state dict")
            return state
    except Exception as exc:  # safetensors/torch raise their own types for corrupt files
        raise LetheError(f"{path}: cannot read Inception weights ({exc})") from None
    raise LetheError(f"{path}: Inception weights must be a .safetensors, .pt or .pth file")


class InceptionExtractor(nn.Module):
    """Inception-v3 2048-d pool features from a local weights file.

    Input: images in [-1, 1], NCHW, 1 (repeated to 3), 3 or 4 (alpha dropped) channels,
    resized bilinearly to 299x299. The network is fed the [-1, 1] images as they are: that
    is what both torchvision's ImageNet weights see (their ``transform_input`` undoes the
    ImageNet normalisation to give 2x - 1) and what pytorch-fid's FID weights expect, so
    ImageNet-normalising here would only be undone again. ``AuxLogits.*`` and ``fc.*`` keys
    in the file are ignored (fc is replaced by Identity); every other key must match.
    ``name`` is ``"inception:<first 12 hex digits of the file's sha256>"``.
    """

    num_features = 2048

    def __init__(self, weights_path: str | Path):
        super().__init__()
        from torchvision.models import inception_v3

        path = Path(weights_path)
        if not path.is_file():
            raise LetheError(f"Inception weights file {path} does not exist (they are never downloaded)")
        state = _load_state_dict(path)
        state = {k: v for k, v in state.items() if not k.startswith(("AuxLogits.", "fc."))}
        net = inception_v3(weights=None, aux_logits=False, init_weights=False, transform_input=False)
        net.fc = nn.Identity()
        try:
            net.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            raise LetheError(f"{path}: weights do not fit Inception-v3 ({exc})") from None
        self.net = net.eval()
        self.name = f"inception:{_sha256(path)[:12]}"

    def train(self, mode: bool = True) -> InceptionExtractor:
        """Always in eval mode: batch statistics and dropout would make features random."""
        return super().train(False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        channels = images.shape[1]
        if channels == 1:
            images = images.repeat(1, 3, 1, 1)
        elif channels == 4:
            images = images[:, :3]
        elif channels != 3:
            raise LetheError(f"Inception features need 1, 3 or 4 channels, got {channels}")
        images = images.float()
        if images.shape[-2:] != (299, 299):
            images = F.interpolate(images, size=(299, 299), mode="bilinear", align_corners=False)
        return self.net(images)

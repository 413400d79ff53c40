"""The embedded default: scikit-learn's 1,797 handwritten 8x8 digits, which ship with the
dependencies. Bootstrap builds the digit DCGAN (``digits``), the VAE (``digits-vae``) and
the inpainter (``digits-inpainter``); pre-training is small enough to run in full on CPU."""

from __future__ import annotations

from unlearning.data.digits import DIGIT_LABELS, digits_splits
from unlearning.domains.builtin import BuiltinDomain, ModelRecipe
from unlearning.models import DCGANConfig, VAEConfig
from unlearning.models.inpainter import InpainterConfig
from unlearning.pretrain import PRETRAIN_SETTINGS, ClassifierTraining, InpainterTraining, VAETraining

DOMAIN = BuiltinDomain(
    name="digits",
    guide="digits",
    labels=DIGIT_LABELS,
    image_shape=(1, 8, 8),
    load=digits_splits,
    models=(
        ModelRecipe("digits", "dcgan", DCGANConfig(resolution=8, channels=1), PRETRAIN_SETTINGS),
        ModelRecipe("digits-vae", "vae", VAEConfig(resolution=8, channels=1), VAETraining()),
        ModelRecipe("digits-inpainter", "inpainter", InpainterConfig(resolution=8, channels=1), InpainterTraining()),
    ),
    guide_training=ClassifierTraining(epochs=60, seed=0),
    judge_training=ClassifierTraining(epochs=60, seed=1),
    min_accuracy=0.95,
    default_model="digits",
)

"""Models: DCGAN generator/discriminator, the VAE decoder/encoder, the label classifier, and their one save/load convention."""

from unlearning.models.classifier import Classifier, ClassifierConfig, JudgeClassifier, PenultimateFeatures
from unlearning.models.dcgan import DCGANConfig, Discriminator, Generator
from unlearning.models.io import MODEL_KINDS, load_model, save_model
from unlearning.models.vae import Decoder, Encoder, VAEConfig

__all__ = [
    "Classifier", "ClassifierConfig", "JudgeClassifier", "PenultimateFeatures", "DCGANConfig", "Discriminator",
    "Generator", "MODEL_KINDS", "load_model", "save_model", "Decoder", "Encoder", "VAEConfig",
]

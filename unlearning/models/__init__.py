"""Models: DCGAN generator/discriminator, the label classifier, and their one save/load convention."""

from unlearning.models.classifier import Classifier, ClassifierConfig, PenultimateFeatures
from unlearning.models.dcgan import DCGANConfig, Discriminator, Generator
from unlearning.models.io import MODEL_KINDS, load_model, save_model

__all__ = [
    "Classifier", "ClassifierConfig", "PenultimateFeatures", "DCGANConfig", "Discriminator",
    "Generator", "MODEL_KINDS", "load_model", "save_model",
]

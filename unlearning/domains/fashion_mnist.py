"""Fashion-MNIST (Xiao et al. 2017): 70,000 28x28 grey images of ten kinds of garment, the
papers' MNIST scale. Read in place from Debian's ``dataset-fashion-mnist`` package
(gzipped IDX under ``/usr/share/datasets/fashion-mnist/``, or ``LETHE_FASHION_MNIST_DIR``);
nothing is downloaded. Its own 60,000 / 10,000 split is the train / held-out split.

Bootstrap builds ``fashion`` (a DCGAN for 28x28: it starts from 7x7, so the side need not
be a power of two) and ``fashion-vae``. Pre-training on 2 CPU cores is slow, so the CPU
schedule is short (see ``cpu`` below; ``--epochs`` for more) and the full one runs when
CUDA is present.
"""

from __future__ import annotations

import os
from pathlib import Path

from unlearning.data.digits import LabelledImages
from unlearning.domains.builtin import BuiltinDomain, ModelRecipe
from unlearning.errors import LetheError
from unlearning.methods.adversarial import AdversarialSettings
from unlearning.models import DCGANConfig, VAEConfig
from unlearning.pretrain import ClassifierTraining, VAETraining

LABELS = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
FILES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
         "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")


def data_dir() -> Path:
    return Path(os.environ.get("LETHE_FASHION_MNIST_DIR", DEBIAN_DIR))


def references() -> list[Path]:
    folder = data_dir()
    missing = [name for name in FILES if not (folder / name).is_file()]
    if missing:
        raise LetheError(
            f"Fashion-MNIST is not installed ({folder} lacks {', '.join(missing)}): install Debian's package "
            "with `apt-get install dataset-fashion-mnist`, or set LETHE_FASHION_MNIST_DIR to a folder holding "
            "the four gzipped IDX files")
    return [folder / name for name in FILES]


def load() -> tuple[LabelledImages, LabelledImages]:
    from unlearning.data.files import UploadLimits, load_mnist

    references()  # a clear message when the package is missing
    limits = UploadLimits(max_images=100_000)
    return load_mnist(data_dir(), split="train", limits=limits), load_mnist(data_dir(), split="test", limits=limits)


DOMAIN = BuiltinDomain(
    name="fashion-mnist",
    guide="fashion",
    labels=LABELS,
    image_shape=(1, 28, 28),
    load=load,
    references=references,
    models=(
        ModelRecipe(
            "fashion", "dcgan", DCGANConfig(resolution=28, channels=1, width=64),
            cpu=AdversarialSettings(epochs=4, alpha_pos=0.9, alpha_neg=0.1, lam=1.0, g_steps=1, ema_decay=0.999),
            cuda=AdversarialSettings(epochs=60, alpha_pos=0.9, alpha_neg=0.1, lam=1.0, g_steps=5, ema_decay=0.999),
        ),
        ModelRecipe(
            "fashion-vae", "vae", VAEConfig(resolution=28, channels=1, latent_dim=16, hidden=512),
            cpu=VAETraining(epochs=10, batch_size=128), cuda=VAETraining(epochs=60, batch_size=128),
        ),
    ),
    # Measured on 2 CPU cores: the guide (pyramid layout) reaches about 90 % held-out in 5
    # epochs (under 2 minutes); the judge's all-convolutional body learns slower per epoch.
    guide_training=ClassifierTraining(epochs=5, batch_size=64, lr=2e-3, seed=0),
    judge_training=ClassifierTraining(epochs=8, batch_size=64, lr=2e-3, seed=1),
    min_accuracy=0.88,
    default_model="fashion",
)

"""Training the models a redaction starts from: the label classifier, the base GAN
(Kong & Chaudhuri App. D: the eq. 3 loss with a+ = 0.9, a- = 0.1, no Omega, K_G = 5) and
the base VAE (the negative ELBO) and the inpainter (L1 restoration of T(x))."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from pydantic import BaseModel, Field

from unlearning.data.digits import LabelledImages
from unlearning.methods.adversarial import AdversarialSettings, train_adversarial
from unlearning.methods.base import GAN, Callbacks, MethodResult
from unlearning.models import Classifier, ClassifierConfig, DCGANConfig, Discriminator, Generator
from unlearning.models.inpainter import Inpainter, InpainterConfig
from unlearning.models.vae import Decoder, Encoder, VAEConfig, negative_elbo

PRETRAIN_SETTINGS = AdversarialSettings(
    epochs=200, alpha_pos=0.9, alpha_neg=0.1, lam=1.0, d_steps=1, g_steps=5, ema_decay=0.999
)


class ClassifierTraining(BaseModel):
    epochs: int = Field(40, ge=1)
    batch_size: int = 64
    lr: float = 1e-3
    max_shift: int = Field(1, ge=0, description="random translation augmentation, pixels")
    seed: int = 0


def _random_shift(images: torch.Tensor, max_shift: int, rng: torch.Generator) -> torch.Tensor:
    """Translate each image by up to max_shift pixels, filling with background (-1)."""
    if max_shift == 0:
        return images
    n, _, h, w = images.shape
    padded = F.pad(images, [max_shift] * 4, value=-1.0)
    dx = torch.randint(0, 2 * max_shift + 1, (n,), generator=rng)
    dy = torch.randint(0, 2 * max_shift + 1, (n,), generator=rng)
    return torch.stack([padded[i, :, dy[i] : dy[i] + h, dx[i] : dx[i] + w] for i in range(n)])


@torch.no_grad()
def predicted_labels(classifier: Classifier, images: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
    """(N,) the classifier's label for each image (on the CPU)."""
    classifier.eval()
    device = next(classifier.parameters()).device
    return torch.cat([classifier(part.to(device)).argmax(1).cpu() for part in images.split(batch_size)])


def accuracy(classifier: Classifier, data: LabelledImages, batch_size: int = 1000) -> float:
    return int((predicted_labels(classifier, data.images, batch_size) == data.labels).sum()) / len(data)


def train_classifier(
    train: LabelledImages,
    held_out: LabelledImages,
    config: ClassifierConfig,
    settings: ClassifierTraining | None = None,
    callbacks: Callbacks | None = None,
    device: torch.device | None = None,
    architecture: type[Classifier] = Classifier,
) -> tuple[Classifier, dict[str, float]]:
    """Cross-entropy with shift augmentation; returns the classifier and its held-out accuracy.
    ``architecture``: the guide's (``Classifier``) or the judge's (``JudgeClassifier``)."""
    settings = settings or ClassifierTraining()
    callbacks = callbacks or Callbacks()
    torch.manual_seed(settings.seed)
    rng = torch.Generator().manual_seed(settings.seed)
    device = device or torch.device("cpu")
    model = architecture(config).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=settings.lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, settings.epochs)
    b = settings.batch_size
    for epoch in range(settings.epochs):
        model.train()
        order = torch.randperm(len(train), generator=rng)
        for i in range(0, len(train), b):
            callbacks.check_cancelled()
            idx = order[i : i + b]
            x = _random_shift(train.images[idx], settings.max_shift, rng).to(device)
            loss = F.cross_entropy(model(x), train.labels[idx].to(device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        schedule.step()
        callbacks.progress((epoch + 1) / settings.epochs, {"stage": "classifier", "epoch": epoch + 1})
    model.eval()
    return model, {
        "train_accuracy": accuracy(model, train),
        "held_out_accuracy": accuracy(model, held_out),
    }


def pretrain_gan(
    images: torch.Tensor,
    config: DCGANConfig,
    settings: AdversarialSettings = PRETRAIN_SETTINGS,
    callbacks: Callbacks | None = None,
    device: torch.device | None = None,
) -> MethodResult:
    """The base model: DCGAN trained from scratch on eq. 3 with no redaction set."""
    torch.manual_seed(settings.seed)
    gan = GAN(Generator(config), Discriminator(config))
    gan, history, stats = train_adversarial(
        gan, images, settings, callbacks=callbacks, device=device or torch.device("cpu")
    )
    return MethodResult(gan, history, stats)


class MinibatchTraining(BaseModel):
    """Plain Adam over shuffled mini-batches: the inpainter's and the VAE's training."""

    epochs: int = Field(80, ge=1)
    batch_size: int = 64
    lr: float = 1e-3
    seed: int = 0


class InpainterTraining(MinibatchTraining):
    epochs: int = Field(80, ge=1)


class VAETraining(MinibatchTraining):
    epochs: int = Field(300, ge=1)


def _train_minibatches(
    loss_of: Callable[[torch.Tensor], torch.Tensor],
    parameters: list[torch.nn.Parameter],
    images: torch.Tensor,
    settings: MinibatchTraining,
    callbacks: Callbacks,
    device: torch.device,
) -> float:
    """``settings.epochs`` passes of Adam on ``loss_of(batch)``; returns the last batch's loss."""
    optimiser = torch.optim.Adam(parameters, lr=settings.lr)
    rng = torch.Generator().manual_seed(settings.seed)
    images = images.to(device)
    loss = torch.zeros(())
    for epoch in range(settings.epochs):
        callbacks.check_cancelled()
        for batch in torch.randperm(len(images), generator=rng).split(settings.batch_size):
            loss = loss_of(images[batch.to(device)])
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
        callbacks.progress((epoch + 1) / settings.epochs, {"epoch": epoch + 1, "loss": loss.item()})
    return loss.item()


def train_inpainter(
    images: torch.Tensor,
    config: InpainterConfig,
    settings: InpainterTraining | None = None,
    callbacks: Callbacks | None = None,
    device: torch.device | None = None,
) -> tuple[Inpainter, dict[str, float]]:
    """h = D o E trained to restore x from T(x) (mean absolute error)."""
    settings = settings or InpainterTraining()
    device = device or torch.device("cpu")
    torch.manual_seed(settings.seed)
    model = Inpainter(config).to(device)
    final = _train_minibatches(lambda x: (model.restore(x) - x).abs().mean(), list(model.parameters()),
                               images, settings, callbacks or Callbacks(), device)
    return model.eval(), {"final_l1": final}


def train_vae(
    images: torch.Tensor,
    config: VAEConfig,
    settings: VAETraining | None = None,
    callbacks: Callbacks | None = None,
    device: torch.device | None = None,
) -> tuple[Decoder, Encoder, dict[str, float]]:
    """The base VAE on ``images``; returns (decoder, encoder, {"final_loss": ...})."""
    settings = settings or VAETraining()
    device = device or torch.device("cpu")
    torch.manual_seed(settings.seed)
    decoder, encoder = Decoder(config).to(device), Encoder(config).to(device)
    final = _train_minibatches(lambda x: negative_elbo(encoder, decoder, x), [*decoder.parameters(), *encoder.parameters()],
                               images, settings, callbacks or Callbacks(), device)
    return decoder.eval(), encoder.eval(), {"final_loss": final}

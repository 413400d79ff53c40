"""A DCGAN trained by plain PyTorch, as someone outside Lethe would: no Lethe code, only
torch, numpy, the data and safetensors. It writes what ``lethe import`` reads:
``generator.safetensors`` + ``generator.json`` and the same for the discriminator, in the
layout of Lethe's ``dcgan-generator`` / ``dcgan-discriminator`` kinds (a ``start`` x
``start`` map, two upsampling steps), so the JSON names a built-in kind.

Two data sets: ``fashion-mnist`` (28x28 from a 7x7 start; the gzipped IDX files of
Debian's ``dataset-fashion-mnist``) and ``digits`` (8x8 from 2x2; scikit-learn's 1,797).
Seeded; the default Fashion-MNIST run is committed as tests/fixtures/byo-fashion-dcgan/
(the import tests read it rather than train for minutes)::

    python tests/train_dcgan.py OUT_DIR [--data fashion-mnist|digits] [--epochs N] [--images N]
"""

from __future__ import annotations

import argparse
import gzip
import json
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file
from torch import nn

FASHION_IMAGES = Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz")


def fashion_mnist() -> torch.Tensor:
    """The 60,000 training images, (N, 1, 28, 28) in [-1, 1] (IDX: a 16-byte header, then bytes)."""
    raw = np.frombuffer(gzip.decompress(FASHION_IMAGES.read_bytes()), np.uint8, offset=16)
    return torch.from_numpy(raw.reshape(-1, 1, 28, 28).astype(np.float32) / 127.5 - 1.0)


def digits() -> torch.Tensor:
    from sklearn.datasets import load_digits

    return torch.from_numpy(load_digits().images.astype(np.float32) / 8.0 - 1.0).unsqueeze(1)  # [0, 16] -> [-1, 1]


# name: (loader, image side, start side, latent size, width, default epochs)
DATA = {"fashion-mnist": (fashion_mnist, 28, 7, 64, 64, 5), "digits": (digits, 8, 2, 32, 32, 150)}


class Generator(nn.Module):
    def __init__(self, latent: int, width: int, start: int):
        super().__init__()
        top, self.start = 2 * width, start
        self.project = nn.Sequential(nn.Linear(latent, top * start ** 2, bias=False), nn.BatchNorm1d(top * start ** 2),
                                     nn.ReLU(True))
        self.upsample = nn.Sequential(
            nn.ConvTranspose2d(top, width, 4, 2, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(True),
            nn.ConvTranspose2d(width, 1, 4, 2, 1), nn.Tanh())

    def forward(self, z):
        h = self.project(z)
        return self.upsample(h.view(len(h), -1, self.start, self.start))


class Discriminator(nn.Module):
    def __init__(self, width: int, start: int):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(1, width, 4, 2, 1), nn.LeakyReLU(0.2, True),
            nn.Conv2d(width, 2 * width, 4, 2, 1, bias=False), nn.BatchNorm2d(2 * width), nn.LeakyReLU(0.2, True),
            nn.Flatten(), nn.Linear(2 * width * start ** 2, 1))

    def forward(self, x):
        return self.net(x).squeeze(1)


def build(data: str) -> tuple[Generator, Discriminator, int]:
    _, _, start, latent, width, _ = DATA[data]
    return Generator(latent, width, start), Discriminator(width, start), latent


def train(out: Path, *, data: str = "fashion-mnist", epochs: int | None = None, images: int | None = None,
          seed: int = 0, progress: bool = False) -> Path:
    load, side, _, latent, width, default_epochs = DATA[data]
    torch.manual_seed(seed)
    real_images = load()[:images]
    g, d, _ = build(data)
    opt_g = torch.optim.Adam(g.parameters(), 2e-4, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(d.parameters(), 2e-4, betas=(0.5, 0.999))
    bce = nn.BCEWithLogitsLoss()
    batch = 64
    for epoch in range(epochs or default_epochs):
        order = torch.randperm(len(real_images))
        for i in range(0, len(real_images) - batch + 1, batch):
            real = real_images[order[i:i + batch]]
            fake = g(torch.randn(batch, latent))
            loss_d = bce(d(real), torch.full((batch,), 0.9)) + bce(d(fake.detach()), torch.zeros(batch))
            opt_d.zero_grad()
            loss_d.backward()
            opt_d.step()
            loss_g = bce(d(fake), torch.ones(batch))
            opt_g.zero_grad()
            loss_g.backward()
            opt_g.step()
        if progress:
            print(f"epoch {epoch + 1}: loss D {loss_d.item():.3f}, loss G {loss_g.item():.3f}", flush=True)
    out.mkdir(parents=True, exist_ok=True)
    config = {"resolution": side, "channels": 1, "latent_dim": latent, "width": width}
    for stem, model, kind in (("generator", g, "dcgan-generator"), ("discriminator", d, "dcgan-discriminator")):
        save_file({k: v.contiguous() for k, v in model.eval().state_dict().items()}, str(out / f"{stem}.safetensors"))
        (out / f"{stem}.json").write_text(json.dumps({"kind": kind, "config": config}))
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--data", choices=sorted(DATA), default="fashion-mnist")
    parser.add_argument("--epochs", type=int, help="default: 5 for fashion-mnist, 150 for digits")
    parser.add_argument("--images", type=int, help="train on the first N images only (a quick check)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    train(args.out, data=args.data, epochs=args.epochs, images=args.images, seed=args.seed, progress=True)

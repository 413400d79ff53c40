"""A DCGAN for Fashion-MNIST trained by plain PyTorch, as someone outside Lethe would: no
Lethe code, only torch, numpy and safetensors. It writes what ``lethe import`` reads:
``generator.safetensors`` + ``generator.json`` and the same for the discriminator, with
the layout of Lethe's ``dcgan-generator`` / ``dcgan-discriminator`` kinds (28x28: a 7x7
start, two upsampling steps), so the JSON names a built-in kind.

Small and seeded, for tests: a subset of the training images and a few epochs (about a
minute on 2 CPU cores)::

    python tests/train_fashion_dcgan.py OUT_DIR [--images 20000] [--epochs 8]

Its default run (4 minutes on one busy core) is committed as tests/fixtures/byo-fashion-dcgan/,
which the import tests read.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file
from torch import nn

DATA = Path(os.environ.get("LETHE_FASHION_MNIST_DIR", "/usr/share/datasets/fashion-mnist"))
LATENT, WIDTH = 64, 32


class Generator(nn.Module):
    def __init__(self):
        super().__init__()
        top = 2 * WIDTH
        self.project = nn.Sequential(nn.Linear(LATENT, top * 49, bias=False), nn.BatchNorm1d(top * 49), nn.ReLU(True))
        self.upsample = nn.Sequential(
            nn.ConvTranspose2d(top, WIDTH, 4, 2, 1, bias=False), nn.BatchNorm2d(WIDTH), nn.ReLU(True),
            nn.ConvTranspose2d(WIDTH, 1, 4, 2, 1), nn.Tanh())

    def forward(self, z):
        return self.upsample(self.project(z).view(-1, 2 * WIDTH, 7, 7))


class Discriminator(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(1, WIDTH, 4, 2, 1), nn.LeakyReLU(0.2, True),
            nn.Conv2d(WIDTH, 2 * WIDTH, 4, 2, 1, bias=False), nn.BatchNorm2d(2 * WIDTH), nn.LeakyReLU(0.2, True),
            nn.Flatten(), nn.Linear(2 * WIDTH * 49, 1))

    def forward(self, x):
        return self.net(x).squeeze(1)


def read_images(count: int, seed: int) -> torch.Tensor:
    """``count`` training images (a seeded choice), scaled to [-1, 1]."""
    with gzip.open(DATA / "train-images-idx3-ubyte.gz") as fh:
        pixels = np.frombuffer(fh.read(), np.uint8, offset=16).reshape(-1, 1, 28, 28)
    chosen = np.random.default_rng(seed).permutation(len(pixels))[:count]
    return torch.from_numpy(pixels[chosen].astype(np.float32) / 127.5 - 1.0)


def train(out: Path, *, images: int = 20_000, epochs: int = 8, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    data = read_images(images, seed)
    g, d = Generator(), Discriminator()
    opt_g = torch.optim.Adam(g.parameters(), 2e-4, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(d.parameters(), 2e-4, betas=(0.5, 0.999))
    bce = nn.BCEWithLogitsLoss()
    batch = 64
    for _ in range(epochs):
        order = torch.randperm(len(data))
        for i in range(0, len(data) - batch + 1, batch):
            real = data[order[i:i + batch]]
            fake = g(torch.randn(batch, LATENT))
            loss_d = bce(d(real), torch.full((batch,), 0.9)) + bce(d(fake.detach()), torch.zeros(batch))
            opt_d.zero_grad()
            loss_d.backward()
            opt_d.step()
            loss_g = bce(d(fake), torch.ones(batch))
            opt_g.zero_grad()
            loss_g.backward()
            opt_g.step()
    out.mkdir(parents=True, exist_ok=True)
    config = {"resolution": 28, "channels": 1, "latent_dim": LATENT, "width": WIDTH}
    for stem, model, kind in (("generator", g, "dcgan-generator"), ("discriminator", d, "dcgan-discriminator")):
        save_file({k: v.contiguous() for k, v in model.eval().state_dict().items()}, str(out / f"{stem}.safetensors"))
        (out / f"{stem}.json").write_text(json.dumps({"kind": kind, "config": config}))
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--images", type=int, default=20_000)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    train(args.out, images=args.images, epochs=args.epochs, seed=args.seed)

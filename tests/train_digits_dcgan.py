"""A DCGAN for the digits trained by plain PyTorch, as someone outside Lethe would: no
Lethe code, only torch, scikit-learn's 1,797 8x8 digits and safetensors. It writes what
``lethe import`` reads: ``generator.safetensors`` + ``generator.json`` and the same for the
discriminator, with the layout of Lethe's ``dcgan-generator`` / ``dcgan-discriminator``
kinds (8x8: a 2x2 start, two upsampling steps), so the JSON names a built-in kind.

Seeded; its default run is committed as tests/fixtures/byo-digits-dcgan/ (the import
tests read it rather than train for minutes)::

    python tests/train_digits_dcgan.py OUT_DIR [--epochs 150]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from safetensors.torch import save_file
from sklearn.datasets import load_digits
from torch import nn

LATENT, WIDTH = 32, 32


class Generator(nn.Module):
    def __init__(self):
        super().__init__()
        top = 2 * WIDTH
        self.project = nn.Sequential(nn.Linear(LATENT, top * 4, bias=False), nn.BatchNorm1d(top * 4), nn.ReLU(True))
        self.upsample = nn.Sequential(
            nn.ConvTranspose2d(top, WIDTH, 4, 2, 1, bias=False), nn.BatchNorm2d(WIDTH), nn.ReLU(True),
            nn.ConvTranspose2d(WIDTH, 1, 4, 2, 1), nn.Tanh())

    def forward(self, z):
        return self.upsample(self.project(z).view(-1, 2 * WIDTH, 2, 2))


class Discriminator(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(1, WIDTH, 4, 2, 1), nn.LeakyReLU(0.2, True),
            nn.Conv2d(WIDTH, 2 * WIDTH, 4, 2, 1, bias=False), nn.BatchNorm2d(2 * WIDTH), nn.LeakyReLU(0.2, True),
            nn.Flatten(), nn.Linear(2 * WIDTH * 4, 1))

    def forward(self, x):
        return self.net(x).squeeze(1)


def train(out: Path, *, epochs: int = 150, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    data = torch.from_numpy(load_digits().images.astype("float32") / 8.0 - 1.0).unsqueeze(1)  # [0, 16] -> [-1, 1]
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
    config = {"resolution": 8, "channels": 1, "latent_dim": LATENT, "width": WIDTH}
    for stem, model, kind in (("generator", g, "dcgan-generator"), ("discriminator", d, "dcgan-discriminator")):
        save_file({k: v.contiguous() for k, v in model.eval().state_dict().items()}, str(out / f"{stem}.safetensors"))
        (out / f"{stem}.json").write_text(json.dumps({"kind": kind, "config": config}))
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--epochs", type=int, default=150)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    train(args.out, epochs=args.epochs, seed=args.seed)

"""A LETHE_HOME with the Fashion-MNIST domain and its base DCGAN (``fashion``), registered
from the committed weights in tests/fixtures/fashion-mnist/ (written by
tests/fixtures/make_fashion.py, which runs the real bootstrap): registering checks both
classifiers on the held-out split and exports, checks and judges the generator, like
bootstrap does, without pre-training for a quarter of an hour."""

from __future__ import annotations

import json
from pathlib import Path

import torch

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "fashion-mnist"


def build_fashion_home(home: Path) -> Path:
    from unlearning.bootstrap import register_base
    from unlearning.domains import BUILTIN_DOMAINS
    from unlearning.domains.loaded import load_domain
    from unlearning.domains.register import register_domain
    from unlearning.models.io import load_model
    from unlearning.registry import Registry

    registry = Registry(home)
    builtin = BUILTIN_DOMAINS["fashion-mnist"]
    train, held_out = builtin.load()
    trained = (load_model(FIXTURE, "guide"), load_model(FIXTURE, "judge"))
    register_domain(registry, builtin.name, train, held_out, builtin.labels, guide=builtin.guide,
                    builtin=builtin.name, references=builtin.references(), min_accuracy=builtin.min_accuracy,
                    trained=trained, show_progress=False, source="tests/fixtures/fashion-mnist")
    data = load_domain(registry, builtin.name, device=torch.device("cpu"))
    recorded = json.loads((FIXTURE / "trained.json").read_text())
    components = {"generator": load_model(FIXTURE, "generator"), "discriminator": load_model(FIXTURE, "discriminator")}
    register_base(registry, "fashion", data, components, {"pretraining": recorded["pretraining"]})
    return home

"""LETHE_HOMEs for the tests, built from committed weights: a built-in domain's guide,
judge and base models in tests/fixtures/<domain>/ (written by tests/fixtures/make_builtin.py,
which runs the real bootstrap). Registering them checks both classifiers on the held-out
split and exports, checks and judges every model, as bootstrap does, without pre-training
for minutes (the digits) or a quarter of an hour (Fashion-MNIST)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

FIXTURES = Path(__file__).resolve().parent / "fixtures"


def build_builtin_home(home: Path, domain: str) -> Path:
    from unlearning.bootstrap import register_base
    from unlearning.domains import BUILTIN_DOMAINS
    from unlearning.domains.loaded import load_domain
    from unlearning.domains.register import register_domain
    from unlearning.models.io import load_model
    from unlearning.registry import Registry

    fixture = FIXTURES / domain
    registry = Registry(home)
    builtin = BUILTIN_DOMAINS[domain]
    train, held_out = builtin.load()
    trained = (load_model(fixture, "guide"), load_model(fixture, "judge"))
    register_domain(registry, builtin.name, train, held_out, builtin.labels, guide=builtin.guide,
                    builtin=builtin.name, references=builtin.references(), min_accuracy=builtin.min_accuracy,
                    trained=trained, show_progress=False, source=f"tests/fixtures/{domain}")
    data = load_domain(registry, builtin.name, device=torch.device("cpu"))
    recorded = json.loads((fixture / "trained.json").read_text())
    for model, record in recorded["models"].items():
        components = {stem: load_model(fixture / model, stem) for stem in record["components"]}
        register_base(registry, model, data, components, {"pretraining": record["pretraining"]})
    return home


def merge_homes(target: Path, *homes: Path) -> Path:
    """One LETHE_HOME holding the registries of several (their models, domains and
    classifiers do not overlap)."""
    for home in homes:
        for part in ("versions", "active", "classifiers", "domains"):
            if (home / part).is_dir():
                shutil.copytree(home / part, target / part, dirs_exist_ok=True)
    return target

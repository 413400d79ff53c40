"""What a built-in domain is: where its data comes from, its class names, and the models
``lethe bootstrap --domain NAME`` trains for it (recipes). Each built-in domain lives in a
file of its own (``digits.py``, ``fashion_mnist.py``) and is registered in ``__init__.py``.

A recipe names a registry model, its family (``dcgan``, ``vae``, ``inpainter``), the
family's config and two training schedules: ``cpu`` (the default without CUDA, sized to
finish within minutes on 2 cores) and ``cuda`` (the full schedule, used when CUDA is
present). ``--epochs`` overrides both.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from pydantic import BaseModel

from unlearning.data.digits import LabelledImages
from unlearning.pretrain import ClassifierTraining

Family = Literal["dcgan", "vae", "inpainter"]


@dataclass(frozen=True)
class ModelRecipe:
    model: str
    family: Family
    config: BaseModel
    cpu: BaseModel  # training settings (AdversarialSettings, VAETraining, InpainterTraining)
    cuda: BaseModel | None = None  # the full schedule when CUDA is present; None: as on CPU

    def settings(self, *, cuda: bool, epochs: int | None, seed: int) -> BaseModel:
        chosen = self.cuda if cuda and self.cuda is not None else self.cpu
        update: dict = {"seed": seed}
        if epochs is not None:
            update["epochs"] = epochs
        return chosen.model_copy(update=update)


@dataclass(frozen=True)
class BuiltinDomain:
    name: str
    guide: str  # the guide classifier's registry name: what specs write as `classifier:`
    labels: list[str]
    image_shape: tuple[int, int, int]
    load: Callable[[], tuple[LabelledImages, LabelledImages]]  # (train, held_out), in [-1, 1]
    references: Callable[[], list[Path]] = lambda: []  # files read in place, checksummed at registration
    models: tuple[ModelRecipe, ...] = ()
    guide_training: ClassifierTraining = field(default_factory=ClassifierTraining)
    judge_training: ClassifierTraining = field(default_factory=lambda: ClassifierTraining(seed=1))
    min_accuracy: float = 0.9  # both classifiers, on the held-out split
    default_model: str | None = None  # what `lethe serve` samples when LETHE_MODEL names this domain's

    def recipe(self, model: str) -> ModelRecipe | None:
        return next((r for r in self.models if r.model == model), None)

"""What every step of a job reads, and the interface a model family implements for the
steps that differ (how it trains, judges, exports, gates and reports)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch

from unlearning.domains.loaded import Domain
from unlearning.jobs.outcome import Gate, JobOutcome
from unlearning.methods import Callbacks
from unlearning.registry import Registry, VersionManifest
from unlearning.spec import ForgetSpec
from unlearning.spec.checks import RedactionSet


@dataclass
class JobContext:
    spec: ForgetSpec  # label names resolved
    registry: Registry
    parent: VersionManifest
    method: str
    domain: Domain
    omega: RedactionSet  # the spec's checks
    judged: RedactionSet | None  # their mirror by the domain's judge
    uploads_dir: Path | None
    device: torch.device
    callbacks: Callbacks = field(default_factory=Callbacks)
    invalidity_floor: float = 0.0  # the nearest-neighbour judge's on the kept images (redaction_set.py)


@dataclass
class Trained:
    """A method's result: the parent's and the edited components (by file stem)."""

    parent: dict[str, torch.nn.Module]
    edited: dict[str, torch.nn.Module]
    history: list[dict[str, Any]]
    stats: dict[str, Any]
    extras: dict[str, Any] = field(default_factory=dict)  # what judging needs besides the models


@dataclass
class Judged:
    before: dict[str, Any]
    after: dict[str, Any]
    pictures: dict[str, Any] = field(default_factory=dict)  # for the report (attack images, inputs)


class JobFamily(Protocol):
    """The steps of a job that depend on the kind of model (a generator, an image-to-image model)."""

    onnx_name: str

    def choose_method(self, spec: ForgetSpec, parent: VersionManifest) -> str: ...

    def preflight(self, ctx: JobContext) -> None: ...

    def train(self, ctx: JobContext) -> Trained: ...

    def judge(self, ctx: JobContext, trained: Trained) -> Judged: ...

    def export(self, trained: Trained, path: Path, judged: Judged) -> float: ...

    def gates(self, spec: ForgetSpec, judged: Judged, parity: float) -> list[Gate]: ...

    def report(self, outcome: JobOutcome, ctx: JobContext, trained: Trained, judged: Judged,
               report_dir: Path) -> Path: ...

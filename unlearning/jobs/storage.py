"""Storing a job's candidate: its edited components, the parent's other components and
the ONNX graph become one new version (promoted or rejected by its gates), activated if
promoted and asked. The registry only ever sees a complete version."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, Literal

import torch

from unlearning.jobs.outcome import Gate
from unlearning.models.io import save_model
from unlearning.registry import Registry, VersionManifest
from unlearning.spec import ForgetSpec


def _carried_files(manifest: VersionManifest, edited: set[str]) -> list[str]:
    """Files of components the job did not edit (e.g. a VAE's encoder): copied into the new version."""
    return sorted(name for name in manifest.files
                  if name.endswith((".safetensors", ".json")) and name.rsplit(".", 1)[0] not in edited)


def store_version(
    registry: Registry,
    parent: VersionManifest,
    spec: ForgetSpec,
    components: dict[str, torch.nn.Module],
    onnx_path: Path,
    gates: list[Gate],
    metrics: dict[str, Any],
    *,
    activate: bool,
    job_id: str | None = None,
) -> tuple[VersionManifest, Literal["promoted", "rejected"], str | None, bool]:
    """(manifest, status, reason, activated)."""
    failed = [g for g in gates if not g.passed]
    status: Literal["promoted", "rejected"] = "rejected" if failed else "promoted"
    reason = "; ".join(f"{g.name}: {g.value} against limit {g.limit} ({g.detail})" for g in failed) or None

    def write_files(folder: Path) -> None:
        for stem, module in components.items():
            save_model(module, folder, stem)
        for name in _carried_files(parent, set(components)):
            shutil.copyfile(registry.file_path(parent.version, name), folder / name)
        shutil.copyfile(onnx_path, folder / onnx_path.name)

    manifest = registry.create_version(
        parent.model, write_files, parent=parent.version, spec=spec.model_dump(mode="json"), metrics=metrics,
        status=status, reason=reason, dataset=parent.dataset, classifier=parent.classifier,
        domain=parent.domain_name, job=job_id,
    )
    activated = status == "promoted" and activate
    if activated:
        registry.activate(manifest.version)
    return manifest, status, reason, activated

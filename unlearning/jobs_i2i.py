"""The job path for an image-to-image model (Li et al.), called by ``jobs.run_redaction``
and ``jobs.preflight`` when the parent is an inpainter:

    spec -> forget / retain inputs -> encoder-only unlearning -> retain and forget quality,
    separately -> gates -> ONNX export + parity -> registry -> active pointer

The forget set is the training images the spec's checks put in Omega plus any uploaded
negatives; the retain set is the other training images, uploaded ``retain_files``, or the
proxy set. Both are judged on held-out inputs as well as the forget images themselves.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from unlearning.data.files import load_images
from unlearning.errors import SpecError
from unlearning.evaluation import Domain, judge_inpainter
from unlearning.export import check_inpainter_parity, export_inpainter_onnx
from unlearning.methods import Callbacks, hyperparameters
from unlearning.methods.i2i import I2IHyperparameters, unlearn_encoder
from unlearning.registry import INPAINTER, Registry, VersionManifest
from unlearning.spec import ForgetSpec, retain_files
from unlearning.spec.checks import RedactionSet, matches_any

METHOD = "i2i-encoder"


def forget_mask(omega: RedactionSet, images: torch.Tensor) -> torch.Tensor:
    """Which real images belong to the forget set: in Omega by the spec's checks, equal to
    an upload, or (data-only specs) nearer the uploads than the kept data."""
    mask = omega.omega_mask(images)  # the rules, and exact matches of uploads
    if omega.judge is not None and not omega.judge_splits_training:  # else omega_mask asked it already
        mask |= torch.cat([omega.judge(part).to(mask.device) for part in images.split(1024)])
    return mask


def forget_and_retain(omega: RedactionSet, domain: Domain) -> dict[str, Any]:
    """Training forget / retain images and the evaluation inputs of each. Every image
    counts once: an upload that is also a training (or held-out) image is not added again.
    Uploads alone forget those images; training images merely like them stay in the retain
    set (a class or classifier rule names a concept)."""
    train = domain.train.images.to(domain.device)
    held_out = domain.held_out.images.to(domain.device)
    in_train, in_held_out = forget_mask(omega, train), forget_mask(omega, held_out)
    forget = train[in_train]
    uploads = omega.negatives.to(domain.device) if omega.negatives is not None else train[:0]
    uploads = uploads[~matches_any(uploads, train)] if len(uploads) else uploads
    forget = torch.cat([forget, uploads])
    if len(forget) == 0:
        raise SpecError("sets: no training image and no upload is in the forget set, so there is nothing to forget")
    held_out_forget = held_out[in_held_out]
    if len(uploads) and len(held_out_forget):
        held_out_forget = held_out_forget[~matches_any(held_out_forget, uploads)]
    return {"forget": forget, "retain": train[~in_train],
            "eval_forget": torch.cat([forget, held_out_forget]), "eval_retain": held_out[~in_held_out],
            "forget_from_training": int(in_train.sum()), "forget_uploads_outside_training": len(uploads)}


def _retain_uploads(spec: ForgetSpec, uploads_dir: Path | None, domain: Domain) -> torch.Tensor | None:
    names = retain_files(spec)
    if not names:
        return None
    parts = []
    for name in names:
        path = Path(uploads_dir) / name if uploads_dir is not None else None
        if path is None or not path.is_file():
            raise SpecError(f"hyperparameters.retain_files: file '{name}' was not uploaded")
        parts.append(load_images(path, expected_shape=domain.image_shape))
    return torch.cat(parts).to(domain.device)


def preflight_i2i(spec: ForgetSpec, parent: VersionManifest, omega: RedactionSet, domain: Domain,
                  uploads_dir: Path | None) -> None:
    """Refuse before queueing: hyperparameters, retain uploads, an empty forget set."""
    hyperparameters(METHOD, spec.hyperparameters)
    _retain_uploads(spec, uploads_dir, domain)
    forget_and_retain(omega, domain)


def evaluate_i2i_gates(spec: ForgetSpec, before: dict[str, Any], after: dict[str, Any], parity: float):
    from unlearning.jobs import Gate

    g = spec.gates
    retain_ratio = after["retain"]["fid"] / max(before["retain"]["fid"], 1e-9)
    forget_ratio = after["forget"]["fid"] / max(before["forget"]["fid"], 1e-9)
    extractor = after["extractor"]
    return [
        Gate(name="retain_fid_ratio", value=retain_ratio, limit=g.max_retain_fid_ratio,
             passed=retain_ratio <= g.max_retain_fid_ratio,
             detail=f"restorations of {after['retain']['images']} held-out retain images against the real ones, "
                    f"candidate over parent; extractor {extractor}"),
        Gate(name="forget_fid_ratio", value=forget_ratio, limit=g.min_forget_fid_ratio,
             passed=forget_ratio >= g.min_forget_fid_ratio,
             detail=f"restorations of {after['forget']['images']} forget images, candidate over parent (at least)"),
        Gate(name="onnx_parity", value=parity, limit=1e-4, passed=parity <= 1e-4,
             detail="max abs difference, PyTorch vs ONNX Runtime, on the evaluation inputs"),
    ]


def run_i2i_redaction(
    spec: ForgetSpec,
    registry: Registry,
    parent: VersionManifest,
    omega: RedactionSet,
    domain: Domain,
    *,
    uploads_dir: Path | None,
    report_dir: Path | None,
    callbacks: Callbacks,
    activate: bool,
    started: float,
    job_id: str | None = None,
):
    from unlearning.jobs import JobOutcome, _stage, store_version

    hp: I2IHyperparameters = hyperparameters(METHOD, spec.hyperparameters)  # type: ignore[assignment]
    sets = forget_and_retain(omega, domain)
    uploaded_retain = _retain_uploads(spec, uploads_dir, domain)
    retain = None if hp.retain == "proxy" else (uploaded_retain if uploaded_retain is not None else sets["retain"])
    model = registry.load_inpainter(parent.version)

    callbacks.progress(0.0, {"stage": "training", "method": METHOD})
    edited, history, stats = unlearn_encoder(
        model, sets["forget"], retain, hp, callbacks=_stage(callbacks, "training", 0.0, 0.8), device=domain.device,
    )
    if uploaded_retain is not None and hp.retain == "data":
        stats["retain"] = "uploaded"
    stats.update({key: sets[key] for key in ("forget_from_training", "forget_uploads_outside_training")})
    callbacks.check_cancelled()
    callbacks.progress(0.8, {"stage": "validating"})
    inputs = {"forget": sets["eval_forget"], "retain": sets["eval_retain"]}
    before = judge_inpainter(model, domain, inputs, omega)
    after = judge_inpainter(edited, domain, inputs, omega)
    callbacks.check_cancelled()

    with tempfile.TemporaryDirectory() as scratch:
        onnx_path = export_inpainter_onnx(edited, Path(scratch) / f"{INPAINTER}.onnx")
        parity = check_inpainter_parity(edited, onnx_path, torch.cat(list(inputs.values())), atol=float("inf"))
        gates = evaluate_i2i_gates(spec, before, after, parity)
        metrics = {"before": before, "after": after, "method": METHOD, "stats": stats, "history": history,
                   "gates": [g.model_dump() for g in gates]}
        manifest, status, reason, activated = store_version(
            registry, parent, spec, {INPAINTER: edited}, onnx_path, gates, metrics, activate=activate,
            job_id=job_id,
        )
    outcome = JobOutcome(
        version=manifest.version, parent=parent.version, status=status, activated=activated, method=METHOD,
        reason=reason, gates=gates, before=before, after=after, history=history, stats=stats,
        duration_s=time.monotonic() - started,
    )
    if report_dir is not None:
        from unlearning.report import write_i2i_report

        outcome.report_dir = str(write_i2i_report(outcome, report_dir, model, edited, inputs))
    callbacks.progress(1.0, {"stage": "done", "status": status})
    return outcome

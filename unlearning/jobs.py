"""The one path a forget request takes, for the CLI and the service alike:

    spec -> method(model, redaction set, data) -> candidate -> gates -> ONNX export +
    parity check -> registry (promoted or rejected) -> active pointer

Everything that can be refused (spec, parent version, classifiers, uploads) is checked
before training starts, and the registry only ever sees a complete version.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import BaseModel

from unlearning.data.files import load_images
from unlearning.errors import LetheError, SpecError
from unlearning.evaluation import Domain, forgotten_classes, judge, load_domain
from unlearning.export import check_onnx_parity, export_generator_onnx
from unlearning.methods import (
    DATA_FREE_METHODS, GAN, Callbacks, MethodResult, check_fits_model, choose_method, hyperparameters, run_method,
)
from unlearning.marks import regenerate_marked
from unlearning.metrics import FID, evaluate, latent_attack, min_share_ratio, redaction_score
from unlearning.models.io import save_model
from unlearning.registry import Registry, VersionManifest, onnx_classifier_module
from unlearning.runtime import latents, pick_device
from unlearning.spec import ForgetSpec, build_redaction_set, load_spec, referenced_files
from unlearning.spec.checks import RedactionSet

DEFAULT_MODEL = "digits"
GATE_SEED = 20_240_601  # parent and candidate are judged on the same latents
PROBE_SAMPLES = 2000
SELECTION_MARGIN = 0.5
ATTACK_IMAGES = 64  # attacked samples shown in the report


class Gate(BaseModel):
    name: str
    value: float | None
    limit: float
    passed: bool
    detail: str = ""


class JobOutcome(BaseModel):
    version: str
    parent: str
    status: Literal["promoted", "rejected"]
    activated: bool
    method: str
    reason: str | None
    gates: list[Gate]
    before: dict[str, Any]
    after: dict[str, Any]
    history: list[dict[str, Any]]
    stats: dict[str, Any]
    duration_s: float
    report_dir: str | None = None


def _stage(callbacks: Callbacks, stage: str, start: float, end: float):
    """Map a sub-task's progress onto [start, end] of the job's, tagged with its stage."""

    def progress(fraction: float, info: dict[str, Any]) -> None:
        callbacks.progress(start + (end - start) * fraction, {"stage": stage, **info})

    return Callbacks(progress=progress, cancelled=callbacks.cancelled)


def _has_discriminator(manifest: VersionManifest) -> bool:
    return "discriminator.safetensors" in manifest.files


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
    """Register the candidate (its edited components, the parent's other components, the
    ONNX graph) as promoted or rejected by ``gates``, and activate it if promoted and asked:
    (manifest, status, reason, activated). The registry only ever sees a complete version."""
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
        status=status, reason=reason, dataset=parent.dataset, classifier=parent.classifier, job=job_id,
    )
    activated = status == "promoted" and activate
    if activated:
        registry.activate(manifest.version)
    return manifest, status, reason, activated


def resolve_parent(registry: Registry, parent: str | None, model: str | None = None) -> VersionManifest:
    """``parent`` if given (it must belong to ``model`` when both are), else ``model``'s active
    version (default model: digits)."""
    version = parent or registry.active(model or DEFAULT_MODEL)
    if version is None:
        raise SpecError(f"no active version of '{model or DEFAULT_MODEL}': run `lethe bootstrap` first or pass --from")
    manifest = registry.verify(version)
    if model is not None and manifest.model != model:
        raise SpecError(f"version {version!r} belongs to model {manifest.model!r}, not {model!r}")
    return manifest


def prepare_redaction_set(
    spec: ForgetSpec, registry: Registry, domain: Domain, uploads_dir: Path | None, marks_from: str | None = None,
) -> RedactionSet:
    """Load uploads (checked against the model's image shape) and classifiers; build Omega.
    Data-only specs get the nearest-neighbour judge in the classifier's feature space;
    marks-only specs get one over the samples regenerated from ``marks_from`` (the version
    the person sampled), without which they cannot judge new images."""
    negatives = {}
    for name in referenced_files(spec):
        if uploads_dir is None:
            raise SpecError(f"sets: file '{name}' is referenced but no upload folder was given")
        path = Path(uploads_dir) / name
        if not path.is_file():
            raise SpecError(f"sets: file '{name}' was not uploaded with the request")
        negatives[name] = load_images(path, expected_shape=domain.image_shape)

    classifiers: dict[str, torch.nn.Module] = {domain.classifier_name: domain.classifier}

    def resolve(name: str) -> torch.nn.Module:
        if name not in classifiers:
            uploaded = Path(uploads_dir) / name if uploads_dir is not None and name.endswith(".onnx") else None
            if uploaded is not None and uploaded.is_file():
                module = onnx_classifier_module(uploaded, name)  # an uploaded classifier: ONNX, never pickle
            else:
                module = registry.load_classifier(name)
            classifiers[name] = module.to(domain.device).eval().requires_grad_(False)
        return classifiers[name]

    omega = build_redaction_set(spec, resolve, negatives)
    if not omega.has_judge and omega.negatives is not None:
        retained, _ = omega.training_split(domain.train.images)
        omega = omega.with_reference(retained, embed=domain.extractor)
    if not omega.has_judge and omega.feedback and marks_from is not None:
        generator = registry.load_generator(marks_from).to(domain.device)
        marked, unmarked = regenerate_marked(generator, omega.feedback, domain.device)
        omega = omega.with_marks(marked, unmarked, embed=domain.extractor)
    return omega


def preflight(
    spec: ForgetSpec | str | Path | dict,
    registry: Registry,
    *,
    parent: str | None = None,
    uploads_dir: Path | None = None,
    device: torch.device | None = None,
    model: str | None = None,
) -> tuple[ForgetSpec, str, VersionManifest]:
    """Refuse now what the job would refuse later: the spec, the method, the parent, every
    upload and classifier, and every check run once on a few of the parent's samples (an
    uploaded classifier with the wrong output shape fails here). Returns the parsed spec,
    the method and the parent's manifest."""
    spec = load_spec(spec)
    parent_manifest = resolve_parent(registry, parent, model)
    method = _method_for(spec, parent_manifest)
    hyperparameters(method, spec.hyperparameters)  # names, types and bounds, against the method's model
    domain = load_domain(registry, parent_manifest, device=device or torch.device("cpu"))
    omega = prepare_redaction_set(spec, registry, domain, uploads_dir, marks_from=parent_manifest.version)
    if parent_manifest.image_to_image:
        from unlearning.jobs_i2i import preflight_i2i

        _probe_checks(omega, domain.train.images[:8].to(domain.device))
        preflight_i2i(spec, parent_manifest, omega, domain, uploads_dir)
        return spec, method, parent_manifest
    _require_judge_for_attack_gate(spec, omega)
    generator = registry.load_generator(parent_manifest.version).to(domain.device).eval()
    with torch.no_grad():
        _probe_checks(omega, generator(latents(8, generator.latent_dim, 0).to(domain.device)))
    return spec, method, parent_manifest


def _method_for(spec: ForgetSpec, parent: VersionManifest) -> str:
    method = choose_method(spec, image_to_image=parent.image_to_image, model=parent.model)
    check_fits_model(method, _has_discriminator(parent), parent.model)
    return method


@torch.no_grad()
def _probe_checks(omega: RedactionSet, probe: torch.Tensor) -> None:
    """Run every forget check once on a few of the model's images: an uploaded classifier
    that wants another input shape fails here, with a message, not in the middle of a job."""
    try:
        if omega.has_judge:
            omega.in_omega(probe)
    except LetheError:
        raise
    except Exception as exc:
        raise SpecError(
            f"sets: the forget checks fail on this model's images (shape {tuple(probe.shape[1:])}): "
            f"{type(exc).__name__}: {str(exc)[:300]}"
        ) from None


def _require_judge_for_attack_gate(spec: ForgetSpec, omega: RedactionSet) -> None:
    if spec.gates.max_attack_invalidity is not None and not omega.has_judge:
        raise SpecError("gates.max_attack_invalidity: the attack check needs a validity, classifier or "
                        "data set to judge the images it finds (feedback marks cannot judge new images)")


def attack_check(
    parent: torch.nn.Module, candidate: torch.nn.Module, omega: RedactionSet, device: torch.device, progress=None,
) -> tuple[dict[str, Any], dict[str, Any], dict[str, torch.Tensor]]:
    """The latent attack on parent and candidate from the same starts: (parent summary,
    candidate summary, the first attacked images of each for the report)."""
    summaries, images = [], {}
    for i, (name, generator) in enumerate((("parent", parent), ("candidate", candidate))):
        result = latent_attack(
            generator, omega, device=device, keep_images=ATTACK_IMAGES,
            progress=(lambda done, total, i=i, name=name: progress(0.5 * (i + done / total), {"model": name, "attack": True}))
            if progress else None,
        )
        if "images" in result:
            images[name] = result.pop("images")
        summaries.append(result)
    return summaries[0], summaries[1], images


def evaluate_gates(spec: ForgetSpec, before: dict[str, Any], after: dict[str, Any], parity: float) -> list[Gate]:
    g = spec.gates
    gates = []
    if "invalidity" in after:
        gates.append(Gate(name="invalidity", value=after["invalidity"], limit=g.max_invalidity,
                          passed=after["invalidity"] <= g.max_invalidity,
                          detail=f"on {after['samples']} fresh samples"))
    # Against the parent filtered by the same checks: the unfiltered parent still makes the
    # samples being forgotten, which the retained-data reference lacks, so its FID is inflated
    # and any redaction would look like an improvement.
    baseline, against = (before["filtered_fid"], "parent filtered by the forget checks") \
        if before.get("filtered_fid") is not None else (before["fid"], "parent")
    increase = after["fid"] - baseline
    gates.append(Gate(name="fid_increase", value=increase, limit=g.max_fid_increase,
                      passed=increase <= g.max_fid_increase,
                      detail=f"against the {against}; extractor {after['extractor']}"))
    excluded = forgotten_classes(before)
    ratio = min_share_ratio(before["class_shares"], after["class_shares"], excluded)
    gates.append(Gate(name="class_balance", value=ratio if ratio != float("inf") else None,
                      limit=g.min_class_share_ratio, passed=ratio >= g.min_class_share_ratio,
                      detail=f"smallest retained-class share ratio; forgotten classes {sorted(excluded)}"))
    if g.max_attack_invalidity is not None:
        worst = after["attack"]["worst_case"]
        gates.append(Gate(name="attack_invalidity", value=worst, limit=g.max_attack_invalidity,
                          passed=worst <= g.max_attack_invalidity,
                          detail=f"worst case of latent gradient ascent from {after['attack']['starts']} starts "
                                 "and truncation extremes"))
    gates.append(Gate(name="onnx_parity", value=parity, limit=1e-4, passed=parity <= 1e-4,
                      detail="max abs difference, PyTorch vs ONNX Runtime, 256 latents"))
    return gates


def _mean_redaction_scores(parent: GAN, candidate: GAN, retained, omega_train) -> dict[str, float | None]:
    """Mean RS(x) = D0(x) - D'(x) (Kong & Chaudhuri IV-C) over the training samples inside
    and outside Omega: the forgotten ones should score clearly higher."""
    def mean(images):
        if len(images) == 0:
            return None
        return float(redaction_score(parent.discriminator, candidate.discriminator, images).mean())

    return {"omega_mean": mean(omega_train), "retained_mean": mean(retained)}


def run_redaction(
    spec: ForgetSpec | str | Path | dict,
    *,
    registry: Registry | None = None,
    parent: str | None = None,
    uploads_dir: Path | None = None,
    report_dir: Path | None = None,
    callbacks: Callbacks | None = None,
    device: torch.device | None = None,
    activate: bool = True,
    inception_weights: Path | None = None,
    model: str | None = None,
    job_id: str | None = None,
) -> JobOutcome:
    """Run ``spec`` against ``parent`` (or the active version of ``model``): train, judge
    by the gates, export, store the version and activate it if promoted and ``activate``.
    ``job_id`` is recorded in the version's manifest, so a crash between storing and
    activating can be traced back to its job."""
    started = time.monotonic()
    spec = load_spec(spec)
    registry = registry or Registry()
    callbacks = callbacks or Callbacks()
    device = device or pick_device()

    # Everything refusable is refused here, before any training.
    parent_manifest = resolve_parent(registry, parent, model)
    method = _method_for(spec, parent_manifest)
    domain = load_domain(registry, parent_manifest, device=device, inception_weights=inception_weights)
    omega = prepare_redaction_set(spec, registry, domain, uploads_dir, marks_from=parent_manifest.version)
    if parent_manifest.image_to_image:
        from unlearning.jobs_i2i import run_i2i_redaction

        return run_i2i_redaction(spec, registry, parent_manifest, omega, domain, uploads_dir=uploads_dir,
                                 report_dir=report_dir, callbacks=callbacks, activate=activate, started=started,
                                 job_id=job_id)
    _require_judge_for_attack_gate(spec, omega)
    # Select epochs at half the gate's limit: the monitor's 2,000 samples are noisy, and an
    # epoch chosen right at the limit fails the gate's fresh samples by chance.
    hp = hyperparameters(method, spec.hyperparameters, target_invalidity=SELECTION_MARGIN * spec.gates.max_invalidity)
    gan = GAN(registry.load_generator(parent_manifest.version),
              registry.load_discriminator(parent_manifest.version) if _has_discriminator(parent_manifest) else None)
    retained, omega_train = omega.training_split(domain.train.images.to(device))
    reference = domain.reference(retained)

    def quality(generator: torch.nn.Module) -> dict[str, Any]:
        fid = FID(domain.extractor, reference, domain.extractor_name)
        return {"fid": evaluate(generator, PROBE_SAMPLES, {"fid": fid}, seed=GATE_SEED + 1, device=device)["fid"]["fid"]}

    callbacks.progress(0.0, {"stage": "training", "method": method})
    # data-free methods (Adapt-then-Unlearn) never see the training images
    train_images = None if method in DATA_FREE_METHODS else domain.train.images
    result: MethodResult = run_method(
        method, gan, omega, train_images, hp,
        callbacks=_stage(callbacks, "training", 0.0, 0.8), device=device, quality=quality,
    )

    callbacks.check_cancelled()
    validating = _stage(callbacks, "validating", 0.8, 1.0)
    n = spec.gates.eval_samples
    before = judge(gan.generator, domain, n=n, seed=GATE_SEED, omega=omega, reference=reference, filtered=True,
                   progress=lambda done, total: validating.progress(0.4 * done / total, {"model": "parent"}))
    after = judge(result.gan.generator, domain, n=n, seed=GATE_SEED, omega=omega, reference=reference,
                  progress=lambda done, total: validating.progress(0.4 + 0.4 * done / total, {"model": "candidate"}))
    attack_images: dict[str, torch.Tensor] = {}
    if omega.has_judge:
        callbacks.check_cancelled()
        before["attack"], after["attack"], attack_images = attack_check(
            gan.generator, result.gan.generator, omega, device, _stage(validating, "attack", 0.8, 1.0).progress,
        )
    if gan.discriminator is not None and result.gan.discriminator is not None:
        result.stats["redaction_score"] = _mean_redaction_scores(gan, result.gan, retained, omega_train)
    callbacks.check_cancelled()

    with tempfile.TemporaryDirectory() as scratch:
        # Export and check parity before the version exists: a failed export leaves nothing.
        onnx_path = export_generator_onnx(result.gan.generator, Path(scratch) / "generator.onnx")
        parity = check_onnx_parity(result.gan.generator, onnx_path, atol=float("inf"))
        gates = evaluate_gates(spec, before, after, parity)
        components = {"generator": result.gan.generator}
        if result.gan.discriminator is not None:
            components["discriminator"] = result.gan.discriminator
        metrics = {"before": before, "after": after, "method": method, "stats": result.stats,
                   "history": result.history, "gates": [g.model_dump() for g in gates]}
        manifest, status, reason, activated = store_version(
            registry, parent_manifest, spec, components, onnx_path, gates, metrics, activate=activate,
            job_id=job_id,
        )
    outcome = JobOutcome(
        version=manifest.version, parent=parent_manifest.version, status=status, activated=activated,
        method=method, reason=reason, gates=gates, before=before, after=after, history=result.history,
        stats=result.stats, duration_s=time.monotonic() - started,
    )
    if report_dir is not None:
        from unlearning.report import write_report

        outcome.report_dir = str(write_report(outcome, registry, report_dir, gan.generator, result.gan.generator,
                                                   attack_images=attack_images))
    callbacks.progress(1.0, {"stage": "done", "status": status})
    return outcome

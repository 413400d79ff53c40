"""The one path a forget request takes, for the CLI and the service alike, whatever the
model:

    spec -> parent -> method -> domain -> Omega (and its mirror by the judge)
         -> train -> judge parent and candidate -> ONNX export + parity -> gates
         -> registry (promoted or rejected) -> active pointer -> report

The steps are written once here; what differs between a generator and an image-to-image
model (how it is trained, judged, exported, gated and reported) comes from its family
(``generator.py``, ``image_to_image.py``). Everything that can be refused (spec, parent,
classifiers, uploads, hyperparameters) is refused before training starts, and the
registry only ever sees a complete version.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import torch

from unlearning.domains.loaded import load_domain
from unlearning.errors import LetheError, SpecError
from unlearning.jobs.context import JobContext, JobFamily
from unlearning.jobs.gates import resolve_gates
from unlearning.jobs.generator import GeneratorJob
from unlearning.jobs.image_to_image import ImageToImageJob
from unlearning.jobs.outcome import JobOutcome
from unlearning.jobs.redaction_set import prepare_redaction_set
from unlearning.jobs.storage import store_version
from unlearning.methods import Callbacks
from unlearning.registry import Registry, VersionManifest
from unlearning.runtime import DEFAULT_MODEL, pick_device
from unlearning.spec import ForgetSpec, load_spec
from unlearning.spec.checks import RedactionSet

# A job reads a seeded sample of at most this many training images: Omega's split by the
# guide, the methods' real batches and negatives, the gate's FID reference and the report's
# redaction scores all come from it. On Fashion-MNIST's 60,000 the guide's split and the
# reference alone took half of a short job; the digits (1,437) are below it.
JOB_TRAINING_IMAGES = 10_000
TRAINING_SAMPLE_SEED = 20_240_602


def family_of(parent: VersionManifest) -> JobFamily:
    return ImageToImageJob() if parent.image_to_image else GeneratorJob()


def resolve_parent(registry: Registry, parent: str | None, model: str | None = None) -> VersionManifest:
    """``parent`` if given (it must belong to ``model`` when both are), else ``model``'s active
    version; with neither, the home's only served model, or the default model (digits) among several."""
    model = model or (None if parent else _default_model(registry))
    version = parent or registry.active(model)
    if version is None:
        raise SpecError(f"no active version of '{model}': run `lethe bootstrap` first or pass --from")
    manifest = registry.verify(version)
    if model is not None and manifest.model != model:
        raise SpecError(f"version {version!r} belongs to model {manifest.model!r}, not {model!r}")
    return manifest


def _default_model(registry: Registry) -> str:
    served = [name for name in registry.models() if registry.active(name) is not None]
    if len(served) == 1 or DEFAULT_MODEL in served or not served:
        return served[0] if len(served) == 1 else DEFAULT_MODEL
    raise SpecError(f"this home serves several models ({', '.join(served)}): pass --from VERSION or --model NAME")


@torch.no_grad()
def probe_checks(omega: RedactionSet, probe: torch.Tensor) -> None:
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


def _context(
    spec: ForgetSpec, registry: Registry, parent: str | None, model: str | None, uploads_dir: Path | None,
    device: torch.device, callbacks: Callbacks, inception_weights: Path | None = None,
) -> tuple[JobContext, JobFamily]:
    parent_manifest = resolve_parent(registry, parent, model)
    family = family_of(parent_manifest)
    method = family.choose_method(spec, parent_manifest)
    domain = load_domain(registry, parent_manifest, device=device, inception_weights=inception_weights)
    domain = domain.with_training_sample(JOB_TRAINING_IMAGES, TRAINING_SAMPLE_SEED)
    sets = prepare_redaction_set(spec, registry, domain, uploads_dir, marks_from=parent_manifest.version)
    ctx = JobContext(resolve_gates(sets.spec, method, sets.invalidity_floor), registry, parent_manifest, method,
                     domain, sets.omega, sets.judged, uploads_dir, device, callbacks, sets.invalidity_floor)
    return ctx, family


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
    upload, classifier and label name, the hyperparameters, and every check run once on a
    few of the parent's samples. Returns the parsed spec (as written), the method and the
    parent's manifest."""
    spec = load_spec(spec)
    ctx, family = _context(spec, registry, parent, model, uploads_dir, device or torch.device("cpu"), Callbacks())
    family.preflight(ctx)
    return spec, ctx.method, ctx.parent


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
    written = load_spec(spec)
    registry = registry or Registry()
    callbacks = callbacks or Callbacks()
    ctx, family = _context(written, registry, parent, model, uploads_dir, device or pick_device(), callbacks,
                           inception_weights)

    trained = family.train(ctx)
    callbacks.check_cancelled()
    judged = family.judge(ctx, trained)
    callbacks.check_cancelled()
    with tempfile.TemporaryDirectory() as scratch:
        # Export and check parity before the version exists: a failed export leaves nothing.
        onnx_path = Path(scratch) / family.onnx_name
        parity = family.export(trained, onnx_path, judged)
        gates = family.gates(ctx.spec, judged, parity)
        metrics = {"before": judged.before, "after": judged.after, "method": ctx.method, "stats": trained.stats,
                   "history": trained.history, "gates": [g.model_dump() for g in gates]}
        # the spec as written (label names and all), with the limits the method filled in
        stored = written.model_copy(update={"gates": ctx.spec.gates})
        manifest, status, reason, activated = store_version(
            registry, ctx.parent, stored, trained.edited, onnx_path, gates, metrics, activate=activate,
            job_id=job_id,
        )
    outcome = JobOutcome(
        version=manifest.version, parent=ctx.parent.version, status=status, activated=activated,
        method=ctx.method, reason=reason, gates=gates, before=judged.before, after=judged.after,
        history=trained.history, stats=trained.stats, duration_s=time.monotonic() - started,
    )
    if report_dir is not None:
        outcome.report_dir = str(family.report(outcome, ctx, trained, judged, report_dir))
    callbacks.progress(1.0, {"stage": "done", "status": status})
    return outcome

"""The job steps for a generator (DCGAN, VAE decoder, or any family that samples z -> image):
a method edits it (and its discriminator, if it has one), the parent and the candidate
are judged on the same latents, the attacks (gradient and inversion) run on both, and the candidate is
exported to ONNX (``generator.onnx``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from unlearning.export import check_onnx_parity, export_generator_onnx
from unlearning.evaluation import judge
from unlearning.jobs.attacks import attack_check
from unlearning.jobs.context import JobContext, Judged, Trained
from unlearning.jobs.gates import generator_gates
from unlearning.jobs.outcome import Gate, JobOutcome
from unlearning.jobs.stages import stage
from unlearning.methods import (
    DATA_FREE_METHODS, GAN, MethodResult, check_fits_model, choose_method, hyperparameters, run_method,
)
from unlearning.metrics import (
    FID, AttackSettings, ClassShares, InversionSettings, Filtered, evaluate, forgotten_classes, min_share_ratio,
    redaction_score, reference_stats, retained_shares,
)
from unlearning.registry import VersionManifest
from unlearning.runtime import latents, seeded_sample
from unlearning.spec import ForgetSpec

GATE_SEED = 20_240_601  # parent and candidate are judged on the same latents
PROBE_SAMPLES = 2000
# Caps, below the job's training sample (pipeline.JOB_TRAINING_IMAGES), on what a job
# embeds of it beyond the gate's FID reference (the digits are below both):
PROBE_REFERENCE_IMAGES = 5000  # checkpoint selection's FID reference, against 2,000 samples
REDACTION_SCORE_IMAGES = 5000  # the mean redaction score, inside and outside Omega each
SELECTION_MARGIN = 0.5  # epochs are selected at half the gate's invalidity limit


def has_discriminator(manifest: VersionManifest) -> bool:
    return "discriminator.safetensors" in manifest.files


def balance_target(gate: float) -> float:
    """The class balance an epoch needs to be selected: a quarter of the way from the gate's
    limit to 1, because the probe (2,000 samples, the guide's classes) is noisier than the
    gate (the judge's, on ``eval_samples``)."""
    return gate + (1.0 - gate) / 4


class GeneratorJob:
    onnx_name = "generator.onnx"

    def choose_method(self, spec: ForgetSpec, parent: VersionManifest) -> str:
        method = choose_method(spec, image_to_image=False, model=parent.model)
        check_fits_model(method, has_discriminator(parent), parent.model)
        return method

    def preflight(self, ctx: JobContext) -> None:
        from unlearning.jobs.pipeline import probe_checks

        _require_judge_for_attack_gate(ctx)
        hyperparameters(ctx.method, ctx.spec.hyperparameters)
        generator = ctx.registry.load_generator(ctx.parent.version).to(ctx.device).eval()
        with torch.no_grad():
            probe_checks(ctx.omega, generator(latents(8, generator.latent_dim, 0).to(ctx.device)))

    def train(self, ctx: JobContext) -> Trained:
        _require_judge_for_attack_gate(ctx)
        spec, domain, device = ctx.spec, ctx.domain, ctx.device
        hp = hyperparameters(ctx.method, spec.hyperparameters,
                             target_invalidity=SELECTION_MARGIN * spec.gates.max_invalidity)
        registry, parent = ctx.registry, ctx.parent
        gan = GAN(registry.load_generator(parent.version),
                  registry.load_discriminator(parent.version) if has_discriminator(parent) else None)
        ctx.callbacks.progress(0.0, {"stage": "training", "method": ctx.method})
        # data-free methods (Adapt-then-Unlearn, feedback) never see the training images
        train_images = None if ctx.method in DATA_FREE_METHODS else domain.train.images
        result: MethodResult = run_method(
            ctx.method, gan, ctx.omega, train_images, hp,
            callbacks=stage(ctx.callbacks, "training", 0.0, 0.8), device=device,
            quality=selection_probe(ctx, gan.generator),
        )
        edited = {"generator": result.gan.generator}
        if result.gan.discriminator is not None:
            edited["discriminator"] = result.gan.discriminator
        parent_parts = {"generator": gan.generator}
        if gan.discriminator is not None:
            parent_parts["discriminator"] = gan.discriminator
        return Trained(parent_parts, edited, result.history, result.stats)

    def judge(self, ctx: JobContext, trained: Trained) -> Judged:
        domain, omega, device = ctx.domain, ctx.omega, ctx.device
        validating = stage(ctx.callbacks, "validating", 0.8, 1.0)
        retained, omega_train = omega.training_split(domain.train.images.to(device))
        reference = domain.reference(retained)
        n = ctx.spec.gates.eval_samples
        parent, candidate = trained.parent["generator"], trained.edited["generator"]
        before = judge(parent, domain, n=n, seed=GATE_SEED, omega=omega, judged=ctx.judged, reference=reference,
                       filtered=True, progress=lambda done, total: validating.progress(0.4 * done / total,
                                                                                       {"model": "parent"}))
        after = judge(candidate, domain, n=n, seed=GATE_SEED, omega=omega, judged=ctx.judged, reference=reference,
                      progress=lambda done, total: validating.progress(0.4 + 0.4 * done / total,
                                                                       {"model": "candidate"}))
        if omega.judge is not None:  # the floor the default invalidity limit respects (gates.py)
            before["invalidity_floor"] = ctx.invalidity_floor
        pictures: dict[str, Any] = {}
        if omega.has_judge and ctx.spec.gates.attack_starts:  # the worst case: gradient and inversion (jobs/attacks.py)
            ctx.callbacks.check_cancelled()
            before["attack"], after["attack"], pictures = attack_check(
                ctx, parent, candidate, stage(validating, "attack", 0.8, 1.0).progress,
                gradient=AttackSettings(starts=ctx.spec.gates.attack_starts),
                inversion=InversionSettings(targets=ctx.spec.gates.inversion_targets)
                if ctx.spec.gates.inversion_targets else None)
        if "discriminator" in trained.parent and "discriminator" in trained.edited:
            trained.stats["redaction_score"] = _mean_redaction_scores(
                trained.parent["discriminator"], trained.edited["discriminator"], retained, omega_train)
        return Judged(before, after, pictures)

    def export(self, trained: Trained, path: Path, judged: Judged) -> float:
        generator = trained.edited["generator"]
        export_generator_onnx(generator, path)
        return check_onnx_parity(generator, path, atol=float("inf"))

    def gates(self, spec: ForgetSpec, judged: Judged, parity: float) -> list[Gate]:
        return generator_gates(spec, judged.before, judged.after, parity)

    def report(self, outcome: JobOutcome, ctx: JobContext, trained: Trained, judged: Judged,
               report_dir: Path) -> Path:
        from unlearning.report import write_report

        return write_report(outcome, ctx.registry, report_dir, trained.parent["generator"],
                            trained.edited["generator"], attack_images=judged.pictures)


def selection_probe(ctx: JobContext, parent: torch.nn.Module):
    """What a method's checkpoint selection may look at after each epoch: FID on 2,000
    fixed latents and the smallest retained-class share ratio against the parent's samples
    outside Omega (as the gate), both in the *guide's* feature space and classes (the judge
    stays unseen by every method)."""
    domain, device = ctx.domain, ctx.device
    features = domain.guide_features()
    retained, _ = ctx.omega.training_split(domain.train.images.to(device))
    name = f"classifier:{domain.guide_name}"
    reference = reference_stats(features, retained, extractor_name=name, max_images=PROBE_REFERENCE_IMAGES)
    seed = GATE_SEED + 1
    target = balance_target(ctx.spec.gates.min_class_share_ratio)
    probes: dict[str, Any] = {"shares": ClassShares(domain.guide, domain.num_classes)}
    if ctx.omega.has_judge:
        probes["omega"] = Filtered(ClassShares(domain.guide, domain.num_classes), ctx.omega.in_omega)
    parent_probe = evaluate(parent.to(device), PROBE_SAMPLES, probes, seed=seed, device=device)
    counts = parent_probe.get("omega", {}).get("counts") or [0] * domain.num_classes
    parent = {"samples": PROBE_SAMPLES, "class_shares": parent_probe["shares"]["shares"], "omega_class_counts": counts}
    forgotten, parent_shares = forgotten_classes(parent), retained_shares(parent)

    def quality(generator: torch.nn.Module) -> dict[str, Any]:
        measured = evaluate(generator, PROBE_SAMPLES, {
            "fid": FID(features, reference, name),
            "shares": ClassShares(domain.guide, domain.num_classes),
        }, seed=seed, device=device)
        balance = min_share_ratio(parent_shares, measured["shares"]["shares"], forgotten)
        return {"fid": measured["fid"]["fid"], "class_balance": balance, "balanced": balance >= target}

    return quality


def _mean_redaction_scores(parent_d, candidate_d, retained, omega_train) -> dict[str, float | None]:
    """Mean RS(x) = D0(x) - D'(x) (Kong & Chaudhuri IV-C) over the training samples inside
    and outside Omega (a seeded sample of at most ``REDACTION_SCORE_IMAGES`` of each): the
    forgotten ones should score clearly higher."""
    def mean(images):
        if len(images) == 0:
            return None
        images = seeded_sample(images, REDACTION_SCORE_IMAGES, GATE_SEED)
        return float(redaction_score(parent_d, candidate_d, images).mean())

    return {"omega_mean": mean(omega_train), "retained_mean": mean(retained)}


def _require_judge_for_attack_gate(ctx: JobContext) -> None:
    from unlearning.errors import SpecError

    if ctx.spec.gates.max_attack_invalidity is not None and not ctx.spec.gates.attack_starts:
        raise SpecError("gates.max_attack_invalidity needs the attack: attack_starts must be at least 1")
    if ctx.spec.gates.max_attack_invalidity is not None and not ctx.omega.has_judge:
        raise SpecError("gates.max_attack_invalidity: the attack check needs a validity, classifier or "
                        "data set to judge the images it finds (feedback marks cannot judge new images)")

"""The job steps for an image-to-image model (Li et al.): the encoder is unlearned on the
forget set (the training images the spec's checks put in Omega, plus uploads) against a
retain set (the other training images, uploaded ``retain_files``, or the proxy set); retain
and forget restorations are judged separately on held-out inputs as well as the forget
images themselves, and the candidate is exported to ONNX (``inpainter.onnx``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from unlearning.data.files import load_images
from unlearning.domains.loaded import Domain
from unlearning.errors import SpecError
from unlearning.evaluation import judge_inpainter
from unlearning.export import check_inpainter_parity, export_inpainter_onnx
from unlearning.jobs.context import JobContext, Judged, Trained
from unlearning.jobs.gates import image_to_image_gates
from unlearning.jobs.outcome import Gate, JobOutcome
from unlearning.jobs.stages import stage
from unlearning.methods import choose_method, hyperparameters
from unlearning.methods.i2i import I2IHyperparameters, unlearn_encoder
from unlearning.registry import INPAINTER, VersionManifest
from unlearning.runtime import inference_rows
from unlearning.spec import ForgetSpec, retain_files
from unlearning.spec.checks import RedactionSet, matches_any

METHOD = "i2i-encoder"
# Training stops once the forget images' restorations reach this multiple of the gate's
# min_forget_fid_ratio, measured on the forget set in the guide's features. The gate measures
# held-out forget inputs too, in the judge's features, which move later: on five digits
# inpainters a guide ratio of 20 gave judge ratios of 4.8 to 25 (bench/seeds.py).
FORGET_SELECTION_MARGIN = 7.0


def forget_mask(omega: RedactionSet, images: torch.Tensor) -> torch.Tensor:
    """Which real images belong to the forget set: in Omega by the spec's checks, equal to
    an upload, or (data-only specs) nearer the uploads than the kept data."""
    mask = omega.omega_mask(images)  # the rules, and exact matches of uploads
    if omega.judge is not None and not omega.judge_splits_training:  # else omega_mask asked it already
        mask |= torch.cat([omega.judge(part).to(mask.device) for part in images.split(inference_rows(images.shape))])
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


class ImageToImageJob:
    onnx_name = f"{INPAINTER}.onnx"

    def choose_method(self, spec: ForgetSpec, parent: VersionManifest) -> str:
        return choose_method(spec, image_to_image=True, model=parent.model)

    def preflight(self, ctx: JobContext) -> None:
        from unlearning.jobs.pipeline import probe_checks

        probe_checks(ctx.omega, ctx.domain.train.images[:8].to(ctx.device))
        hyperparameters(METHOD, ctx.spec.hyperparameters)
        _retain_uploads(ctx.spec, ctx.uploads_dir, ctx.domain)
        forget_and_retain(ctx.omega, ctx.domain)

    def train(self, ctx: JobContext) -> Trained:
        spec, domain = ctx.spec, ctx.domain
        hp: I2IHyperparameters = hyperparameters(  # type: ignore[assignment]
            METHOD, spec.hyperparameters,
            target_forget_fid_ratio=FORGET_SELECTION_MARGIN * spec.gates.min_forget_fid_ratio)
        sets = forget_and_retain(ctx.omega, domain)
        uploaded_retain = _retain_uploads(spec, ctx.uploads_dir, domain)
        retain = None if hp.retain == "proxy" else (uploaded_retain if uploaded_retain is not None else sets["retain"])
        model = ctx.registry.load_inpainter(ctx.parent.version)
        ctx.callbacks.progress(0.0, {"stage": "training", "method": METHOD})
        edited, history, stats = unlearn_encoder(
            model, sets["forget"], retain, hp, features=domain.guide_features(),
            callbacks=stage(ctx.callbacks, "training", 0.0, 0.8), device=domain.device,
        )
        if uploaded_retain is not None and hp.retain == "data":
            stats["retain"] = "uploaded"
        stats.update({key: sets[key] for key in ("forget_from_training", "forget_uploads_outside_training")})
        inputs = {"forget": sets["eval_forget"], "retain": sets["eval_retain"]}
        return Trained({INPAINTER: model}, {INPAINTER: edited}, history, stats, {"inputs": inputs})

    def judge(self, ctx: JobContext, trained: Trained) -> Judged:
        ctx.callbacks.progress(0.8, {"stage": "validating"})
        inputs = trained.extras["inputs"]
        before = judge_inpainter(trained.parent[INPAINTER], ctx.domain, inputs, ctx.omega, ctx.judged)
        after = judge_inpainter(trained.edited[INPAINTER], ctx.domain, inputs, ctx.omega, ctx.judged)
        return Judged(before, after, {"inputs": inputs})

    def export(self, trained: Trained, path: Path, judged: Judged) -> float:
        edited = trained.edited[INPAINTER]
        export_inpainter_onnx(edited, path)
        return check_inpainter_parity(edited, path, torch.cat(list(judged.pictures["inputs"].values())),
                                      atol=float("inf"))

    def gates(self, spec: ForgetSpec, judged: Judged, parity: float) -> list[Gate]:
        return image_to_image_gates(spec, judged.before, judged.after, parity)

    def report(self, outcome: JobOutcome, ctx: JobContext, trained: Trained, judged: Judged,
               report_dir: Path) -> Path:
        from unlearning.report import write_i2i_report

        return write_i2i_report(outcome, report_dir, trained.parent[INPAINTER], trained.edited[INPAINTER],
                                judged.pictures["inputs"])

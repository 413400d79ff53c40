"""A job's worst-case check: the gradient (latent) attack and the inversion attack, on the
parent and the candidate from the same starts, both judged by the verdict
(``unlearning.metrics.verdict``): the domain's judge, an exact rule, or a nearest
neighbour in the judge's features; never the checks the gradient attack climbs.

``after["attack"]`` keeps the gradient attack's numbers at its top level (as before),
adds ``inversion`` and takes ``worst_case`` as the worst of the two (the
``max_attack_invalidity`` gate reads it)."""

from __future__ import annotations

from typing import Any

import torch

from unlearning.domains.loaded import Domain
from unlearning.jobs.context import JobContext
from unlearning.marks import regenerate_marked
from unlearning.metrics.attack import AttackSettings, latent_attack
from unlearning.metrics.inversion import InversionSettings, inversion_attack
from unlearning.metrics.verdict import Verdict, build_verdict
from unlearning.spec import ForgetSpec
from unlearning.spec.checks import RedactionSet

ATTACK_IMAGES = 64  # attacked samples shown in the report
INVERSION_IMAGES = 16  # targets shown beside their reconstructions
TARGET_SEED = 20_240_605


def verdict_for(spec: ForgetSpec, omega: RedactionSet, judged: RedactionSet | None, domain: Domain,
                marked_by: torch.nn.Module | None) -> tuple[Verdict, tuple[torch.Tensor, torch.Tensor] | None]:
    """The verdict for a spec (labels resolved) and, when it has feedback sets, the marked
    and unmarked samples regenerated from ``marked_by`` (the generator the person sampled)."""
    device = domain.device
    marks = regenerate_marked(marked_by, omega.feedback, device) if omega.feedback and marked_by is not None else None
    retained = None
    if omega.negatives is not None:
        retained, _ = omega.training_split(domain.train.images.to(device))
    verdict = build_verdict(spec, omega, judged, judge=domain.judge, judge_name=domain.judge_name,
                            guide_name=domain.guide_name, retained=retained, marks=marks)
    return verdict, marks


@torch.no_grad()
def inversion_targets(verdict: Verdict, held_out: torch.Tensor, negatives: torch.Tensor | None,
                      marked: torch.Tensor | None, n: int, seed: int = TARGET_SEED) -> torch.Tensor:
    """Up to ``n`` real examples of what was forgotten, drawn (seeded) from the held-out
    images the verdict puts in Omega, the uploaded negatives and the marked samples."""
    pool = [held_out[verdict.in_omega(held_out)]]
    pool += [x.to(held_out.device) for x in (negatives, marked) if x is not None and len(x)]
    images = torch.cat(pool)
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))
    return images[order[:n]]


def run_attacks(
    generators: dict[str, torch.nn.Module], spec: ForgetSpec, omega: RedactionSet, judged: RedactionSet | None,
    domain: Domain, *, marked_by: torch.nn.Module | None = None, progress=None,
    gradient: AttackSettings | None = None, inversion: InversionSettings | None = None, invert: bool = True,
) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """Both attacks (``invert`` False: the gradient attack only) on each of ``generators``
    (same starts, same targets): ({name: summary}, pictures for the report: {name: gradient
    attack's final images, "inversion": {"targets", name: reconstructions}})."""
    device = domain.device
    gradient, inversion = gradient or AttackSettings(), inversion or InversionSettings()
    verdict, marks = verdict_for(spec, omega, judged, domain, marked_by)
    targets = None
    summaries: dict[str, dict[str, Any]] = {}
    pictures: dict[str, Any] = {}
    if invert:
        targets = inversion_targets(verdict, domain.held_out.images.to(device), omega.negatives,
                                    marks[0] if marks else None, inversion.targets)
        pictures["inversion"] = {"targets": targets[:INVERSION_IMAGES].cpu()}
    share = 1.0 / len(generators)
    for i, (name, generator) in enumerate(generators.items()):
        def report(attack: str, done: int, total: int, i=i, name=name) -> None:
            if progress:  # each model's share: the gradient attack, then the inversion
                half = 0.5 if targets is not None else 1.0
                offset = 0.0 if attack == "gradient" else 0.5
                progress(share * (i + offset + half * done / total), {"model": name, "attack": attack})

        summary = latent_attack(generator, omega, gradient, verdict=verdict, device=device, keep_images=ATTACK_IMAGES,
                                progress=lambda done, total: report("gradient", done, total))
        if "images" in summary:
            pictures[name] = summary.pop("images")
        summary["gradient_worst_case"] = summary["worst_case"]
        if targets is None:
            summaries[name] = summary
            continue
        inverted = inversion_attack(generator, targets, verdict, inversion, omega=omega, device=device,
                                    keep_images=INVERSION_IMAGES,
                                    progress=lambda done, total: report("inversion", done, total))
        if "images" in inverted:
            pictures["inversion"][name] = inverted.pop("images")["reconstructions"]
        summary["inversion"] = inverted
        summary["worst_case"] = max(summary["gradient_worst_case"], inverted.get("attack_invalidity", 0.0))
        summaries[name] = summary
    return summaries, pictures


def attack_check(ctx: JobContext, parent: torch.nn.Module, candidate: torch.nn.Module, progress=None,
                 gradient: AttackSettings | None = None, inversion: InversionSettings | None = None):
    """Both attacks on a job's parent and candidate (``inversion`` None: the gradient attack
    only): (parent summary, candidate summary, pictures for the report)."""
    summaries, pictures = run_attacks({"parent": parent, "candidate": candidate}, ctx.spec, ctx.omega, ctx.judged,
                                      ctx.domain, marked_by=parent, progress=progress, gradient=gradient,
                                      inversion=inversion, invert=inversion is not None)
    return summaries["parent"], summaries["candidate"], pictures

"""Judging a generator of a registered model: invalidity against a redaction set (by the
spec's own checks, and by the domain's judge where the spec's checks are label-based), IS
and class shares from the judge, FID against the retained training data (the judge's
features by default, Inception when a weights file is given), and the same numbers for the
model "filtered" by the forget checks (rejection sampling: the quality a redaction should
approach). Gates, ``lethe eval``, bootstrap, tests and the benchmark all call this.

Every number says what made it (``judged_by``): the guide is what methods train against,
so only the judge's numbers are independent of the method."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from unlearning.domains.loaded import Domain, load_domain
from unlearning.metrics import (
    FID,
    ClassShares,
    FeatureStats,
    Filtered,
    InceptionScore,
    Invalidity,
    evaluate,
)
from unlearning.runtime import inference_rows
from unlearning.spec.checks import RedactionSet

__all__ = ["Domain", "load_domain", "judge", "judge_inpainter"]


def judge(
    generator: nn.Module,
    domain: Domain,
    *,
    n: int,
    seed: int,
    omega: RedactionSet | None = None,
    judged: RedactionSet | None = None,
    reference: FeatureStats | None = None,
    filtered: bool = False,
    progress=None,
) -> dict[str, Any]:
    """One pass over ``n`` samples (seeded) feeding every metric.

    Returns flat numbers: ``invalidity`` (by ``omega``, the spec's checks, if they judge),
    ``judge_invalidity`` (by ``judged``, the same checks asked of the domain's judge),
    ``inception_score`` and ``class_shares`` (the judge's), ``fid`` (against ``reference``,
    default: the training data outside omega), ``omega_class_counts`` (which of the judge's
    classes the invalid samples fall in), and with ``filtered`` the ``filtered_fid`` /
    ``filtered_kept`` of the stream the judge's mirror (else ``omega``) calls valid."""
    checks = omega is not None and omega.has_judge
    if reference is None:
        if omega is None and domain.train_stats is not None:
            reference = domain.train_stats
        else:
            kept = domain.train.images if omega is None else omega.training_split(domain.train.images.to(domain.device))[0]
            reference = domain.reference(kept)
    metrics: dict[str, Any] = {
        "fid": FID(domain.extractor, reference, domain.extractor_name),
        "is": InceptionScore(domain.judge),
        "shares": ClassShares(domain.judge, domain.num_classes),
    }
    filter_by = judged if judged is not None else (omega if checks else None)
    if checks:
        metrics["invalidity"] = Invalidity(omega.in_omega)
        metrics["omega_shares"] = Filtered(ClassShares(domain.judge, domain.num_classes), omega.in_omega)
    if judged is not None:
        metrics["judge_invalidity"] = Invalidity(judged.in_omega)
    if filtered and filter_by is not None:
        metrics["filtered"] = Filtered(
            FID(domain.extractor, reference, domain.extractor_name), lambda x: ~filter_by.in_omega(x)
        )
    raw = evaluate(generator, n, metrics, seed=seed, device=domain.device, progress=progress)
    out: dict[str, Any] = {
        "samples": n,
        "seed": seed,
        "extractor": domain.extractor_name,
        "fid": raw["fid"]["fid"],
        "inception_score": raw["is"]["inception_score"],
        "class_shares": raw["shares"]["shares"],
        "judged_by": {"inception_score": domain.judge_name, "class_shares": domain.judge_name,
                      "fid": domain.extractor_name},
    }
    if checks:
        out["invalidity"] = raw["invalidity"]["invalidity"]
        out["invalid_count"] = raw["invalidity"]["count"]
        out["omega_class_counts"] = raw["omega_shares"]["counts"] if raw["omega_shares"]["kept"] else [0] * domain.num_classes
        out["judged_by"]["invalidity"] = "the spec's checks"
    if judged is not None:
        out["judge_invalidity"] = raw["judge_invalidity"]["invalidity"]
        out["judged_by"]["judge_invalidity"] = domain.judge_name
    if "filtered" in raw:
        out["filtered_fid"] = raw["filtered"].get("fid")
        out["filtered_kept"] = raw["filtered"]["kept"]
        out["judged_by"]["filtered_fid"] = domain.judge_name if judged is not None else "the spec's checks"
    return out


@torch.no_grad()
def judge_inpainter(
    inpainter: nn.Module, domain: Domain, inputs: dict[str, torch.Tensor], omega: RedactionSet | None = None,
    judged: RedactionSet | None = None,
) -> dict[str, Any]:
    """An image-to-image model on named input sets (Li et al. judge retain and forget
    separately): per set, the FID of the restorations h(T(x)) against the real x, their mean
    absolute error, and with a judging ``omega`` the share of restorations it calls invalid
    (and with ``judged``, the judge's mirror of it)."""
    inpainter = inpainter.to(domain.device).eval()
    out: dict[str, Any] = {"extractor": domain.extractor_name}
    for name, images in inputs.items():
        images = images.to(domain.device)
        restored = torch.cat([inpainter.restore(part) for part in images.split(inference_rows(images.shape))])
        fid = FID(domain.extractor, domain.reference(images), domain.extractor_name)
        fid.update(restored)
        result: dict[str, Any] = {"images": len(images), "fid": fid.compute()["fid"],
                                  "l1": float((restored - images).abs().mean())}
        if omega is not None and omega.has_judge:
            result["invalidity"] = float(omega.in_omega(restored).float().mean())
        if judged is not None:
            result["judge_invalidity"] = float(judged.in_omega(restored).float().mean())
        out[name] = result
    return out

"""What decides whether an attack succeeded: never the checks the attack climbs.

An attack climbs the spec's differentiable checks (the guide's logit margin or soft score,
the nearest-neighbour distances of a data set); a classifier that is climbed is also
fooled (adversarial examples), so its own verdict on the final image measures how easily
it is fooled, not what the generator can be made to draw. The verdict is asked instead,
set by set, of something the attack never saw:

* label-based sets naming the guide: the domain's judge (``judge_mirror``);
* rules without a classifier (``boundary`` and its unions, plugins): the rule itself.
  A pixel rule is exact, and plugins give no gradient, so neither is climbed;
* ``data`` sets: nearest neighbour among the negatives and the retained training images,
  in the *judge's* feature space (the spec's own judge measures in the guide's);
* ``feedback`` marks: nearest neighbour among the marked and unmarked samples, in the
  judge's feature space;
* anything else (a classifier the spec uploaded or names besides the guide): only the
  spec's own check can answer, and the verdict says so (``independent`` False).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from unlearning.spec.checks import NearestNeighbourJudge, RedactionSet, _names_only
from unlearning.spec.schema import (
    ClassifierLabelRule, ClassifierScoreRule, ClassifierSet, DataSet, FeedbackSet, ForgetSpec, ValiditySet, walk_rules,
)

SPEC_CHECKS = "the spec's checks"


@dataclass
class Verdict:
    """``in_omega(x)`` -> (N,) bool, True = the image shows what was forgotten."""

    parts: list[tuple[str, Callable[[Tensor], Tensor]]] = field(default_factory=list)

    @property
    def judged_by(self) -> str:
        return " + ".join(dict.fromkeys(name for name, _ in self.parts)) or "nothing"

    @property
    def independent(self) -> bool:
        """Whether no part of it is one of the checks an attack climbs."""
        return bool(self.parts) and all(name != SPEC_CHECKS for name, _ in self.parts)

    def in_omega(self, x: Tensor) -> Tensor:
        mask = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
        with torch.no_grad():
            for _, check in self.parts:
                mask |= check(x).to(x.device)
        return mask


def spec_checks_verdict(omega: RedactionSet) -> Verdict:
    """The spec's own checks as the verdict: what an attack used to be judged by; for
    callers that have no judge (and say so)."""
    return Verdict([(SPEC_CHECKS, omega.in_omega)])


def _has_classifier(rule) -> bool:
    return any(isinstance(r, (ClassifierLabelRule, ClassifierScoreRule)) for r in walk_rules(rule))


def _union(checks: list[Callable[[Tensor], Tensor]]) -> Callable[[Tensor], Tensor]:
    def check(x: Tensor) -> Tensor:
        mask = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
        for c in checks:
            mask |= c(x).to(x.device)
        return mask

    return check


def build_verdict(
    spec: ForgetSpec,
    omega: RedactionSet,
    judged: RedactionSet | None,
    *,
    judge: nn.Module,
    judge_name: str,
    guide_name: str,
    retained: Tensor | None = None,
    marks: tuple[Tensor, Tensor] | None = None,
) -> Verdict:
    """The verdict for ``spec`` (labels resolved) whose checks are ``omega``
    (``build_redaction_set``, which keeps the sets' order): ``judged`` is its mirror by
    ``judge`` (``judge_mirror``), ``retained`` the training images outside Omega (for data
    sets), ``marks`` the (marked, unmarked) samples a person looked at (feedback sets)."""
    from unlearning.models.classifier import PenultimateFeatures

    exact: list[Callable[[Tensor], Tensor]] = []
    own: list[Callable[[Tensor], Tensor]] = []
    data = feedback = False
    validity = iter(omega.validity_checks)
    soft = iter(omega.soft_classifiers)
    for s in spec.sets:
        if isinstance(s, ValiditySet):
            check = next(validity)
            if not _has_classifier(s.rule):
                exact.append(check)
            elif judged is None or _names_only(s.rule, guide_name) is not True:  # as judge_mirror
                own.append(check)
        elif isinstance(s, ClassifierSet):
            check = next(soft).in_omega
            if judged is None or s.classifier != guide_name:
                own.append(check)
        elif isinstance(s, DataSet):
            data = True
        elif isinstance(s, FeedbackSet):
            feedback = True

    parts: list[tuple[str, Callable[[Tensor], Tensor]]] = []
    if judged is not None:
        parts.append((judge_name, judged.in_omega))
    if exact:
        parts.append(("the spec's rules without a classifier", _union(exact)))
    features = PenultimateFeatures(judge)
    if data and omega.negatives is not None and retained is not None and len(retained):
        nearest = NearestNeighbourJudge(omega.negatives.to(retained.device), retained, embed=features)
        parts.append((f"nearest neighbour in {judge_name} features (negatives against the retained data)", nearest))
    if feedback and marks is not None and len(marks[0]) and len(marks[1]):
        nearest = NearestNeighbourJudge(marks[0], marks[1], embed=features)
        parts.append((f"nearest neighbour in {judge_name} features (marked against unmarked samples)", nearest))
    if own:
        parts.append((SPEC_CHECKS, _union(own)))
    if not parts:
        parts.append((SPEC_CHECKS, omega.in_omega))
    return Verdict(parts)

"""Label names in a spec (``labels: [Trouser]``, ``score: {label: Trouser}``) turned into
the classifier's class indices, so that Omega is built from indices only. Every name is
checked against the labels of the classifier the set names; an unknown name is an error
that lists the classifier's labels."""

from __future__ import annotations

from collections.abc import Callable

from unlearning.errors import SpecError
from unlearning.spec.schema import (
    AllOfRule,
    AnyOfRule,
    ClassifierLabelRule,
    ClassifierScoreRule,
    ClassifierSet,
    ForgetSpec,
    OneMinusProb,
    Rule,
    ValiditySet,
)

LabelsOf = Callable[[str], "list[str] | None"]  # classifier name -> its label names (None: unnamed)


def _index(label: int | str, classifier: str, labels_of: LabelsOf, where: str) -> int:
    names = labels_of(classifier)
    if isinstance(label, int):
        if names is not None and label >= len(names):
            raise SpecError(f"{where}: label {label} is out of range: classifier {classifier!r} has "
                            f"{len(names)} classes (0..{len(names) - 1})")
        return label
    if names is None:
        raise SpecError(f"{where}: classifier {classifier!r} has no label names; name the class by its index")
    if label in names:
        return names.index(label)
    folded = [n.casefold() for n in names]
    if label.casefold() in folded:
        return folded.index(label.casefold())
    raise SpecError(f"{where}: {label!r} is not a label of classifier {classifier!r}; its labels: "
                    f"{', '.join(names)}")


def _rule(rule: Rule, labels_of: LabelsOf, where: str) -> Rule:
    if isinstance(rule, ClassifierLabelRule):
        labels = [_index(label, rule.classifier, labels_of, f"{where}.labels[{i}]")
                  for i, label in enumerate(rule.labels)]
        return rule.model_copy(update={"labels": labels})
    if isinstance(rule, ClassifierScoreRule) and isinstance(rule.score, OneMinusProb):
        label = _index(rule.score.label, rule.classifier, labels_of, f"{where}.score.label")
        return rule.model_copy(update={"score": rule.score.model_copy(update={"label": label})})
    if isinstance(rule, (AnyOfRule, AllOfRule)):
        return rule.model_copy(update={"rules": [_rule(r, labels_of, f"{where}.rules[{i}]")
                                                 for i, r in enumerate(rule.rules)]})
    return rule


def resolve_label_names(spec: ForgetSpec, labels_of: LabelsOf) -> ForgetSpec:
    """A copy of ``spec`` whose labels are all class indices, checked against each classifier."""
    sets = []
    for i, s in enumerate(spec.sets):
        where = f"sets[{i}]"
        if isinstance(s, ValiditySet):
            s = s.model_copy(update={"rule": _rule(s.rule, labels_of, f"{where}.rule")})
        elif isinstance(s, ClassifierSet) and isinstance(s.score, OneMinusProb):
            label = _index(s.score.label, s.classifier, labels_of, f"{where}.score.label")
            s = s.model_copy(update={"score": s.score.model_copy(update={"label": label})})
        sets.append(s)
    return spec.model_copy(update={"sets": sets})

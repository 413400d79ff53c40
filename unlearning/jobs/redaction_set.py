"""Omega for a job, built from the spec, the uploads and the classifiers it names, plus its
mirror asked of the domain's judge.

* Uploads are loaded here, checked against the model's image shape.
* A classifier is the domain's guide, another registry classifier of the same domain, or
  an ONNX file uploaded with the request (never unpickled). A registry classifier of
  another domain is refused: its classes mean something else.
* Label names (``labels: [Trouser]``) become the classifier's indices.
* Data-only specs get the nearest-neighbour judge in the guide's feature space;
  marks-only specs get one over the samples regenerated from the version the person
  sampled, without which they cannot judge new images.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from unlearning.data.files import load_images
from unlearning.domains.loaded import Domain
from unlearning.errors import LetheError, SpecError
from unlearning.marks import regenerate_marked
from unlearning.models.classifier import PenultimateFeatures
from unlearning.registry import Registry, onnx_classifier_module
from unlearning.spec import (
    ClassifierSet, ForgetSpec, ValiditySet, build_redaction_set, referenced_classifiers, referenced_files, walk_rules,
)
from unlearning.spec.checks import RedactionSet, judge_mirror
from unlearning.spec.labels import resolve_label_names


@dataclass
class PreparedSets:
    spec: ForgetSpec  # labels resolved to indices
    omega: RedactionSet  # by the spec's own checks: what the method trains against
    judged: RedactionSet | None  # the label-based checks asked of the domain's judge
    # what the nearest-neighbour judge (data and marks specs) says of the kept images
    # themselves: the lowest invalidity a generator can be asked for (0 for rule checks)
    invalidity_floor: float = 0.0


def _uploaded(uploads_dir: Path | None, name: str) -> Path | None:
    if uploads_dir is None:
        return None
    path = Path(uploads_dir) / name
    return path if path.is_file() else None


def _where_named(spec: ForgetSpec, classifier: str) -> str:
    """Where a spec first names ``classifier``, for error messages (``sets[1].rule.classifier``)."""
    for i, s in enumerate(spec.sets):
        if isinstance(s, ClassifierSet) and s.classifier == classifier:
            return f"sets[{i}].classifier"
        if isinstance(s, ValiditySet) and any(getattr(r, "classifier", None) == classifier for r in walk_rules(s.rule)):
            return f"sets[{i}].rule.classifier"
    return "sets"


def prepare_redaction_set(
    spec: ForgetSpec, registry: Registry, domain: Domain, uploads_dir: Path | None, marks_from: str | None = None,
) -> PreparedSets:
    negatives = {}
    for name in referenced_files(spec):
        if uploads_dir is None:
            raise SpecError(f"sets: file '{name}' is referenced but no upload folder was given")
        path = _uploaded(uploads_dir, name)
        if path is None:
            raise SpecError(f"sets: file '{name}' was not uploaded with the request")
        negatives[name] = load_images(path, expected_shape=domain.image_shape)

    classifiers: dict[str, torch.nn.Module] = {domain.guide_name: domain.guide}
    label_names: dict[str, list[str] | None] = {domain.guide_name: domain.labels}
    for name in sorted(referenced_classifiers(spec) - set(classifiers)):
        uploaded = _uploaded(uploads_dir, name) if name.endswith(".onnx") else None
        if uploaded is not None:
            module = onnx_classifier_module(uploaded, name)  # an uploaded classifier: ONNX, never pickle
            label_names[name] = None
        else:
            where = _where_named(spec, name)
            try:
                manifest = registry.get_classifier(name)
            except LetheError as exc:
                raise type(exc)(f"{where}: {exc}") from None
            if manifest.domain is not None and manifest.domain != domain.name:
                raise SpecError(f"{where}: classifier {name!r} belongs to domain {manifest.domain!r}, and this "
                                f"model's domain is {domain.name!r} (its guide is {domain.guide_name!r})")
            module = registry.load_classifier(name)
            label_names[name] = manifest.labels
        classifiers[name] = module.to(domain.device).eval().requires_grad_(False)

    spec = resolve_label_names(spec, lambda name: label_names.get(name))
    omega = build_redaction_set(spec, lambda name: classifiers[name], negatives)
    guide_features = PenultimateFeatures(domain.guide)
    if not omega.has_judge and omega.negatives is not None:
        retained, _ = omega.training_split(domain.train.images)
        omega = omega.with_reference(retained, embed=guide_features)
    if not omega.has_judge and omega.feedback and marks_from is not None:
        generator = registry.load_generator(marks_from).to(domain.device)
        marked, unmarked = regenerate_marked(generator, omega.feedback, domain.device)
        omega = omega.with_marks(marked, unmarked, embed=guide_features)
    floor = omega.judge.kept_floor() if omega.judge is not None else 0.0
    return PreparedSets(spec, omega, judge_mirror(spec, domain.guide_name, domain.judge), floor)

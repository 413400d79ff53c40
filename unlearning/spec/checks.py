"""A forget specification turned into callables over images: the redaction set Omega.

Images follow the project convention: float32 tensors in [-1, 1], shape (N, C, H, W).
Every check returns a bool tensor of shape (N,), True = the sample is INVALID (in Omega).

Kong & Chaudhuri's descriptions of Omega map onto the spec like this:

* Label redaction (IV-A), "forget digit 0"::

      {kind: validity, rule: {type: classifier_label, classifier: digits, labels: [0]}}
      # v(x) = 1[argmax classifier(x) != 0]  (Alg. 2)
      {kind: classifier, classifier: digits, score: {type: one_minus_prob, label: 0}, tau: 0.5}
      # f(x) = 1 - softmax(x)_0, Omega = {f < 0.5}  (Alg. 3)

* Label bias (IV-B), "forget ambiguous digits"::

      {kind: classifier, classifier: digits, score: {type: one_minus_entropy}, tau: 0.5}
      # f(x) = 1 - Entropy(softmax(x)) / log(10)

* Boundary artefact (IV-B, App. F-A)::

      {kind: validity, rule: {type: boundary, margin: 1, max_sum: 4.25}}

In code::

    spec = load_spec(text)
    omega = build_redaction_set(spec, dict_resolver({"digits": classifier}), negatives)
    invalid = omega.in_omega(samples)                 # judge generated samples
    kept, pool = omega.training_split(train_images)   # real batches / initial negative pool
    for soft in omega.guide_soft_classifiers: ...     # eq. 6, the guided discriminator

Validity plugins (entry point group ``lethe.validity``)
-------------------------------------------------------
An operator adds a rule type by installing a distribution whose entry point, in group
``lethe.validity``, is named after the rule type and loads to a factory::

    factory(**params) -> Callable[[Tensor], Tensor]

``params`` are the rule's keys other than ``type``. The returned callable is the paper's
validity function v(x): given a float32 batch in [-1, 1] of shape (N, C, H, W) it returns N
values, 1/True = VALID, 0/False = invalid. Lethe wraps it as ``~v(x).bool()`` (True =
in Omega) and calls it under ``torch.no_grad()``. A factory that cannot be loaded or raises
on construction is a :class:`SpecError` naming the plugin.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Protocol

import torch
from torch import Tensor, nn

from unlearning.errors import InputDataError, LetheError, NotFoundError, SpecError
from unlearning.runtime import inference_rows, seeded_sample
from unlearning.spec.schema import (
    AllOfRule,
    AnyOfRule,
    BoundaryRule,
    ClassifierLabelRule,
    ClassifierScoreRule,
    ClassifierSet,
    DataSet,
    FeedbackSet,
    ForgetSpec,
    OneMinusEntropy,
    OneMinusProb,
    PluginRule,
    Rule,
    Score,
    ValiditySet,
    find_validity_plugin,
    walk_rules,
)

__all__ = [
    "Classifiers",
    "ValidityCheck",
    "dict_resolver",
    "soft_score",
    "build_validity_check",
    "SoftClassifier",
    "NearestNeighbourJudge",
    "RedactionSet",
    "build_redaction_set",
    "judge_mirror",
    "EXACT_MATCH_TOLERANCE",
]

# Two images are "the same picture" when no pixel differs by a grey level or more (in [0, 1]).
EXACT_MATCH_TOLERANCE = 1.0 / 255.0
_CHUNK = 1024
# The nearest-neighbour judge keeps at most this many retained images (a seeded sample):
# every judged sample is compared with each of them, and on Fashion-MNIST's 60,000 that
# comparison alone took 90 s of a 4-minute job. The digits' 1,797 are all kept.
MAX_NEIGHBOURS = 10_000
NEIGHBOUR_SEED = 0


class Classifiers(Protocol):
    """Resolves a classifier name from the spec to a module that maps images to logits
    (N, K). Raises :class:`NotFoundError` for an unknown name."""

    def __call__(self, name: str) -> nn.Module: ...


def dict_resolver(classifiers: Mapping[str, nn.Module]) -> Classifiers:
    """A resolver backed by a mapping (tests, or a caller that loaded its classifiers)."""

    def resolve(name: str) -> nn.Module:
        try:
            return classifiers[name]
        except KeyError:
            known = ", ".join(sorted(classifiers)) or "none"
            raise NotFoundError(f"classifier {name!r} does not exist (known: {known})") from None

    return resolve


def _module_device(module: nn.Module) -> torch.device | None:
    for tensor in module.parameters():
        return tensor.device
    for tensor in module.buffers():
        return tensor.device
    return None


def _run_eval(module: nn.Module, x: Tensor) -> Tensor:
    """Run a module in eval mode on x's device, restoring its train/eval mode after."""
    device = _module_device(module)
    if device is not None and device != x.device:
        module.to(x.device)
    was_training = module.training
    module.eval()
    try:
        return module(x)
    finally:
        module.train(was_training)


def _logits(module: nn.Module, x: Tensor, name: str = "") -> Tensor:
    out = _run_eval(module, x)
    if out.dim() != 2 or out.shape[0] != x.shape[0]:
        who = f"classifier {name!r}" if name else "classifier"
        raise SpecError(
            f"{who} returned shape {tuple(out.shape)} for images of shape {tuple(x.shape)}; "
            "expected logits (N, classes)"
        )
    return out


def _require_index(label: int | str) -> None:
    if not isinstance(label, int):
        raise SpecError(f"label {label!r} is a name: resolve names against the classifier's labels "
                        "(unlearning.spec.labels.resolve_label_names) before building Omega")


def soft_score(score: Score, logits: Tensor) -> Tensor:
    """The soft classifier f in [0, 1] (0 = has the property) from logits (N, K); differentiable.

    * ``one_minus_prob``:    f = 1 - softmax(logits)[label]              (label redaction, IV-A)
    * ``one_minus_entropy``: f = 1 - Entropy(softmax(logits)) / log(K)   (label bias, IV-B)
    """
    classes = logits.shape[1]
    if isinstance(score, OneMinusProb):
        _require_index(score.label)
        if score.label >= classes:
            raise SpecError(f"score label {score.label} is out of range for a classifier with {classes} classes")
        return 1.0 - torch.softmax(logits, dim=1)[:, score.label]
    if isinstance(score, OneMinusEntropy):
        if classes < 2:
            raise SpecError("one_minus_entropy needs a classifier with at least 2 classes")
        log_p = torch.log_softmax(logits, dim=1)
        entropy = -(log_p.exp() * log_p).sum(dim=1)
        return (1.0 - entropy / math.log(classes)).clamp(0.0, 1.0)
    raise SpecError(f"unknown score type {getattr(score, 'type', score)!r}")


@dataclass
class ValidityCheck:
    """A named check: ``check(x)`` -> bool (N,), True = invalid (in Omega)."""

    name: str
    fn: Callable[[Tensor], Tensor]

    def __call__(self, x: Tensor) -> Tensor:
        with torch.no_grad():
            return self.fn(x)


def _resolver(resolve: Classifiers) -> Callable[[str], nn.Module]:
    cache: dict[str, nn.Module] = {}

    def get(name: str) -> nn.Module:
        if name not in cache:
            cache[name] = resolve(name)
        return cache[name]

    return get


def _boundary_sum(x: Tensor, margin: int) -> Tensor:
    """Sum of the [0, 1] pixels within ``margin`` of the border, over all channels."""
    h, w = x.shape[-2:]
    mask = torch.ones(h, w, dtype=torch.bool, device=x.device)
    mask[margin : h - margin, margin : w - margin] = False
    pixels = ((x + 1.0) / 2.0).clamp(0.0, 1.0)
    return (pixels * mask).sum(dim=(1, 2, 3))


def _plugin_check(rule: PluginRule) -> Callable[[Tensor], Tensor]:
    ep = find_validity_plugin(rule.type)
    if ep is None:
        raise SpecError(f"validity plugin {rule.type!r} is not installed (entry point group lethe.validity)")
    try:
        factory = ep.load()
    except Exception as exc:  # noqa: BLE001 - any failure of operator code is reported by name
        raise SpecError(f"validity plugin {rule.type!r} ({ep.value}) cannot be loaded: {exc}") from exc
    try:
        validity = factory(**rule.params)
    except Exception as exc:  # noqa: BLE001
        raise SpecError(
            f"validity plugin {rule.type!r} ({ep.value}) refused its parameters {rule.params!r}: {exc}"
        ) from exc
    if not callable(validity):
        raise SpecError(f"validity plugin {rule.type!r} ({ep.value}) did not return a callable")

    def check(x: Tensor) -> Tensor:
        try:
            v = validity(x)
        except LetheError:
            raise
        except Exception as exc:  # noqa: BLE001
            raise SpecError(
                f"validity plugin {rule.type!r} failed on a batch of shape {tuple(x.shape)}: {exc}"
            ) from exc
        v = torch.as_tensor(v, device=x.device)
        if v.numel() != x.shape[0]:
            raise SpecError(
                f"validity plugin {rule.type!r} returned {v.numel()} values for {x.shape[0]} images"
            )
        return ~v.reshape(x.shape[0]).bool()

    return check


def _rule_check(rule: Rule, get: Callable[[str], nn.Module]) -> Callable[[Tensor], Tensor]:
    if isinstance(rule, ClassifierLabelRule):
        module = get(rule.classifier)
        for label in rule.labels:
            _require_index(label)
        labels = torch.tensor(rule.labels, dtype=torch.long)

        def label_check(x: Tensor) -> Tensor:
            logits = _logits(module, x, rule.classifier)
            if int(labels.max()) >= logits.shape[1]:
                raise SpecError(
                    f"classifier {rule.classifier!r} has {logits.shape[1]} classes; "
                    f"labels {rule.labels} are out of range"
                )
            return torch.isin(logits.argmax(dim=1), labels.to(x.device))

        return label_check
    if isinstance(rule, ClassifierScoreRule):
        module = get(rule.classifier)
        return lambda x: soft_score(rule.score, _logits(module, x, rule.classifier)) < rule.tau
    if isinstance(rule, BoundaryRule):
        return lambda x: _boundary_sum(x, rule.margin) >= rule.max_sum
    if isinstance(rule, (AnyOfRule, AllOfRule)):
        subs = [_rule_check(r, get) for r in rule.rules]
        combine = torch.any if isinstance(rule, AnyOfRule) else torch.all
        return lambda x: combine(torch.stack([s(x) for s in subs], dim=0), dim=0)
    if isinstance(rule, PluginRule):
        return _plugin_check(rule)
    raise SpecError(f"unknown rule {rule!r}")


Margin = Callable[[Tensor], Tensor]


def _rule_score(rule: Rule, get: Callable[[str], nn.Module]) -> Margin | None:
    """A differentiable margin for the attack check: > 0 roughly where the rule says invalid.
    None when the rule has no gradient (plugins, unions containing one)."""
    if isinstance(rule, ClassifierLabelRule):
        module = get(rule.classifier)

        def label_margin(x: Tensor) -> Tensor:  # best forgotten logit over best kept logit
            logits = _run_eval(module, x)
            forgotten = torch.zeros(logits.shape[1], dtype=torch.bool, device=x.device)
            forgotten[torch.tensor(rule.labels, device=x.device)] = True
            neg_inf = torch.finfo(logits.dtype).min
            return logits.masked_fill(~forgotten, neg_inf).amax(1) - logits.masked_fill(forgotten, neg_inf).amax(1)

        return label_margin
    if isinstance(rule, ClassifierScoreRule):
        module = get(rule.classifier)
        return lambda x: rule.tau - soft_score(rule.score, _run_eval(module, x))
    if isinstance(rule, BoundaryRule):
        return lambda x: _boundary_sum(x, rule.margin) - rule.max_sum
    if isinstance(rule, (AnyOfRule, AllOfRule)):
        subs = [_rule_score(r, get) for r in rule.rules]
        if any(sub is None for sub in subs):
            return None
        if isinstance(rule, AnyOfRule):
            return lambda x: torch.stack([sub(x) for sub in subs]).amax(0)
        return lambda x: torch.stack([sub(x) for sub in subs]).amin(0)
    return None


def _where(where: str | None, exc: LetheError) -> LetheError:
    return type(exc)(f"{where}: {exc}") if where else exc


def build_validity_check(rule: Rule, resolve: Classifiers, *, where: str | None = None) -> ValidityCheck:
    """The rule as a check over images: True = invalid (in Omega). Classifiers run in eval
    mode, under ``torch.no_grad()``, on the images' device. ``where`` (e.g. ``sets[1].rule``)
    prefixes error messages."""
    try:
        fn = _rule_check(rule, _resolver(resolve))
    except (SpecError, NotFoundError) as exc:
        raise _where(where, exc) from exc
    return ValidityCheck(name=where or rule.type, fn=fn)


@dataclass
class SoftClassifier:
    """A soft classifier from a ``classifier`` set (Alg. 3): ``f(x)`` in [0, 1] per image,
    differentiable in x (0 = has the property); Omega = {f < tau}."""

    name: str
    f: Callable[[Tensor], Tensor]
    tau: float

    def in_omega(self, x: Tensor) -> Tensor:
        with torch.no_grad():
            return self.f(x) < self.tau

    def margin(self, x: Tensor) -> Tensor:
        """Differentiable; > 0 inside Omega_k."""
        return self.tau - self.f(x)


def _soft_classifier(s: ClassifierSet, get: Callable[[str], nn.Module], name: str) -> SoftClassifier:
    module = get(s.classifier)
    score = s.score

    def f(x: Tensor) -> Tensor:
        return soft_score(score, _logits(module, x, s.classifier))

    return SoftClassifier(name=name, f=f, tau=s.tau)


def _flat(x: Tensor) -> Tensor:
    return x.reshape(x.shape[0], -1)


class NearestNeighbourJudge:
    """Judge for a data-only Omega: x is in Omega when its nearest neighbour (Euclidean) among
    negatives + retained images is a negative, i.e. x is "closer to the forget set than to
    the kept data". Distances are in ``embed`` space when given, else in pixel space. Ties go
    to the negatives (negatives are searched first). Retained images beyond ``MAX_NEIGHBOURS``
    are left out (a seeded sample is kept), so the judge's cost does not grow with the data."""

    def __init__(
        self,
        negatives: Tensor,
        retained: Tensor,
        embed: Callable[[Tensor], Tensor] | None = None,
    ):
        if negatives.shape[1:] != retained.shape[1:]:
            raise InputDataError(
                f"retained images have shape {tuple(retained.shape[1:])}, negatives {tuple(negatives.shape[1:])}"
            )
        self.embed = embed
        retained = seeded_sample(retained, MAX_NEIGHBOURS, NEIGHBOUR_SEED)
        with torch.no_grad():
            reference = torch.cat([self._embed(negatives), self._embed(retained)], dim=0)
        self.reference = reference.detach()
        self.is_negative = torch.zeros(len(reference), dtype=torch.bool)
        self.is_negative[: len(negatives)] = True
        self._on: dict[torch.device, tuple[Tensor, Tensor]] = {}

    def _embed(self, x: Tensor) -> Tensor:
        if self.embed is None:
            return _flat(x.float())
        out = []
        for chunk in x.split(inference_rows(x.shape)):
            if isinstance(self.embed, nn.Module):
                out.append(_flat(_run_eval(self.embed, chunk)))
            else:
                out.append(_flat(self.embed(chunk)))
        return torch.cat(out).float()

    def _reference_on(self, device: torch.device) -> tuple[Tensor, Tensor]:
        if device not in self._on:
            self._on[device] = (self.reference.to(device), self.is_negative.to(device))
        return self._on[device]

    def margin(self, x: Tensor) -> Tensor:
        """Differentiable; > 0 when the nearest negative is nearer than the nearest retained image."""
        reference, is_negative = self._reference_on(x.device)
        distances = torch.cdist(self._embed(x).to(x.device), reference)
        return distances[:, ~is_negative].amin(1) - distances[:, is_negative].amin(1)

    def kept_floor(self) -> float:
        """The share of the kept reference images whose nearest *other* reference image is a
        negative (leave-one-out): what this judge says of samples drawn from the kept data
        itself, so no generator can be expected to score below it."""
        kept = torch.nonzero(~self.is_negative).squeeze(1)
        if len(kept) < 2:
            return 0.0
        hits = 0
        with torch.no_grad():
            for rows in kept.split(_CHUNK):
                distances = torch.cdist(self.reference[rows], self.reference)
                distances[torch.arange(len(rows)), rows] = float("inf")  # not itself
                hits += int(self.is_negative[distances.argmin(dim=1)].sum())
        return hits / len(kept)

    def __call__(self, x: Tensor) -> Tensor:
        with torch.no_grad():
            reference, is_negative = self._reference_on(x.device)
            out = []
            for chunk in x.split(256):
                e = self._embed(chunk).to(x.device)
                nearest = torch.cdist(e, reference, compute_mode="donot_use_mm_for_euclid_dist").argmin(dim=1)
                out.append(is_negative[nearest])
            return torch.cat(out) if out else torch.zeros(0, dtype=torch.bool, device=x.device)


def matches_any(images: Tensor, negatives: Tensor, tol: float = EXACT_MATCH_TOLERANCE) -> Tensor:
    """(N,) bool: image i equals some negative (max abs pixel difference < tol, in [0, 1]
    units, i.e. 2*tol in [-1, 1]). Candidates come from squared L2 distances (float64, exact
    enough), then each candidate pair is checked pixel by pixel."""
    tol_pm1 = 2.0 * tol  # [-1, 1] spans twice the [0, 1] range
    a = _flat(images).double()
    b = _flat(negatives.to(images.device)).double()
    d = a.shape[1]
    bound = d * tol_pm1**2 * (1 + 1e-6) + 1e-9
    b_sq = (b * b).sum(dim=1)
    found = torch.zeros(len(a), dtype=torch.bool, device=images.device)
    for start in range(0, len(a), _CHUNK):
        ac = a[start : start + _CHUNK]
        d2 = (ac * ac).sum(dim=1, keepdim=True) + b_sq[None, :] - 2.0 * ac @ b.T
        rows, cols = torch.nonzero(d2 <= bound, as_tuple=True)
        for p in range(0, len(rows), 65536):
            r, c = rows[p : p + 65536], cols[p : p + 65536]
            close = (ac[r] - b[c]).abs().amax(dim=1) < tol_pm1
            found[start + r[close]] = True
    return found


@dataclass
class RedactionSet:
    """Omega, the union of the spec's sets (Kong & Chaudhuri III-D), as callables.

    * ``negatives``: the uploaded negatives of every ``data`` set, concatenated (or None);
    * ``validity_checks``: one per ``validity`` set, True = invalid;
    * ``soft_classifiers``: one per ``classifier`` set (Omega_k = {f_k < tau_k});
    * ``feedback``: the ``feedback`` sets, as given (their method comes later);
    * ``judge``: the nearest-neighbour judge, once :meth:`with_reference` installed one.
    """

    negatives: Tensor | None = None
    validity_checks: list[Callable[[Tensor], Tensor]] = field(default_factory=list)
    soft_classifiers: list[SoftClassifier] = field(default_factory=list)
    feedback: list[FeedbackSet] = field(default_factory=list)
    judge: NearestNeighbourJudge | None = None
    rule_margins: list[Margin] = field(default_factory=list)
    ungradable: list[str] = field(default_factory=list)
    judge_splits_training: bool = False
    # The last omega_mask asked for, with the very tensor it was asked of (held, so its id
    # cannot be reused): a job splits the same training images five times, and on
    # Fashion-MNIST each split compares 60,000 images with every uploaded negative.
    _last_mask: tuple[Tensor, Tensor] | None = field(default=None, init=False, repr=False, compare=False)

    @property
    def has_judge(self) -> bool:
        """Whether :meth:`in_omega` can judge generated samples: a validity or classifier set,
        or a nearest-neighbour judge installed by :meth:`with_reference`."""
        return bool(self.validity_checks or self.soft_classifiers or self.judge is not None)

    @property
    def margins(self) -> list[Margin]:
        """Differentiable margins (> 0 ~ in Omega) of every check that has one."""
        soft = [c.margin for c in self.soft_classifiers]
        return self.rule_margins + soft + ([self.judge.margin] if self.judge is not None else [])

    def attack_margin(self, x: Tensor) -> Tensor:
        """The union's differentiable margin: the largest over the checks that have one. The
        worst-case (latent attack) check climbs it."""
        margins = self.margins
        if not margins:
            raise SpecError("no check of this forget specification is differentiable")
        return torch.stack([m(x) for m in margins]).amax(0)

    @property
    def guide_soft_classifiers(self) -> list[SoftClassifier]:
        """The soft classifiers for the guided discriminator (eq. 6); several compose (III-D)."""
        return list(self.soft_classifiers)

    def with_reference(
        self, retained: Tensor, embed: Callable[[Tensor], Tensor] | None = None
    ) -> RedactionSet:
        """A copy that also judges by nearest neighbour: a sample is in Omega when its nearest
        neighbour among negatives + ``retained`` is a negative (Euclidean, in ``embed`` space if
        given, else pixel space). The papers give no judge for a data-based Omega; this one
        says "closer to the forget set than to the kept data". It joins the union with any
        validity/classifier checks."""
        if self.negatives is None or len(self.negatives) == 0:
            raise SpecError("a nearest-neighbour judge needs uploaded negatives (a data set)")
        judged = replace(self, judge=NearestNeighbourJudge(self.negatives, retained, embed))
        judged._last_mask = self._last_mask  # this judge does not split the training data
        return judged

    def with_marks(
        self, marked: Tensor, unmarked: Tensor, embed: Callable[[Tensor], Tensor] | None = None
    ) -> RedactionSet:
        """A copy judged by a person's marks: x is in Omega when its nearest neighbour among
        the regenerated samples (``embed`` space) is a marked one. The marks are then the only
        description of what to forget, so the judge also splits the training data (the FID
        reference and the forgotten classes follow from it)."""
        if len(marked) == 0 or len(unmarked) == 0:
            raise SpecError("feedback sets: the marks must leave both marked and unmarked samples")
        return replace(self, judge=NearestNeighbourJudge(marked, unmarked, embed), judge_splits_training=True)

    def _rule_mask(self, x: Tensor) -> Tensor:
        """Validity and classifier sets only (no nearest-neighbour judge)."""
        mask = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
        with torch.no_grad():
            for check in self.validity_checks:
                mask |= check(x).to(x.device)
            for soft in self.soft_classifiers:
                mask |= soft.in_omega(x).to(x.device)
        return mask

    def in_omega(self, x: Tensor) -> Tensor:
        """(N,) bool, True = x is in Omega: the union over validity checks, classifier sets
        (f < tau) and the nearest-neighbour judge if installed. The judge for generated samples."""
        if not self.has_judge:
            raise SpecError(
                "this forget specification cannot judge generated samples: it has no validity or "
                "classifier set (install a nearest-neighbour judge with with_reference)"
            )
        rows = inference_rows(x.shape)
        if len(x) > rows:
            return torch.cat([self.in_omega(part) for part in x.split(rows)])
        mask = self._rule_mask(x)
        if self.judge is not None:
            mask |= self.judge(x).to(x.device)
        return mask

    def omega_mask(self, images: Tensor) -> Tensor:
        """(N,) bool over training images: in Omega by a validity/classifier set, by the
        marks judge (:meth:`with_marks`), or equal (max abs difference < 1/255 in [0, 1]
        units) to an uploaded negative."""
        if self._last_mask is not None and self._last_mask[0] is images:
            return self._last_mask[1]
        out = []
        for chunk in images.split(inference_rows(images.shape)):
            mask = self._rule_mask(chunk)
            if self.judge_splits_training and self.judge is not None:
                mask |= self.judge(chunk).to(chunk.device)
            if self.negatives is not None and len(self.negatives):
                if chunk.shape[1:] != self.negatives.shape[1:]:
                    raise InputDataError(
                        f"training images have shape {tuple(chunk.shape[1:])} but the uploaded negatives "
                        f"have {tuple(self.negatives.shape[1:])}"
                    )
                mask |= matches_any(chunk, self.negatives)
            out.append(mask)
        mask = torch.cat(out) if out else torch.zeros(0, dtype=torch.bool, device=images.device)
        self._last_mask = (images, mask)
        return mask

    def training_split(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """(retained_images, omega_images): real batches come from the first; the second seeds
        the negative pool (Alg. 2 and 3)."""
        mask = self.omega_mask(images)
        return images[~mask], images[mask]


def _stack_negatives(spec: ForgetSpec, negatives: Mapping[str, Tensor] | None) -> Tensor | None:
    uploaded = negatives or {}
    parts: list[Tensor] = []
    used: set[str] = set()
    shape = None
    for i, s in enumerate(spec.sets):
        if not isinstance(s, DataSet):
            continue
        for j, name in enumerate(s.files):
            if name in used:
                continue
            if name not in uploaded:
                have = ", ".join(sorted(uploaded)) or "none"
                raise SpecError(f"sets[{i}].files[{j}]: file {name!r} was not uploaded (uploaded: {have})")
            t = torch.as_tensor(uploaded[name])
            if t.dim() != 4 or len(t) == 0:
                raise InputDataError(
                    f"file {name!r} must hold images (N, C, H, W) with N >= 1, got shape {tuple(t.shape)}"
                )
            if shape is not None and t.shape[1:] != shape:
                raise InputDataError(
                    f"file {name!r} holds images of shape {tuple(t.shape[1:])}, other negatives {tuple(shape)}"
                )
            shape = t.shape[1:]
            used.add(name)
            parts.append(t.float())
    return torch.cat(parts) if parts else None


def build_redaction_set(
    spec: ForgetSpec,
    resolve: Classifiers,
    negatives: Mapping[str, Tensor] | None = None,
) -> RedactionSet:
    """Omega for ``spec``. ``negatives`` maps uploaded file names to their images (already
    loaded by the caller); every file a data set names must be there (else SpecError).
    Each classifier is resolved once; unknown names raise the resolver's NotFoundError."""
    get = _resolver(resolve)
    checks: list[Callable[[Tensor], Tensor]] = []
    softs: list[SoftClassifier] = []
    feedback: list[FeedbackSet] = []
    margins: list[Margin] = []
    ungradable: list[str] = []
    for i, s in enumerate(spec.sets):
        where = f"sets[{i}]"
        if isinstance(s, ValiditySet):
            try:
                checks.append(ValidityCheck(name=f"{where}:{s.rule.type}", fn=_rule_check(s.rule, get)))
                margin = _rule_score(s.rule, get)
            except (SpecError, NotFoundError) as exc:
                raise _where(f"{where}.rule", exc) from exc
            if margin is None:
                ungradable.append(f"{where}:{s.rule.type}")
            else:
                margins.append(margin)
        elif isinstance(s, ClassifierSet):
            try:
                softs.append(_soft_classifier(s, get, f"{where}:{s.classifier}/{s.score.type}"))
            except (SpecError, NotFoundError) as exc:
                raise _where(f"{where}.classifier", exc) from exc
        elif isinstance(s, FeedbackSet):
            feedback.append(s)
    return RedactionSet(
        negatives=_stack_negatives(spec, negatives),
        validity_checks=checks,
        soft_classifiers=softs,
        feedback=feedback,
        rule_margins=margins,
        ungradable=ungradable,
    )


def _names_only(rule: Rule, guide: str) -> bool | None:
    """Whether a rule tree asks the guide and nothing opaque: True (it names the guide, and
    otherwise only exact pixel rules), False (it names another classifier or a plugin),
    None (no classifier at all)."""
    named = False
    for sub in walk_rules(rule):
        if isinstance(sub, PluginRule):
            return False
        if isinstance(sub, (ClassifierLabelRule, ClassifierScoreRule)):
            if sub.classifier != guide:
                return False
            named = True
    return True if named else None


def judge_mirror(spec: ForgetSpec, guide: str, judge: nn.Module) -> RedactionSet | None:
    """The spec's label-based checks asked of the domain's judge instead of its guide: the
    same question, put to a classifier no method saw. A method can lower what its guide
    calls invalid by fooling the guide; it cannot fool the judge it never met.

    Mirrored: classifier sets naming the guide, and validity rules whose classifiers are
    all the guide (exact pixel rules inside them stay as they are). Not mirrored: sets
    naming another classifier (an upload), plugins, data and feedback sets. None when no
    set names the guide: such a spec has no label-based check to ask twice."""
    kept = []
    for s in spec.sets:
        if isinstance(s, ClassifierSet) and s.classifier == guide:
            kept.append(s)
        elif isinstance(s, ValiditySet) and _names_only(s.rule, guide):
            kept.append(s)
    if not kept:
        return None
    mirrored = spec.model_copy(update={"sets": kept})
    return build_redaction_set(mirrored, dict_resolver({guide: judge}))

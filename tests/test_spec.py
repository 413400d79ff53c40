"""The forget specification: parsing, error messages, plugins, and the checks it builds."""

from __future__ import annotations

import copy
import importlib
import json
import math
import sys
import textwrap

import pytest
import torch
import yaml
from torch import nn

from unlearning.errors import NotFoundError, SpecError
from unlearning.jobs.gates import resolve_gates
from unlearning.spec import (
    BoundaryRule,
    ClassifierLabelRule,
    ClassifierSet,
    DataSet,
    FeedbackSet,
    ForgetSpec,
    OneMinusEntropy,
    OneMinusProb,
    PluginRule,
    RedactionSet,
    SpecValidationError,
    ValiditySet,
    build_redaction_set,
    build_validity_check,
    dict_resolver,
    load_spec,
    referenced_classifiers,
    referenced_files,
    soft_score,
    spec_hash,
)

# Copied from DESIGN.md, "Forget specification".
DESIGN_EXAMPLE = """\
name: forget-zero
sets:                       # Omega = union of these
  - kind: data              # uploaded negatives (npz of images, PNGs, or a zip of PNGs)
    files: [negatives.npz]
  - kind: validity          # declarative rule, never code
    rule: {type: classifier_label, classifier: digits, labels: [0]}
  - kind: classifier        # soft classifier f in [0,1] and threshold tau
    classifier: digits
    score: {type: one_minus_prob, label: 0}   # or {type: one_minus_entropy}
    tau: 0.5
  - kind: feedback          # generated samples marked by a person (seeds/indices)
    marked: {seed: 7, n: 64, indices: [3, 9, 17]}
method: auto                # or kong-data | kong-validity | kong-classifier |
                            #    adapt-then-unlearn | feedback | i2i-encoder
hyperparameters: {}         # method-specific overrides of the paper defaults
gates:
  max_invalidity: 0.001     # on eval_samples fresh samples
  max_fid_increase: 5.0     # against the parent version, same extractor
  eval_samples: 50000
"""


def example() -> dict:
    return yaml.safe_load(DESIGN_EXAMPLE)


# --------------------------------------------------------------------------------------
# Parsing
# --------------------------------------------------------------------------------------


def test_design_example_parses():
    spec = load_spec(DESIGN_EXAMPLE)
    assert spec.name == "forget-zero"
    assert [s.kind for s in spec.sets] == ["data", "validity", "classifier", "feedback"]
    assert isinstance(spec.sets[0], DataSet) and spec.sets[0].files == ["negatives.npz"]
    assert isinstance(spec.sets[1], ValiditySet)
    assert spec.sets[1].rule == ClassifierLabelRule(classifier="digits", labels=[0])
    assert isinstance(spec.sets[2], ClassifierSet)
    assert spec.sets[2].score == OneMinusProb(label=0) and spec.sets[2].tau == 0.5
    assert isinstance(spec.sets[3], FeedbackSet)
    assert spec.sets[3].marked.indices == [3, 9, 17]
    assert spec.method == "auto" and spec.hyperparameters == {}
    assert spec.gates.max_invalidity == 0.001 and spec.gates.eval_samples == 50_000
    assert spec.gates.max_attack_invalidity is None and spec.gates.min_class_share_ratio == 0.5
    assert referenced_classifiers(spec) == {"digits"}
    assert referenced_files(spec) == ["negatives.npz"]


def test_round_trips_through_json_and_yaml(tmp_path):
    spec = load_spec(DESIGN_EXAMPLE)
    dumped = spec.model_dump(mode="json")
    assert load_spec(dumped) == spec
    assert load_spec(json.dumps(dumped)) == spec
    assert load_spec(json.dumps(dumped).encode()) == spec
    assert load_spec(yaml.safe_dump(dumped)) == spec

    (tmp_path / "s.json").write_text(json.dumps(dumped))
    (tmp_path / "s.yaml").write_text(DESIGN_EXAMPLE)
    assert load_spec(tmp_path / "s.json") == spec
    assert load_spec(str(tmp_path / "s.yaml")) == spec

    # the hash is about meaning, not spelling: key order, format and spelt-out defaults
    reordered = dict(reversed(list(example().items())))
    assert spec_hash(load_spec(reordered)) == spec_hash(spec)
    changed = example()
    changed["sets"][2]["tau"] = 0.4
    assert spec_hash(load_spec(changed)) != spec_hash(spec)


def test_defaults_and_python_construction():
    spec = ForgetSpec(name="b", sets=[ValiditySet(rule=BoundaryRule(margin=1, max_sum=4.25))])
    assert spec.method == "auto" and spec.gates.max_fid_increase is None
    assert spec.gates.max_fid_ratio is None and spec.gates.max_invalidity is None  # the method's, at the job
    resolved = {m: resolve_gates(spec, m).gates for m in ("kong-validity", "adapt-then-unlearn", "feedback")}
    assert [(g.max_invalidity, g.max_fid_ratio) for g in resolved.values()] == [(0.001, 2.0), (0.01, 2.0), (0.05, 3.0)]
    written = spec.model_copy(update={"gates": spec.gates.model_copy(update={"max_fid_ratio": 1.5})})
    assert resolve_gates(written, "feedback").gates.max_fid_ratio == 1.5  # what a spec writes stands
    assert load_spec(spec.model_dump()) == spec
    minimal = load_spec("name: x\nsets: [{kind: classifier, classifier: d, score: {type: one_minus_entropy}}]")
    assert minimal.sets[0].tau == 0.5 and minimal.sets[0].score == OneMinusEntropy()


def _with(mutate):
    data = example()
    mutate(data)
    return data


BAD_SPECS = [
    ("unknown kind", _with(lambda d: d["sets"][0].update(kind="dataa")),
     "sets[0].kind: 'dataa' is not one of data, validity, classifier, feedback"),
    ("missing kind", _with(lambda d: d["sets"][0].pop("kind")), "sets[0].kind: field required"),
    ("unknown method", _with(lambda d: d.update(method="kong-foo")),
     "method: 'kong-foo' is not one of auto, kong-data, kong-validity, kong-classifier, "
     "adapt-then-unlearn, param-extrapolation, feedback, i2i-encoder"),
    ("empty sets", _with(lambda d: d.update(sets=[])), "sets: list should have at least 1 item"),
    ("tau above 1", _with(lambda d: d["sets"][2].update(tau=1.5)), "sets[2].tau: should be less than 1"),
    ("tau zero", _with(lambda d: d["sets"][2].update(tau=0)), "sets[2].tau: should be greater than 0"),
    ("labels empty", _with(lambda d: d["sets"][1]["rule"].update(labels=[])),
     "sets[1].rule.labels: list should have at least 1 item"),
    ("negative seed", _with(lambda d: d["sets"][3]["marked"].update(seed=-1)),
     "sets[3].marked.seed: should be greater than or equal to 0"),
    ("index >= n", _with(lambda d: d["sets"][3]["marked"].update(indices=[3, 64])),
     "sets[3].marked.indices: index 64 (position 1) is outside [0, n) with n = 64"),
    ("repeated index", _with(lambda d: d["sets"][3]["marked"].update(indices=[3, 3])),
     "sets[3].marked.indices: index 3 appears more than once"),
    ("n too big", _with(lambda d: d["sets"][3]["marked"].update(n=5000)),
     "sets[3].marked.n: should be less than or equal to 4096"),
    ("path in file name", _with(lambda d: d["sets"][0].update(files=["../negatives.npz"])),
     "sets[0].files[0]: '../negatives.npz' is not a plain file name"),
    ("dot-dot file", _with(lambda d: d["sets"][0].update(files=["ok.npz", ".."])),
     "sets[0].files[1]: '..' is not a plain file name"),
    ("no files", _with(lambda d: d["sets"][0].update(files=[])), "sets[0].files: list should have at least 1 item"),
    ("unknown rule type", _with(lambda d: d["sets"][1].update(rule={"type": "wobble", "x": 1})),
     "sets[1].rule.type: unknown rule type 'wobble'; known types: classifier_label, classifier_score, "
     "boundary, any_of, all_of"),
    ("typo tua", _with(lambda d: d["sets"][2].update(tua=0.5)), "sets[2].tua: unknown field (did you mean 'tau'?)"),
    ("typo in gates", _with(lambda d: d["gates"].update(max_invalidty=0.1)),
     "gates.max_invalidty: unknown field (did you mean 'max_invalidity'?)"),
    ("unknown score", _with(lambda d: d["sets"][2].update(score={"type": "one_minus_probability", "label": 0})),
     "sets[2].score.type: 'one_minus_probability' is not one of one_minus_prob, one_minus_entropy"),
    ("negative label", _with(lambda d: d["sets"][2].update(score={"type": "one_minus_prob", "label": -1})),
     "sets[2].score.label: should be greater than or equal to 0"),
    ("bad name", _with(lambda d: d.update(name="forget zero!")), "name: 'forget zero!' is not a slug"),
    ("long name", _with(lambda d: d.update(name="a" * 65)), "is not a slug"),
    ("eval samples", _with(lambda d: d["gates"].update(eval_samples=10)),
     "gates.eval_samples: should be greater than or equal to 100 (got 10)"),
    ("nested rule", _with(lambda d: d["sets"][1].update(
        rule={"type": "any_of", "rules": [
            {"type": "all_of", "rules": [{"type": "boundary", "margin": 0, "max_sum": 1}]}]})),
     "sets[1].rule.rules[0].rules[0].margin: should be greater than or equal to 1"),
    ("rule not a mapping", _with(lambda d: d["sets"][1].update(rule="boundary")),
     "sets[1].rule: should be a mapping, got 'boundary'"),
    ("set not a mapping", _with(lambda d: d["sets"].append(3)), "sets[4]: should be a mapping, got 3"),
    ("missing name", _with(lambda d: d.pop("name")), "name: field required"),
    ("malformed YAML", "name: forget-zero\nsets: [\n  {kind: data, files: [a.npz]\n",
     "spec is not valid JSON or YAML: "),
    ("malformed JSON", '{"name": "forget-zero", "sets": [}', "spec is not valid JSON or YAML: "),
    ("a list", "- name: forget-zero\n- sets: []\n", "spec must be a mapping"),
    ("a JSON list", "[1, 2]", "spec must be a mapping"),
    ("empty", "", "spec is empty"),
    ("duplicate key", "name: a\nname: b\nsets: [{kind: data, files: [x]}]\n", "duplicate key 'name'"),
]


@pytest.mark.parametrize("source,expected", [(s, e) for _, s, e in BAD_SPECS], ids=[i for i, _, _ in BAD_SPECS])
def test_bad_specs_name_the_field_and_the_reason(source, expected):
    with pytest.raises(SpecError) as info:
        load_spec(copy.deepcopy(source))
    assert expected in str(info.value), str(info.value)


def test_parser_errors_give_line_and_column():
    with pytest.raises(SpecError, match=r"line 3, column \d+"):
        load_spec("name: forget-zero\nsets:\n  - kind: [data\n")
    with pytest.raises(SpecError, match=r"line 1 column \d+"):
        load_spec('{"name": "forget-zero", "sets": [}')


def test_every_problem_gets_its_own_line():
    bad = example()
    bad["method"] = "kong-foo"
    bad["sets"][2]["tau"] = 2.0
    bad["sets"][1]["rule"]["labels"] = []
    with pytest.raises(SpecValidationError) as info:
        load_spec(bad)
    lines = str(info.value).splitlines()
    assert len(lines) == 3
    assert {p for p, _ in info.value.problems} == {"method", "sets[2].tau", "sets[1].rule.labels"}


def test_missing_spec_file(tmp_path):
    with pytest.raises(SpecError, match="does not exist"):
        load_spec(tmp_path / "nope.yaml")
    with pytest.raises(SpecError, match="does not exist"):
        load_spec(str(tmp_path / "nope.json"))


# --------------------------------------------------------------------------------------
# Entry-point plugins
# --------------------------------------------------------------------------------------

PLUGIN_SOURCE = textwrap.dedent(
    """
    import torch

    def bright(threshold=0.0):
        if threshold > 1:
            raise ValueError("threshold must be at most 1")

        def validity(x):  # valid (1) when the mean pixel is below the threshold
            return (x.mean(dim=(1, 2, 3)) < threshold).float()

        return validity
    """
)


@pytest.fixture
def plugin_dist(tmp_path, monkeypatch):
    """A real installed distribution with entry points in group lethe.validity."""
    (tmp_path / "lethe_test_plugin.py").write_text(PLUGIN_SOURCE)
    info = tmp_path / "lethe_test_plugin-0.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: lethe_test_plugin\nVersion: 0.0\n")
    (info / "entry_points.txt").write_text(
        "[lethe.validity]\n"
        "bright = lethe_test_plugin:bright\n"
        "broken = lethe_test_plugin:does_not_exist\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.invalidate_caches()
    yield tmp_path
    sys.modules.pop("lethe_test_plugin", None)
    monkeypatch.undo()
    importlib.invalidate_caches()


def _plugin_spec(rule: dict) -> dict:
    return {"name": "plug", "sets": [{"kind": "validity", "rule": rule}]}


def test_plugin_rule_loads_and_judges(plugin_dist):
    spec = load_spec(_plugin_spec({"type": "bright", "threshold": 0.25}))
    rule = spec.sets[0].rule
    assert isinstance(rule, PluginRule) and rule.type == "bright" and rule.params == {"threshold": 0.25}
    assert spec.model_dump()["sets"][0]["rule"] == {"type": "bright", "threshold": 0.25}
    assert load_spec(spec.model_dump(mode="json")) == spec

    check = build_validity_check(rule, dict_resolver({}))
    images = torch.stack([torch.full((1, 4, 4), v) for v in (-0.8, 0.0, 0.2, 0.3, 0.9)])
    assert check(images).tolist() == [False, False, False, True, True]

    # plugins nest inside combinators and join the redaction set
    nested = load_spec(_plugin_spec(
        {"type": "all_of", "rules": [{"type": "bright"}, {"type": "bright", "threshold": 0.5}]}))
    omega = build_redaction_set(nested, dict_resolver({}))
    assert omega.in_omega(images).tolist() == [False, False, False, False, True]


def test_plugin_failures_name_the_plugin(plugin_dist):
    with pytest.raises(SpecError, match="'bright'.*threshold must be at most 1"):
        rule = load_spec(_plugin_spec({"type": "bright", "threshold": 2})).sets[0].rule
        build_validity_check(rule, dict_resolver({}))
    with pytest.raises(SpecError, match="'broken'"):
        build_redaction_set(load_spec(_plugin_spec({"type": "broken"})), dict_resolver({}))
    with pytest.raises(SpecError, match="unknown rule type 'wobble'.*plugins: bright, broken"):
        load_spec(_plugin_spec({"type": "wobble"}))


def test_unregistered_plugin_is_refused():
    importlib.invalidate_caches()
    with pytest.raises(SpecError, match=r"sets\[0\].rule.type: unknown rule type 'bright'"):
        load_spec(_plugin_spec({"type": "bright", "threshold": 0.25}))


# --------------------------------------------------------------------------------------
# Checks
# --------------------------------------------------------------------------------------


class FnClassifier(nn.Module):
    """Logits are a known function of the images. A near-certain dropout on the logits
    shows whether it is run in eval mode."""

    def __init__(self, fn):
        super().__init__()
        self.fn = fn
        self.scale = nn.Parameter(torch.ones(()))
        self.dropout = nn.Dropout(0.999)

    def forward(self, x):
        return self.dropout(self.fn(x) * self.scale)


CENTRES = torch.tensor([-1.0, 0.0, 1.0])


def mean_logits(x):
    """3 classes: the class whose centre (-1, 0, 1) is nearest the mean pixel."""
    return -10.0 * (x.mean(dim=(1, 2, 3))[:, None] - CENTRES) ** 2


def constant_images(values, shape=(1, 4, 4)):
    return torch.stack([torch.full(shape, float(v)) for v in values])


def resolver():
    return dict_resolver({"mean": FnClassifier(mean_logits)})


def _hand_boundary_sum(img, margin):
    c, h, w = img.shape
    total = 0.0
    for ch in range(c):
        for i in range(h):
            for j in range(w):
                if min(i, j, h - 1 - i, w - 1 - j) < margin:
                    total += (float(img[ch, i, j]) + 1.0) / 2.0
    return total


@pytest.mark.parametrize("margin", [1, 2])
def test_boundary_rule_matches_hand_computation(margin):
    g = torch.Generator().manual_seed(0)
    imgs = -torch.ones(6, 2, 6, 6)
    imgs[1, 0, 0, 0] = 1.0  # corner: in both margins
    imgs[2, 1, 1, 3] = 1.0  # second ring: margin 2 only
    imgs[3, 0, 2, 2] = 1.0  # centre: in neither
    imgs[4] = 0.0  # grey everywhere
    imgs[5] = torch.rand(2, 6, 6, generator=g) * 2 - 1
    sums = [_hand_boundary_sum(img, margin) for img in imgs]
    expected_sums = {1: [0, 1, 0, 0, 20.0, None], 2: [0, 1, 1, 0, 32.0, None]}[margin]
    for got, want in zip(sums, expected_sums):
        if want is not None:
            assert got == pytest.approx(want)
    for max_sum in (0.5, 1.0, 10.0, 20.0, sums[5]):
        check = build_validity_check(BoundaryRule(margin=margin, max_sum=max_sum), resolver())
        assert check(imgs).tolist() == [s >= max_sum - 1e-5 for s in sums], max_sum


def test_classifier_label_rule_uses_argmax_in_eval_mode():
    spec = load_spec(_plugin_spec({"type": "classifier_label", "classifier": "mean", "labels": [0, 2]}))
    classifier = FnClassifier(mean_logits)
    classifier.train()
    check = build_validity_check(spec.sets[0].rule, dict_resolver({"mean": classifier}))
    images = constant_images([-0.9, -0.3, 0.1, 0.45, 0.6, 0.95])
    # nearest centre: 0 (-0.9), 1 (-0.3, 0.1, 0.45), 2 (0.6, 0.95)
    assert check(images).tolist() == [True, False, False, False, True, True]
    assert classifier.training  # mode restored


def test_classifier_score_rule_and_soft_classifier_agree_with_hand_softmax():
    images = constant_images([-0.9, -0.2, 0.3, 0.55, 0.9])
    probs = torch.softmax(mean_logits(images), dim=1)[:, 2]
    for tau in (0.3, 0.5, 0.8):
        rule = load_spec(_plugin_spec({"type": "classifier_score", "classifier": "mean",
                                       "score": {"type": "one_minus_prob", "label": 2}, "tau": tau})).sets[0].rule
        check = build_validity_check(rule, resolver())
        assert check(images).tolist() == ((1 - probs) < tau).tolist()

    spec = load_spec({"name": "c", "sets": [{"kind": "classifier", "classifier": "mean",
                                              "score": {"type": "one_minus_prob", "label": 2}}]})
    omega = build_redaction_set(spec, resolver())
    (soft,) = omega.guide_soft_classifiers
    assert soft.tau == 0.5
    assert torch.allclose(soft.f(images), 1 - probs, atol=1e-6)
    assert omega.in_omega(images).tolist() == ((1 - probs) < 0.5).tolist()


def test_any_of_all_of_truth_tables():
    # R1: something bright on the border; R2: the centre pixel reads as class 1
    def centre_logits(x):
        c = x[:, 0, 2, 2]
        return torch.stack([-c, c], dim=1)

    resolve = dict_resolver({"centre": FnClassifier(centre_logits)})
    r1 = {"type": "boundary", "margin": 1, "max_sum": 1.0}
    r2 = {"type": "classifier_label", "classifier": "centre", "labels": [1]}
    imgs = -torch.ones(4, 1, 5, 5)
    imgs[1, 0, 0, 0] = 1.0  # R1 only
    imgs[2, 0, 2, 2] = 1.0  # R2 only
    imgs[3, 0, 0, 0] = 1.0  # both
    imgs[3, 0, 2, 2] = 1.0

    def run(rule):
        return build_validity_check(load_spec(_plugin_spec(rule)).sets[0].rule, resolve)(imgs).tolist()

    assert run(r1) == [False, True, False, True]
    assert run(r2) == [False, False, True, True]
    assert run({"type": "any_of", "rules": [r1, r2]}) == [False, True, True, True]
    assert run({"type": "all_of", "rules": [r1, r2]}) == [False, False, False, True]
    assert run({"type": "any_of", "rules": [{"type": "all_of", "rules": [r1, r2]}]}) == [False, False, False, True]
    assert run({"type": "all_of", "rules": [{"type": "any_of", "rules": [r1, r2]}, r2]}) == [False, False, True, True]


def test_soft_score_is_differentiable():
    x = (torch.rand(4, 1, 4, 4) * 2 - 1).requires_grad_(True)
    spec = load_spec({"name": "g", "sets": [
        {"kind": "classifier", "classifier": "mean", "score": {"type": "one_minus_prob", "label": 2}},
        {"kind": "classifier", "classifier": "mean", "score": {"type": "one_minus_entropy"}},
    ]})
    omega = build_redaction_set(spec, resolver())
    for soft in omega.guide_soft_classifiers:
        x.grad = None
        f = soft.f(x)
        assert f.shape == (4,) and bool(((f >= 0) & (f <= 1)).all())
        f.sum().backward()
        assert x.grad is not None and x.grad.abs().sum() > 0


def test_one_minus_entropy_extremes():
    uniform = torch.zeros(2, 10)
    one_hot = torch.full((2, 10), -50.0)
    one_hot[:, 3] = 50.0
    assert torch.allclose(soft_score(OneMinusEntropy(), uniform), torch.zeros(2), atol=1e-6)
    assert torch.allclose(soft_score(OneMinusEntropy(), one_hot), torch.ones(2), atol=1e-5)
    # one_minus_prob: 1 - 1/K for uniform logits
    assert torch.allclose(soft_score(OneMinusProb(label=3), uniform), torch.full((2,), 0.9))
    with pytest.raises(SpecError, match="out of range"):
        soft_score(OneMinusProb(label=10), uniform)
    assert math.isclose(float(soft_score(OneMinusEntropy(), torch.tensor([[0.0, 0.0]]))), 0.0, abs_tol=1e-6)


def test_training_split_by_rule_and_by_uploaded_negatives():
    g = torch.Generator().manual_seed(1)
    negatives = torch.rand(3, 1, 4, 4, generator=g) * 0.4 - 1.0  # dark: border sums <= 2.4
    training = torch.rand(6, 1, 4, 4, generator=g) * 0.4 - 1.0
    training[1] = negatives[0] + 0.003  # a re-encoded copy of a negative: < 1/255 in [0, 1] units
    training[2] = negatives[2] + 0.05  # similar, not the same picture
    training[4, 0, 0, :] = 1.0  # bright top border: the boundary rule says invalid
    training[4, 0, 1:, :] = -1.0
    spec = load_spec({"name": "s", "sets": [
        {"kind": "data", "files": ["neg.npz"]},
        {"kind": "validity", "rule": {"type": "boundary", "margin": 1, "max_sum": 3.5}},
    ]})
    border = [_hand_boundary_sum(img, 1) for img in training]
    omega = build_redaction_set(spec, resolver(), {"neg.npz": negatives, "unused.npz": training})
    assert omega.negatives.shape == (3, 1, 4, 4)
    mask = omega.omega_mask(training)
    expected = [s >= 3.5 for s in border]
    expected[1] = True
    assert mask.tolist() == expected == [False, True, False, False, True, False]
    retained, forgotten = omega.training_split(training)
    assert len(retained) + len(forgotten) == len(training)
    assert torch.equal(forgotten, training[mask]) and torch.equal(retained, training[~mask])
    # the split is remembered for the very tensor it was asked of, not for equal-shaped others
    assert omega.omega_mask(training) is mask
    other = training.clone()
    other[4] = -1.0
    assert omega.omega_mask(other).tolist() == [False, True, False, False, False, False]


def test_the_nearest_neighbour_judge_keeps_a_seeded_sample_of_a_large_retained_set(monkeypatch):
    import unlearning.spec.checks as checks

    monkeypatch.setattr(checks, "MAX_NEIGHBOURS", 4)
    negatives = torch.ones(1, 1, 2, 2)
    retained = torch.arange(10, dtype=torch.float32).reshape(10, 1, 1, 1).expand(10, 1, 2, 2) / 10
    first, again = checks.NearestNeighbourJudge(negatives, retained), checks.NearestNeighbourJudge(negatives, retained)
    assert first.reference.shape == (5, 4) and torch.equal(first.reference, again.reference)
    kept = {round(float(v) * 10) for v in first.reference[1:, 0]}
    assert len(kept) == 4 and kept <= set(range(10))
    assert checks.NearestNeighbourJudge(negatives, retained[:4]).reference.shape == (5, 4)  # small sets: all of them


def test_nearest_neighbour_judge_for_data_only_specs():
    negatives = torch.ones(2, 1, 4, 4)
    negatives[:, :, :, 2:] = -1.0  # left half white, right half black: mean 0
    retained = torch.full((5, 1, 4, 4), 0.3)
    spec = load_spec({"name": "d", "sets": [{"kind": "data", "files": ["a.npz", "b.npz"]}]})
    omega = build_redaction_set(spec, resolver(), {"a.npz": negatives[:1], "b.npz": negatives[1:]})
    assert isinstance(omega, RedactionSet) and not omega.has_judge
    with pytest.raises(SpecError, match="with_reference"):
        omega.in_omega(retained)

    judged = omega.with_reference(retained)
    assert judged.has_judge and not omega.has_judge
    samples = torch.cat([negatives[:1] * 0.9, torch.full((1, 1, 4, 4), 0.25), torch.zeros(1, 1, 4, 4)])
    # pixel space: the grey image is closer to the constant 0.3 images than to the half/half ones
    assert judged.in_omega(samples).tolist() == [True, False, False]
    # in mean-pixel space the grey image (mean 0) sits on the negatives (mean 0)
    by_mean = omega.with_reference(retained, embed=lambda x: x.mean(dim=(1, 2, 3))[:, None])
    assert by_mean.in_omega(samples).tolist() == [True, False, True]


def test_the_nearest_neighbour_floor_is_what_the_judge_says_of_the_kept_images():
    """Leave-one-out over the kept images: those whose nearest other image is a negative. A
    default limit under it would reject a generator that draws only kept data; a limit the
    spec sets stands."""
    from unlearning.spec.checks import NearestNeighbourJudge

    line = torch.tensor([0.0, 0.1, 0.2, 0.3, 0.9, 1.0])  # kept; the 0.9 and 1.0 sit by the negatives
    negatives = torch.tensor([0.95, 2.0]).reshape(2, 1, 1, 1)
    judge = NearestNeighbourJudge(negatives, line.reshape(6, 1, 1, 1))
    assert judge.kept_floor() == pytest.approx(2 / 6)
    assert NearestNeighbourJudge(negatives, line[:4].reshape(4, 1, 1, 1)).kept_floor() == 0.0

    spec = load_spec({"name": "d", "sets": [{"kind": "data", "files": ["a.npz"]}]})
    assert resolve_gates(spec, "kong-data").gates.max_invalidity == 0.001
    assert resolve_gates(spec, "kong-data", invalidity_floor=0.00941).gates.max_invalidity == 0.0283
    assert resolve_gates(spec, "feedback", invalidity_floor=0.015).gates.max_invalidity == 0.05
    assert resolve_gates(spec, "feedback", invalidity_floor=0.02).gates.max_invalidity == 0.06
    mine = load_spec({"name": "d", "sets": [{"kind": "data", "files": ["a.npz"]}], "gates": {"max_invalidity": 0.002}})
    assert resolve_gates(mine, "kong-data", invalidity_floor=0.3).gates.max_invalidity == 0.002


def test_missing_data_file_and_unknown_classifier():
    spec = load_spec(DESIGN_EXAMPLE)
    resolve = dict_resolver({"digits": FnClassifier(mean_logits)})
    with pytest.raises(SpecError, match=r"sets\[0\].files\[0\]: file 'negatives.npz' was not uploaded"):
        build_redaction_set(spec, resolve, {"other.npz": torch.zeros(1, 1, 4, 4)})
    with pytest.raises(NotFoundError, match=r"sets\[1\].rule: classifier 'digits' does not exist"):
        build_redaction_set(spec, dict_resolver({}), {"negatives.npz": torch.zeros(1, 1, 4, 4)})
    omega = build_redaction_set(spec, resolve, {"negatives.npz": torch.zeros(2, 1, 4, 4)})
    assert len(omega.validity_checks) == 1 and len(omega.soft_classifiers) == 1
    assert [f.marked.seed for f in omega.feedback] == [7]
    assert omega.has_judge

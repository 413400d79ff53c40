"""Kong & Chaudhuri Alg. 1-3 forget digit 0 on the embedded default, judged independently,
by the digits domain's judge (a classifier trained on the other half of the training
digits, with another architecture, which no method sees): invalidity (share of samples the
judge calls 0) falls from ~10 % to <= 0.5 % within 10 % of the pre-training steps, FID
(judge features) against the retained digits stays within 2x of the base model filtered
by the same check (rejection sampling, >= 5,000 samples), and no retained digit (by the
judge) loses more than half its share."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from unlearning.data import digits_splits
from unlearning.data.files import save_images_npz
from unlearning.evaluation import judge, load_domain
from unlearning.jobs import prepare_redaction_set, run_redaction
from unlearning.metrics import min_share_ratio
from unlearning.registry import Registry
from unlearning.spec import load_spec

EVAL_SAMPLES = 5000
EVAL_SEED = 4242  # not the gate's seed: the test judges on latents the job never saw
ZERO = {"kind": "validity", "rule": {"type": "classifier_label", "classifier": "digits", "labels": [0]}}
SPECS = {
    "kong-data": {"sets": [{"kind": "data", "files": ["zeros.npz"]}]},
    "kong-validity": {"sets": [ZERO]},
    "kong-classifier": {"sets": [{"kind": "classifier", "classifier": "digits",
                                  "score": {"type": "one_minus_prob", "label": 0}, "tau": 0.5}]},
}


@pytest.fixture(scope="module")
def base_judgement(base_home):
    registry = Registry(base_home)
    base = registry.get(registry.active("digits"))
    domain = load_domain(registry, base, device=__import__("torch").device("cpu"))
    # the judge's mirror of "the guide calls it 0": "the judge calls it 0"
    zeros = prepare_redaction_set(load_spec({"name": "judge", "sets": [ZERO]}), registry, domain, None).judged
    reference = domain.reference(domain.train.images[domain.train.labels != 0])
    before = judge(registry.load_generator(base.version), domain, n=EVAL_SAMPLES, seed=EVAL_SEED,
                   omega=zeros, reference=reference, filtered=True)
    return {"domain": domain, "zeros": zeros, "reference": reference, "before": before, "base": base}


# kong-classifier with these settings is checked in test_attacks.py, whose worst-case tests
# need the same job (CI trains it once)
@pytest.mark.parametrize("method", [m for m in SPECS if m != "kong-classifier"])
def test_forgets_digit_zero_and_keeps_quality(method, base_copy, base_judgement, tmp_path):
    uploads = tmp_path / "uploads"
    uploads.mkdir()
    train, _ = digits_splits()
    save_images_npz(train.images[train.labels == 0], uploads / "zeros.npz")
    spec = {"name": f"forget-zero-{method}", "method": method, **SPECS[method],
            # no attacks: test_attacks.py's, and the Adapt-then-Unlearn defaults test's below
            "gates": {"max_invalidity": 0.005, "eval_samples": EVAL_SAMPLES, "attack_starts": 0}}
    registry = Registry(base_copy)

    outcome = run_redaction(spec, registry=registry, uploads_dir=uploads, activate=False)

    before = base_judgement["before"]
    after = judge(registry.load_generator(outcome.version), base_judgement["domain"], n=EVAL_SAMPLES,
                  seed=EVAL_SEED, omega=base_judgement["zeros"], reference=base_judgement["reference"])
    print(json.dumps({"method": method, "before": before["invalidity"], "after": after["invalidity"],
                      "fid": after["fid"], "filtered_base_fid": before["filtered_fid"], "stats": outcome.stats}))
    assert before["invalidity"] > 0.05, "the base model should make about 10 % zeros"
    assert after["invalidity"] <= 0.005
    assert after["fid"] <= 2.0 * before["filtered_fid"]
    assert min_share_ratio(before["class_shares"], after["class_shares"], exclude={0}) >= 0.5
    pretraining = base_judgement["base"].metrics["pretraining"]["iterations"]
    assert outcome.stats["iterations"] <= 0.10 * pretraining
    assert outcome.status == "promoted", outcome.reason
    # only a data spec is judged by nearest neighbour; no kept digit has a zero nearest (gates.py)
    assert outcome.before.get("invalidity_floor", "none") == (0.0 if method == "kong-data" else "none")


def _redact_cli(spec: dict, tmp_path, home) -> dict:
    path = tmp_path / "spec.json"
    path.write_text(json.dumps(spec))
    done = subprocess.run([sys.executable, "-m", "unlearning.cli", "redact", str(path), "--json", "--quiet"],
                          capture_output=True, text=True, timeout=900, env={**__import__("os").environ,
                                                                            "LETHE_HOME": str(home)})
    assert "Traceback" not in done.stderr, done.stderr
    assert done.returncode in (0, 3), done.stderr  # 3 = finished but rejected by a gate
    return json.loads(done.stdout)


def test_boundary_artefact_rule_end_to_end(base_copy, tmp_path):
    """Alg. 2 with the paper's boundary-artefact validity function (IV-B, App. F-A)."""
    spec = {"name": "boundary", "sets": [{"kind": "validity", "rule": {"type": "boundary", "margin": 1,
                                                                      "max_sum": 7.0}}],
            "gates": {"max_invalidity": 0.01, "eval_samples": EVAL_SAMPLES}}
    outcome = _redact_cli(spec, tmp_path, base_copy)
    assert outcome["method"] == "kong-validity"
    assert outcome["after"]["invalidity"] < outcome["before"]["invalidity"]
    assert (base_copy / "versions" / outcome["version"] / "generator.onnx").is_file()
    assert (base_copy / "reports" / "boundary" / "index.html").is_file()


def test_label_bias_score_end_to_end(base_copy, tmp_path):
    """Alg. 3 with the label-bias score f = 1 - H(softmax)/log(10) (IV-B). The paper's Table VI
    reports a modest effect at tau 0.7 (invalidity 13.5 % -> 12.2 %, IS 7.82 -> 7.95); on
    20,000 samples a drop of that size is about five standard errors, and quality must not
    suffer. With the paper's lam 0.85: the digits' training set holds only about 40 images
    this score calls ambiguous, and the library's default 0.95 (tuned for forgetting a
    class) gave them so little weight that on one CPU (AMD Zen 1, 2026-12-02) the drop was
    0.5 %; lam 0.85 gave 0.88x and 0.87x there (seeds 0 and 1)."""
    spec = {"name": "label-bias", "sets": [{"kind": "classifier", "classifier": "digits",
                                            "score": {"type": "one_minus_entropy"}, "tau": 0.7}],
            "hyperparameters": {"lam": 0.85},
            "gates": {"max_invalidity": 0.05, "eval_samples": 20_000, "attack_starts": 0}}
    outcome = _redact_cli(spec, tmp_path, base_copy)
    before, after = outcome["before"], outcome["after"]
    assert outcome["method"] == "kong-classifier"
    assert before["invalidity"] > 0.05, "the base model should make some ambiguous digits"
    assert after["invalidity"] <= 0.95 * before["invalidity"]
    assert after["inception_score"] >= before["inception_score"] - 0.05
    assert after["fid"] <= before["fid"] * 1.1


def test_union_of_sets_forgets_both(base_copy, base_judgement):
    """Several sets (III-D): a validity rule for 0 and a soft classifier for 1 in one spec;
    both digits fall from ~10 % to <= 3 % (two classes in the same 20-epoch budget; one
    class alone reaches <= 0.5 %), the others keep at least half their share."""
    spec = {"name": "forget-zero-and-one", "sets": [
        ZERO,
        {"kind": "classifier", "classifier": "digits", "score": {"type": "one_minus_prob", "label": 1}, "tau": 0.5},
    ], "gates": {"max_invalidity": 0.03, "eval_samples": EVAL_SAMPLES, "attack_starts": 0}}
    registry = Registry(base_copy)
    outcome = run_redaction(spec, registry=registry, activate=False)
    assert outcome.method == "kong-classifier" and outcome.status == "promoted", outcome.reason
    before = base_judgement["before"]["class_shares"]
    after = judge(registry.load_generator(outcome.version), base_judgement["domain"], n=EVAL_SAMPLES,
                  seed=EVAL_SEED)["class_shares"]
    assert before[0] > 0.05 and before[1] > 0.05
    assert after[0] <= 0.03 and after[1] <= 0.03
    assert min_share_ratio(before, after, exclude={0, 1}) >= 0.5


def test_adapt_then_unlearn_with_its_defaults_forgets_digit_one(base_copy, base_judgement):
    """Tiwary et al. with every default (the spec names only its set and the method): only
    generated samples, split by the guide, no training images (the job hands the method
    none). Promoted, and judged on 10,000 latents the job never drew by the judge, which the
    method never saw: PUL >= 90 % (the paper: 95-99 % on MNIST; measured here 95.0 % with
    the positives' buffer, 81.8 % without it even after 40 epochs; a buffer of 1.5x gave
    88.8 %, 2x failed the FID gate), FID within 2.5x of the base filtered by the judge (the
    paper's own MNIST rise is 1.7-1.85x), every retained digit keeps half its share."""
    one = {"kind": "validity", "rule": {"type": "classifier_label", "classifier": "digits", "labels": [1]}}
    spec = load_spec({"name": "atu-one", "method": "adapt-then-unlearn", "sets": [one]})
    registry = Registry(base_copy)
    outcome = run_redaction(spec, registry=registry, activate=False)
    assert outcome.status == "promoted", outcome.reason
    adapted = [h["invalidity"] for h in outcome.history if h.get("stage") == "adapt" and "invalidity" in h]
    assert adapted and max(adapted) > 0.5, "stage 1 never adapted G to the negatives"
    domain = base_judgement["domain"]
    ones = prepare_redaction_set(spec, registry, domain, None).judged
    reference = domain.reference(domain.train.images[domain.train.labels != 1])
    before = judge(registry.load_generator(base_judgement["base"].version), domain, n=10_000, seed=EVAL_SEED,
                   omega=ones, reference=reference, filtered=True)
    after = judge(registry.load_generator(outcome.version), domain, n=10_000, seed=EVAL_SEED, omega=ones,
                  reference=reference)
    pul = 100 * (before["invalidity"] - after["invalidity"]) / before["invalidity"]
    print(json.dumps({"judge_ones": [before["invalidity"], after["invalidity"]], "pul": pul, "fid": after["fid"],
                      "filtered_base_fid": before["filtered_fid"], "gates": {g.name: g.value for g in outcome.gates}}))
    assert before["invalidity"] >= 0.05 and pul >= 90, (before["invalidity"], after["invalidity"])
    assert after["fid"] <= 2.5 * before["filtered_fid"], (after["fid"], before["filtered_fid"])
    assert min_share_ratio(before["class_shares"], after["class_shares"], exclude={1}) >= 0.5

    # The worst-case check ran on both models from the same starts (the default 256) and
    # finds far more than random sampling: random-sample invalidity says nothing about the
    # worst case.
    attack_before, attack_after = outcome.before["attack"], outcome.after["attack"]
    assert attack_before["starts"] == attack_after["starts"] == 256
    assert attack_before["attack_invalidity"] >= 3 * attack_before["random_invalidity"], attack_before
    assert attack_after["attack_invalidity"] > attack_after["random_invalidity"] + 0.05, attack_after


def test_parameter_extrapolation_baseline_and_attack_gate(base_copy, tmp_path):
    """The baseline moves G away from the adapted model and forgets part of the class (the
    paper: weaker than Adapt-then-Unlearn). With max_attack_invalidity the worst case is a
    gate: the half-forgotten model is still easy to push back to zeros, so it is rejected."""
    spec = {"name": "extrapolate-zero", "method": "param-extrapolation", "sets": [ZERO],
            "hyperparameters": {"extrapolation_step": 2.0},
            "gates": {"max_invalidity": 0.5, "max_fid_ratio": 1e6, "min_class_share_ratio": 0.0,
                      "max_attack_invalidity": 0.05, "eval_samples": 2000}}
    registry = Registry(base_copy)
    outcome = run_redaction(spec, registry=registry, activate=False, report_dir=tmp_path / "report")
    assert outcome.after["invalidity"] < 0.6 * outcome.before["invalidity"], (outcome.before, outcome.after)
    gates = {g.name: g for g in outcome.gates}
    assert not gates["attack_invalidity"].passed and gates["attack_invalidity"].value > 0.05
    assert outcome.status == "rejected" and "attack_invalidity" in outcome.reason
    assert [g.name for g in outcome.gates if not g.passed] == ["attack_invalidity"]
    # the gate reads the worst of the attacks, each judged by the domain's judge
    attack = outcome.after["attack"]
    assert attack["judged_by"] == "judge:digits" == attack["inversion"]["judged_by"]
    assert gates["attack_invalidity"].value == attack["worst_case"] == max(
        attack["gradient_worst_case"], attack["inversion"]["attack_invalidity"])
    assert "inversion of 32 real examples" in gates["attack_invalidity"].detail
    page = (tmp_path / "report" / "index.html").read_text()
    assert "Worst case (attacks)" in page
    assert (tmp_path / "report" / "attack_after.png").stat().st_size > 0

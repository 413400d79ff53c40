"""Kong & Chaudhuri Alg. 1-3 forget digit 0 on the embedded default, judged independently:
invalidity (share of samples the digit classifier calls 0) falls from ~10 % to <= 0.5 %
within 10 % of the pre-training steps, FID against the retained digits stays within 2x of
the base model filtered by the same check (rejection sampling, same extractor, >= 5,000
samples), and no retained digit loses more than half its share."""

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
    zeros = prepare_redaction_set(load_spec({"name": "judge", "sets": [ZERO]}), registry, domain, None)
    reference = domain.reference(domain.train.images[domain.train.labels != 0])
    before = judge(registry.load_generator(base.version), domain, n=EVAL_SAMPLES, seed=EVAL_SEED,
                   omega=zeros, reference=reference, filtered=True)
    return {"domain": domain, "zeros": zeros, "reference": reference, "before": before, "base": base}


@pytest.mark.parametrize("method", list(SPECS))
def test_forgets_digit_zero_and_keeps_quality(method, base_copy, base_judgement, tmp_path):
    uploads = tmp_path / "uploads"
    uploads.mkdir()
    train, _ = digits_splits()
    save_images_npz(train.images[train.labels == 0], uploads / "zeros.npz")
    spec = {"name": f"forget-zero-{method}", "method": method, **SPECS[method],
            "gates": {"max_invalidity": 0.005, "eval_samples": EVAL_SAMPLES}}
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
    suffer."""
    spec = {"name": "label-bias", "sets": [{"kind": "classifier", "classifier": "digits",
                                            "score": {"type": "one_minus_entropy"}, "tau": 0.7}],
            "gates": {"max_invalidity": 0.05, "eval_samples": 20_000}}
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
    ], "gates": {"max_invalidity": 0.03, "eval_samples": EVAL_SAMPLES}}
    registry = Registry(base_copy)
    outcome = run_redaction(spec, registry=registry, activate=False)
    assert outcome.method == "kong-classifier" and outcome.status == "promoted", outcome.reason
    before = base_judgement["before"]["class_shares"]
    after = judge(registry.load_generator(outcome.version), base_judgement["domain"], n=EVAL_SAMPLES,
                  seed=EVAL_SEED)["class_shares"]
    assert before[0] > 0.05 and before[1] > 0.05
    assert after[0] <= 0.03 and after[1] <= 0.03
    assert min_share_ratio(before, after, exclude={0, 1}) >= 0.5

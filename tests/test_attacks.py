"""Worst-case forgetting on the digits default, judged by the domain's judge (issue 16):

* the inversion attack recovers the held-out zeros from the base model;
* on a kong-classifier edit, the gradient attack's success by the judge and by the guide
  it climbs are both reported, and they differ (the guide is fooled);
* robust redaction (latent adversarial training) cuts the inversion worst case at least
  threefold against the same method without it, keeping random invalidity and FID;
* ``/metrics`` carries the attacks' gauge.

The two redactions share one module fixture."""

from __future__ import annotations

import json

import pytest
import torch

from unlearning.evaluation import judge, load_domain
from unlearning.jobs import prepare_redaction_set, run_redaction
from unlearning.jobs.attacks import inversion_targets, verdict_for
from unlearning.metrics import min_share_ratio
from unlearning.metrics.inversion import inversion_attack
from unlearning.registry import Registry
from unlearning.spec import load_spec

ZERO = {"kind": "validity", "rule": {"type": "classifier_label", "classifier": "digits", "labels": [0]}}
ZERO_SCORE = {"kind": "classifier", "classifier": "digits", "score": {"type": "one_minus_prob", "label": 0}, "tau": 0.5}
EVAL_SAMPLES = 5000
EVAL_SEED = 4242  # not the gates' seed


@pytest.fixture(scope="module")
def zeros(base_home):
    """The base, the domain, 'is 0' by the guide and by the judge, and 32 held-out zeros."""
    registry = Registry(base_home)
    base = registry.get(registry.active("digits"))
    domain = load_domain(registry, base, device=torch.device("cpu"))
    sets = prepare_redaction_set(load_spec({"name": "zero", "sets": [ZERO]}), registry, domain, None)
    generator = registry.load_generator(base.version)
    verdict, _ = verdict_for(sets.spec, sets.omega, sets.judged, domain, generator)
    targets = inversion_targets(verdict, domain.held_out.images, None, None, 32)
    reference = domain.reference(domain.train.images[domain.train.labels != 0])
    return {"registry": registry, "base": base, "domain": domain, "sets": sets, "verdict": verdict,
            "targets": targets, "generator": generator, "reference": reference}


def test_inversion_recovers_held_out_zeros_from_the_base(zeros):
    domain = zeros["domain"]
    result = inversion_attack(zeros["generator"], zeros["targets"], zeros["verdict"], omega=zeros["sets"].omega)
    print(json.dumps(result))
    assert result["judged_by"] == domain.judge_name and result["independent"]
    assert result["targets"] == 32 and result["target_invalidity"] == 1.0  # held-out zeros, as the judge sees them
    assert result["attack_invalidity"] >= 0.9


@pytest.fixture(scope="module")
def redactions(base_home, tmp_path_factory):
    """kong-classifier forgetting 0 without and with robust mode, on a copy of the base. The
    plain job runs both attacks (the job's defaults); the robust one none (attack_starts 0),
    its inversion is measured by the test. The plain job is also test_redaction's
    kong-classifier case (its checks are here, so CI trains it once)."""
    import shutil

    root = tmp_path_factory.mktemp("attacks")
    shutil.copytree(base_home, root / "home")
    registry = Registry(root / "home")
    out = {}
    for name, extra, gates in (("plain", {}, {}), ("robust", {"robust": True}, {"attack_starts": 0})):
        spec = {"name": f"forget-zero-{name}", "method": "kong-classifier", "sets": [ZERO_SCORE],
                "hyperparameters": extra, "gates": {"max_invalidity": 0.005, "eval_samples": EVAL_SAMPLES, **gates}}
        out[name] = run_redaction(spec, registry=registry, activate=False, report_dir=root / f"report-{name}")
    out["registry"] = registry
    return out


@pytest.fixture(scope="module")
def judged(redactions, zeros):
    """The base (filtered) and both edits judged on latents the jobs never drew."""
    registry, domain, sets = redactions["registry"], zeros["domain"], zeros["sets"]
    out = {"base": judge(zeros["generator"], domain, n=EVAL_SAMPLES, seed=EVAL_SEED, omega=sets.omega,
                         judged=sets.judged, reference=zeros["reference"], filtered=True)}
    for name in ("plain", "robust"):
        out[name] = judge(registry.load_generator(redactions[name].version), domain, n=EVAL_SAMPLES, seed=EVAL_SEED,
                          omega=sets.omega, judged=sets.judged, reference=zeros["reference"])
    return out


def test_kong_classifier_forgets_zero_in_distribution_not_in_the_worst_case(redactions, judged, zeros):
    """The plain edit (test_redaction's kong-classifier case): the judge sees <= 0.5 % zeros,
    FID within 2x of the filtered base, every retained digit keeps half its share. Both
    verdicts on the gradient attack's final images are reported, and they differ (the
    guide it climbs is fooled); inversion still recovers the held-out zeros."""
    outcome, base, after = redactions["plain"], judged["base"], judged["plain"]
    assert outcome.status == "promoted", outcome.reason
    assert base["judge_invalidity"] > 0.05 and after["judge_invalidity"] <= 0.005
    assert after["fid"] <= 2.0 * base["filtered_fid"]
    assert min_share_ratio(base["class_shares"], after["class_shares"], exclude={0}) >= 0.5
    assert outcome.stats["iterations"] <= 0.10 * zeros["base"].metrics["pretraining"]["iterations"]

    attack = outcome.after["attack"]
    print(json.dumps({k: v for k, v in attack.items() if k != "inversion"}), json.dumps(attack["inversion"]))
    assert attack["judged_by"] == zeros["domain"].judge_name and attack["independent"]
    # the guide climbed says "zero" of final images the judge does not call zeros
    assert attack["climbed_invalidity"] > attack["attack_invalidity"] + 0.1
    assert attack["fooled_share"] >= attack["climbed_invalidity"] - attack["attack_invalidity"]
    # the worst case is the worst of the attacks: here the inversion, which the gradient attack misses
    inversion = attack["inversion"]
    assert inversion["judged_by"] == zeros["domain"].judge_name and inversion["targets"] == 32
    assert inversion["attack_invalidity"] >= 0.9 and attack["worst_case"] == inversion["attack_invalidity"]
    assert attack["worst_case"] == max(attack["gradient_worst_case"], inversion["attack_invalidity"])

    page = open(f"{outcome.report_dir}/index.html").read()
    assert "fooled share" in page and "inversion.png" in page and zeros["domain"].judge_name in page


def test_robust_redaction_cuts_the_inversion_worst_case(redactions, judged, zeros):
    """Robust mode: the inversion worst case at least 3x below the same method without it,
    random invalidity <= 0.5 % and FID within 2x of the filtered base, all by the judge."""
    plain = redactions["plain"].after["attack"]["inversion"]  # the job's own: 32 held-out zeros, same budget
    robust_model = redactions["registry"].load_generator(redactions["robust"].version)
    robust = inversion_attack(robust_model, zeros["targets"], zeros["verdict"])
    after = judged["robust"]
    cost = redactions["robust"].stats["robust"]  # what robustness cost, in the job's stats
    print(json.dumps({"filtered_base_fid": judged["base"]["filtered_fid"], "fid": after["fid"],
                      "judge_invalidity": after["judge_invalidity"], "plain": plain["attack_invalidity"],
                      "robust": robust["attack_invalidity"], "cost": cost}))
    assert plain["targets"] == robust["targets"] == 32 and robust["judged_by"] == zeros["domain"].judge_name
    assert robust["attack_invalidity"] * 3 <= plain["attack_invalidity"]
    assert after["judge_invalidity"] <= 0.005
    assert after["fid"] <= 2.0 * judged["base"]["filtered_fid"]
    assert cost["inversion_steps"] > 0 and 0 < cost["inversion_s"] < cost["training_s"]
    assert "attack" not in redactions["robust"].after  # attack_starts 0: no attacks in the job


def test_attack_gauges_on_metrics(redactions, tmp_path):
    """``lethe serve`` publishes a version's attacks, as judged, on /metrics."""
    from serving import LetheServer

    server = LetheServer(redactions["registry"].home, tmp_path / "bentoml", workers=1, job_worker=False).start()
    try:
        metrics = server.metrics()
    finally:
        server.stop()
    outcome = redactions["plain"]
    attack = outcome.after["attack"]
    expected = {"gradient": attack["attack_invalidity"], "inversion": attack["inversion"]["attack_invalidity"],
                "worst_case": attack["worst_case"]}
    for kind, value in expected.items():
        key = ("lethe_model_attack_invalidity_ratio",
               (("attack", kind), ("model_version", outcome.version), ("spec", "forget-zero-plain")))
        assert metrics[key] == pytest.approx(value), (key, sorted(k for k in metrics if "attack" in k[0]))
    assert not any(k[0] == "lethe_model_attack_invalidity_ratio" and ("model_version", redactions["robust"].version)
                   in k[1] for k in metrics)  # a version without attacks has none

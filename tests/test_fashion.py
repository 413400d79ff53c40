"""The second real domain: Fashion-MNIST (28x28, ten garments), served beside the digits.

Over HTTP, a classifier spec naming a garment by name ("Trouser") makes the served
``fashion`` DCGAN forget it, judged by the domain's judge (which the method never saw), and
the new version swaps in while the digits keep serving. Through `lethe redact`, every
generator method runs on it."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
import torch

from clirun import lethe
from homes import merge_homes
from serving import LetheServer
from unlearning.data.files import save_images_npz
from unlearning.domains import BUILTIN_DOMAINS
from unlearning.registry import Registry
from unlearning.runtime import latents

TROUSER = BUILTIN_DOMAINS["fashion-mnist"].labels.index("Trouser")
FORGET_TROUSERS = {"kind": "classifier", "classifier": "fashion", "score": {"type": "one_minus_prob", "label": "Trouser"}}


@pytest.fixture(scope="module")
def server(base_home, fashion_home, tmp_path_factory):
    root = tmp_path_factory.mktemp("fashion-server")
    home = merge_homes(root / "home", base_home, fashion_home)
    lethe_server = LetheServer(home, root / "bentoml").start()
    yield lethe_server
    lethe_server.stop()


def test_forgetting_trousers_over_http_while_the_digits_keep_serving(server):
    models = {m["model"]: m for m in server.client.get("/models").json()["models"]}
    assert models["fashion"]["domain"] == "fashion-mnist" and models["digits"]["domain"] == "digits"
    base = models["fashion"]["active"]
    digits_version, digits_images, _ = server.images(16, seed=3, model="digits")

    spec = {"name": "forget-trousers", "sets": [FORGET_TROUSERS],
            # 4 epochs judged every 500 samples left a retained class at 0.43 of its share
            # (rejected); 6 epochs at 0.54, 8 epochs at 0.62 (the gate: 0.5)
            "hyperparameters": {"epochs": 8, "monitor_samples": 1000},
            # no attacks: they are the benchmark's on Fashion-MNIST and tests/test_attacks.py's on the digits
            "gates": {"eval_samples": 3000, "max_invalidity": 0.01, "attack_starts": 0, "inversion_targets": 0}}
    reply = server.client.post("/admin/redactions?model=fashion", json=spec, headers=server.auth)
    assert reply.status_code == 202, reply.text
    assert reply.json()["parent"] == base and reply.json()["method"] == "kong-classifier"

    answers: list[int] = []
    stop = threading.Event()

    def sample_digits() -> None:  # the other model keeps serving the whole time (5 requests a second)
        while not stop.wait(0.2):
            answers.append(server.generate(n=4, seed=1, model="digits").status_code)

    sampler = threading.Thread(target=sample_digits, daemon=True)
    sampler.start()
    try:
        job = server.wait_job(reply.json()["job_id"], timeout=1800)
    finally:
        stop.set()
        sampler.join(30)
    before, after = job["metrics"]["before"], job["metrics"]["after"]
    gates = {g["name"]: g for g in job["metrics"]["gates"]}
    print(json.dumps({"judge": [before["judge_invalidity"], after["judge_invalidity"]],
                      "guide": [before["invalidity"], after["invalidity"]],
                      "fid": [before["filtered_fid"], after["fid"]], "balance": gates["class_balance"]["value"]}))
    assert job["state"] == "promoted", job.get("reason")
    assert after["judged_by"]["judge_invalidity"] == "judge:fashion-mnist"
    assert 0.05 <= before["judge_invalidity"] <= 0.15  # about a tenth of the parent's samples are trousers
    assert after["judge_invalidity"] <= 0.01
    assert after["fid"] <= 2 * before["filtered_fid"]  # judge features, against the parent filtered by the judge
    assert gates["class_balance"]["value"] >= 0.5
    new = job["version"]
    server.wait_serving(new, timeout=10, model="fashion")
    assert answers and set(answers) == {200}
    version, images, _ = server.images(16, seed=3, model="digits")
    assert version == digits_version and torch.equal(images, digits_images)


def _marks_on_trousers(home: Path) -> dict:
    """A person's marks: the samples of seed 31 (n 1024) the guide calls trousers."""
    registry = Registry(home)
    generator = registry.load_generator(registry.active("fashion")).eval()
    guide = registry.load_classifier("fashion").eval()
    with torch.no_grad():
        indices = (guide(generator(latents(1024, generator.latent_dim, 31))).argmax(1) == TROUSER).nonzero()
    return {"kind": "feedback", "marked": {"seed": 31, "n": 1024, "indices": indices.flatten().tolist()}}


# kong-validity's first epoch took the judge's trouser share from 8 % to 3.6 %, too near half
SMALL = {"epochs": 2, "monitor_samples": 300}
# Kong Alg. 3 (kong-classifier) is the HTTP test above; each of these is the CLI's.
RUNS = {
    "kong-data": ([{"kind": "data", "files": ["trousers.npz"]}], SMALL),
    "kong-validity": ([{"kind": "validity", "rule": {"type": "classifier_label", "classifier": "fashion",
                                                      "labels": ["Trouser"]}}], SMALL),
    "adapt-then-unlearn": ([FORGET_TROUSERS], {"epochs": 2, "adapt_epochs": 3, "generated_samples": 2000,
                                               "monitor_samples": 300}),
    "feedback": (None, {"steps": 200, "check_every": 100, "monitor_samples": 300}),
}


@pytest.mark.parametrize("method", list(RUNS))
def test_every_generator_method_runs_on_fashion(method, fashion_copy, tmp_path):
    """Each method, on a short budget (no attacks, 1,000 judged samples): it ends with a
    stored version and the judge's numbers, and the share of trousers the judge sees falls."""
    sets, hyperparameters = RUNS[method]
    if sets is None:
        sets = [_marks_on_trousers(fashion_copy)]
    if method == "kong-data":  # the operator uploads the training images to forget: every trouser
        from unlearning.domains.loaded import load_domain

        domain = load_domain(Registry(fashion_copy), "fashion-mnist", device=torch.device("cpu"))
        save_images_npz(domain.train.images[domain.train.labels == TROUSER], tmp_path / "trousers.npz")
    spec = {"name": f"fashion-{method}", "method": method, "sets": sets, "hyperparameters": hyperparameters,
            "gates": {"eval_samples": 1000, "attack_starts": 0, "inversion_targets": 0}}
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    done = lethe(fashion_copy, "redact", tmp_path / "spec.json", "--model", "fashion", "--json", "--quiet",
                 timeout=1200)
    assert done.returncode in (0, 3), done.stderr
    outcome = json.loads(done.stdout)
    assert outcome["method"] == method and Registry(fashion_copy).get(outcome["version"]).domain == "fashion-mnist"
    assert outcome["after"]["extractor"] == "judge:fashion-mnist"
    shares = outcome["before"]["class_shares"][TROUSER], outcome["after"]["class_shares"][TROUSER]
    print(json.dumps({"method": method, "status": outcome["status"], "trouser_share_by_judge": shares,
                      "gates": {g["name"]: g["value"] for g in outcome["gates"]}}))
    assert shares[1] < shares[0] / 2, shares

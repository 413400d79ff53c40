"""The ``lethe`` CLI as a user runs it: real subprocesses against a real LETHE_HOME.

Errors a user can cause end in exit code 2 and one ``lethe: error:`` line naming the
problem (never a traceback) and leave every stored file as it was; a tiny forget job
promotes, writes its report and can be rolled back."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from clirun import assert_user_error, lethe
from conftest import flip_a_byte, snapshot
from unlearning.store import SqliteJobStore
from serving import copy_version
from unlearning.registry import Registry

BASE = "digits-v1"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
ZERO_SCORE = {"kind": "classifier", "classifier": "digits",
              "score": {"type": "one_minus_prob", "label": 0}, "tau": 0.5}


def models_json(home: Path) -> list[dict]:
    done = lethe(home, "models", "--json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def active_of(listing: list[dict], model: str = "digits") -> list[str]:
    return [v["version"] for v in listing if v["active"] and v["model"] == model]


def test_models_lists_the_bootstrap_versions_as_active(quick_copy):
    """Bootstrap hosts two generators, the DCGAN (digits) and the VAE (digits-vae), and an
    image-to-image model (digits-inpainter)."""
    done = lethe(quick_copy, "models")
    assert done.returncode == 0, done.stderr
    lines = sorted(done.stdout.splitlines())
    assert len(lines) == 3, done.stdout
    assert lines[0].startswith("* digits-inpainter-v1 ") and "restoration_fid=" in lines[0]
    assert lines[1].startswith(f"* {BASE} ") and "promoted" in lines[1] and "spec=base" in lines[1]
    assert lines[2].startswith("* digits-vae-v1 ") and "promoted" in lines[2]

    listing = {v["version"]: v for v in models_json(quick_copy)}
    assert sorted(listing) == ["digits-inpainter-v1", BASE, "digits-vae-v1"]
    assert set(listing["digits-inpainter-v1"]["files"]) >= {"inpainter.safetensors", "inpainter.onnx"}
    assert all(v["active"] is True and v["status"] == "promoted" and v["parent"] is None for v in listing.values())
    assert listing[BASE]["model"] == "digits" and listing["digits-vae-v1"]["model"] == "digits-vae"
    assert set(listing[BASE]["files"]) >= {"generator.safetensors", "generator.onnx", "discriminator.safetensors"}
    assert set(listing["digits-vae-v1"]["files"]) >= {"generator.safetensors", "generator.onnx", "encoder.safetensors"}


def test_bootstrap_again_builds_nothing_and_changes_nothing(quick_copy):
    before = snapshot(quick_copy)
    done = lethe(quick_copy, "bootstrap", "--quiet")
    assert done.returncode == 0, done.stderr
    assert "built: nothing (already bootstrapped)" in done.stdout
    assert f"active digits: {BASE}" in done.stdout
    assert snapshot(quick_copy) == before


def test_activate_unknown_version_is_one_line_error(quick_copy):
    before = snapshot(quick_copy)
    done = lethe(quick_copy, "activate", "digits-v99")
    assert_user_error(done, "'digits-v99'", "not found", BASE)
    assert done.stderr.strip().count("\n") == 0
    assert done.stdout == ""
    assert snapshot(quick_copy) == before


BAD_SPECS = {
    "malformed-yaml": ("name: broken\nsets:\n  - kind: classifier\n    score: {type: one_minus_prob, label: 0\n"
                       "method: auto\n", ["not valid JSON or YAML", "line"]),
    "unknown-classifier": (yaml.safe_dump({"name": "unknown-classifier",
                                           "sets": [{**ZERO_SCORE, "classifier": "letters"}]}),
                           ["sets[0].classifier", "'letters'"]),
}


@pytest.mark.parametrize("case", list(BAD_SPECS))
def test_redact_with_a_bad_spec_exits_2_and_changes_nothing(case, quick_copy, tmp_path):
    text, fragments = BAD_SPECS[case]
    path = tmp_path / "spec.yaml"
    path.write_text(text)
    before = snapshot(quick_copy)

    done = lethe(quick_copy, "redact", path)

    assert_user_error(done, *fragments)
    assert snapshot(quick_copy) == before
    assert not (quick_copy / "reports").exists()


def test_eval_prints_json_metrics(quick_copy, tmp_path):
    path = tmp_path / "zero.yaml"
    path.write_text(yaml.safe_dump({"name": "forget-zero", "sets": [
        {"kind": "validity", "rule": {"type": "classifier_label", "classifier": "digits", "labels": [0]}}]}))
    before = snapshot(quick_copy)

    done = lethe(quick_copy, "eval", BASE, "--samples", "500", "--json", "--spec", path)

    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["version"] == BASE and result["samples"] == 500
    assert 0.0 <= result["invalidity"] <= 1.0
    assert result["fid"] > 0 and 1.0 <= result["inception_score"] <= 10.0
    assert result["extractor"] == "judge:digits"  # FID in the features of the domain's judge
    assert len(result["class_shares"]) == 10 and abs(sum(result["class_shares"]) - 1) < 1e-6
    assert snapshot(quick_copy) == before


def test_redact_promotes_reports_and_rolls_back(quick_copy, tmp_path):
    path = tmp_path / "forget-zero.yaml"
    path.write_text(yaml.safe_dump({
        "name": "forget-zero-tiny", "sets": [ZERO_SCORE],
        "hyperparameters": {"epochs": 1, "monitor_samples": 200},
        "gates": {"eval_samples": 300, "max_invalidity": 1.0, "max_fid_ratio": 1e6,
                  "min_class_share_ratio": 0.0},
    }))

    done = lethe(quick_copy, "redact", path, "--quiet")

    assert done.returncode == 0, (done.stdout, done.stderr)
    assert "Traceback" not in done.stderr
    assert "digits-v2 (kong-classifier, from digits-v1): PROMOTED and active" in done.stdout

    report = quick_copy / "reports" / "forget-zero-tiny"
    assert f"report: {report}/index.html" in done.stdout
    for name in ("before.png", "after.png", "invalidity.png"):
        assert (report / name).read_bytes().startswith(PNG_SIGNATURE), name
    metrics = json.loads((report / "metrics.json").read_text())
    assert metrics["version"] == "digits-v2" and metrics["status"] == "promoted"
    assert metrics["after"]["samples"] == 300 and {g["name"] for g in metrics["gates"]} >= {"invalidity",
                                                                                             "onnx_parity"}
    page = (report / "index.html").read_text()
    assert "digits-v2" in page and 'src="before.png"' in page and 'src="invalidity.png"' in page

    listing = lethe(quick_copy, "models")
    assert listing.returncode == 0, listing.stderr
    lines = {line[2:].split()[0]: line for line in listing.stdout.splitlines()}  # "* " marks the active one
    assert lines["digits-v2"].startswith("* ") and "parent=digits-v1" in lines["digits-v2"]
    assert lines[BASE].startswith("  ")

    rollback = lethe(quick_copy, "activate", BASE)
    assert rollback.returncode == 0, rollback.stderr
    assert rollback.stdout.strip() == f"active digits: {BASE}"
    assert active_of(models_json(quick_copy)) == [BASE]

    # both are in the audit trail, as the service's jobs and activations would be
    rolled_back, promoted = SqliteJobStore(quick_copy / "jobs.sqlite").audit_log()
    assert (promoted.action, promoted.version, promoted.parent, promoted.spec_name) == (
        "promoted", "digits-v2", BASE, "forget-zero-tiny")
    assert promoted.actor.startswith("cli:") and len(promoted.spec_hash) == 64
    assert promoted.detail == {"activated": True, "method": "kong-classifier", "reason": None, "offline": True}
    assert (rolled_back.action, rolled_back.version, rolled_back.detail["previous"]) == ("activate", BASE, "digits-v2")


def test_activate_a_corrupted_version_names_the_file(quick_copy):
    registry = Registry(quick_copy)
    assert copy_version(quick_copy, BASE) == "digits-v2"
    registry.verify("digits-v2")  # intact before the damage
    onnx = quick_copy / "versions" / "digits-v2" / "generator.onnx"
    flip_a_byte(onnx, offset=-10)
    before = snapshot(quick_copy)

    done = lethe(quick_copy, "activate", "digits-v2")

    assert_user_error(done, "digits-v2/generator.onnx", "checksum")
    assert snapshot(quick_copy) == before
    assert registry.active("digits") == BASE


def test_worker_starts_small_and_stops_on_sigterm(tmp_path):
    """`lethe worker` (the job worker alone, as on a GPU node): it says it is ready without
    importing torch (each job gets a process of its own) and a SIGTERM stops it cleanly."""
    import signal
    import time

    import psutil

    process = subprocess.Popen([sys.executable, "-m", "service.cli", "worker"],
                               env={**os.environ, "LETHE_HOME": str(tmp_path)},
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 60
        while not (tmp_path / "jobs.sqlite").exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(1.0)  # past its first poll for jobs
        assert process.poll() is None
        rss_mb = psutil.Process(process.pid).memory_info().rss / 2**20
        assert rss_mb < 150, f"the job worker holds {rss_mb:.0f} MB between jobs"
    finally:
        process.send_signal(signal.SIGTERM)
        out, _ = process.communicate(timeout=30)
    assert process.returncode == 0, out
    assert "ready; each job runs in a process of its own" in out and "Traceback" not in out, out

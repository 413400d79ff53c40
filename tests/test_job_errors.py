"""Bad input to a forget job gets a clear error naming the problem, and nothing stored
changes: every case goes through ``run_redaction`` (the code the CLI and the service run)
against a real LETHE_HOME on disk, and every file under it is byte-identical afterwards.

One tiny job that does train (1 epoch, 200 gate samples) shows the other side: exactly
one complete version appears, and gates it cannot pass keep it as *rejected* without
moving the active pointer."""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import snapshot
from unlearning.errors import InputDataError, IntegrityError, LetheError, NotFoundError, SpecError
from unlearning.jobs import run_redaction
from unlearning.registry import Registry

BASE = "digits-v1"  # what bootstrap registers and activates
INPAINTER = "digits-inpainter"
ZERO_SCORE = {"kind": "classifier", "classifier": "digits",
              "score": {"type": "one_minus_prob", "label": 0}, "tau": 0.5}


def spec(**overrides) -> dict:
    """A valid classifier spec forgetting digit 0, with ``overrides`` on top."""
    return {"name": "bad-input", "sets": [ZERO_SCORE], **overrides}


def _png(side: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.full((side, side), 200, np.uint8), "L").save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture
def uploads(tmp_path) -> Path:
    """The upload folder a job reads: files of the wrong size, and text posing as a PNG."""
    folder = tmp_path / "uploads"
    folder.mkdir()
    with zipfile.ZipFile(folder / "mnist28.zip", "w") as zf:
        zf.writestr("first.png", _png(28))
        zf.writestr("second.png", _png(28))
    np.savez_compressed(folder / "sixteen.npz", images=np.zeros((5, 16, 16), np.uint8))
    (folder / "x.png").write_bytes(b"these are the words of a text file, not an image\n")
    # a correctly shaped file, so that the data cases differ from a valid upload only in
    # what each is about
    np.savez_compressed(folder / "good.npz", images=np.zeros((5, 8, 8), np.uint8))
    return folder


def _corrupt(home: Path) -> None:
    path = home / "versions" / BASE / "generator.safetensors"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01  # one bit of one weight
    path.write_bytes(bytes(data))


# (spec, run_redaction keyword arguments, change to the home before the job, error class,
#  fragments the message must contain)
CASES = {
    "unknown-kind": (spec(sets=[{"kind": "magic", "files": ["good.npz"]}]), {}, None, SpecError,
                     ["sets[0].kind", "'magic'"]),
    "unknown-method": (spec(method="kong-foo"), {}, None, SpecError, ["method", "'kong-foo'"]),
    "empty-sets": (spec(sets=[]), {}, None, SpecError, ["sets", "at least 1 item"]),
    "tau-out-of-range": (spec(sets=[{**ZERO_SCORE, "tau": 1.5}]), {}, None, SpecError,
                         ["sets[0].tau", "1.5"]),
    "typo-key": (spec(sets=[{**{k: v for k, v in ZERO_SCORE.items() if k != "tau"}, "tua": 0.5}]), {}, None,
                 SpecError, ["sets[0].tua", "'tau'"]),
    "unknown-classifier-in-rule": (
        spec(sets=[{"kind": "validity", "rule": {"type": "any_of", "rules": [
            {"type": "classifier_label", "classifier": "digits", "labels": [1]},
            {"type": "classifier_label", "classifier": "letters", "labels": [0]}]}}]),
        {}, None, NotFoundError, ["sets[0].rule", "'letters'", "digits"]),
    "unknown-classifier-in-set": (spec(sets=[{**ZERO_SCORE, "classifier": "letters"}]), {}, None,
                                  NotFoundError, ["sets[0].classifier", "'letters'"]),
    "file-not-uploaded": (spec(sets=[{"kind": "data", "files": ["good.npz", "zeros.npz"]}]), {}, None,
                          SpecError, ["'zeros.npz'", "not uploaded"]),
    "zip-of-28x28-pngs": (spec(sets=[{"kind": "data", "files": ["mnist28.zip"]}]), {}, None, InputDataError,
                          ["mnist28.zip", "28x28", "8x8"]),
    "npz-of-16x16": (spec(sets=[{"kind": "data", "files": ["sixteen.npz"]}]), {}, None, InputDataError,
                     ["sixteen.npz", "16x16", "8x8"]),
    "text-named-png": (spec(sets=[{"kind": "data", "files": ["x.png"]}]), {}, None, InputDataError,
                       ["x.png", "not a PNG"]),
    "unknown-hyperparameter": (spec(hyperparameters={"lamda": 0.9}), {}, None, SpecError,
                               ["hyperparameters.lamda"]),
    "hyperparameter-out-of-range": (spec(hyperparameters={"epochs": 0}), {}, None, SpecError,
                                    ["hyperparameters.epochs", "1"]),
    "hyperparameter-out-of-range-float": (spec(hyperparameters={"lam": 1.5}), {}, None, SpecError,
                                          ["hyperparameters.lam"]),
    "negative-fid-gate": (spec(gates={"max_fid_increase": -1000}), {}, None, SpecError,
                          ["gates.max_fid_increase", "-1000"]),
    "adversarial-method-on-the-vae": (spec(method="kong-validity"), {"model": "digits-vae"}, None, SpecError,
                                      ["'kong-validity'", "'digits-vae'", "no", "discriminator", "feedback"]),
    "parent-of-another-model": (spec(), {"parent": BASE, "model": "digits-vae"}, None, SpecError,
                                [BASE, "belongs to model 'digits'", "digits-vae"]),
    "from-unknown-version": (spec(), {"parent": "digits-v99"}, None, NotFoundError,
                             ["'digits-v99'", "not found", BASE]),
    "corrupted-parent": (spec(), {}, _corrupt, IntegrityError,
                         [f"{BASE}/generator.safetensors", "checksum"]),
    "feedback-without-marks": (spec(method="feedback"), {}, None, SpecError, ["'feedback'", "needs a 'feedback' set"]),
    "feedback-set-for-kong": (spec(method="kong-validity", sets=[{"kind": "feedback", "marked": {
                              "seed": 7, "n": 64, "indices": [3, 9]}}]),
                              {}, None, SpecError, ["feedback", "kong-validity", "adapt-then-unlearn"]),
    "i2i-method-on-a-generator": (spec(method="i2i-encoder"), {}, None, SpecError,
                                  ["'i2i-encoder'", "image-to-image", "'digits' is a generator"]),
    "generator-method-on-the-inpainter": (spec(method="kong-classifier"), {"model": INPAINTER}, None, SpecError,
                                          ["'kong-classifier'", f"'{INPAINTER}'", "i2i-encoder"]),
    "marks-for-the-inpainter": (spec(sets=[{"kind": "feedback", "marked": {"seed": 7, "n": 64, "indices": [3]}}]),
                                {"model": INPAINTER}, None, SpecError, ["marks", INPAINTER, "validity"]),
    "retain-file-not-uploaded": (spec(hyperparameters={"retain_files": ["kept.npz"]}), {"model": INPAINTER}, None,
                                 SpecError, ["retain_files", "'kept.npz'", "not uploaded"]),
    "retain-file-of-16x16": (spec(hyperparameters={"retain_files": ["sixteen.npz"]}), {"model": INPAINTER}, None,
                             InputDataError, ["sixteen.npz", "16x16", "8x8"]),
    "retain-file-with-a-path": (spec(hyperparameters={"retain_files": ["../secret.npz"]}), {"model": INPAINTER}, None,
                                SpecError, ["hyperparameters.retain_files", "plain file name"]),
    "i2i-hyperparameter-typo": (spec(hyperparameters={"alhpa": 0.5}), {"model": INPAINTER}, None, SpecError,
                                ["hyperparameters.alhpa", "alpha"]),
    "nothing-to-forget-for-the-inpainter": (
        spec(sets=[{"kind": "validity", "rule": {"type": "boundary", "margin": 1, "max_sum": 1e9}}]),
        {"model": INPAINTER}, None, SpecError, ["nothing to forget"]),
    "feedback-all-marked": (spec(method="adapt-then-unlearn",
                                 sets=[{"kind": "feedback", "marked": {"seed": 7, "n": 3, "indices": [0, 1, 2]}}]),
                            {}, None, SpecError, ["feedback sets", "both marked and unmarked"]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_refused_by_name_and_changes_nothing(case, quick_copy, uploads):
    bad_spec, kwargs, prepare, error, fragments = CASES[case]
    if prepare is not None:
        prepare(quick_copy)
    before = snapshot(quick_copy)

    with pytest.raises(LetheError) as caught:
        run_redaction(bad_spec, registry=Registry(quick_copy), uploads_dir=uploads, **kwargs)

    message = str(caught.value)
    assert isinstance(caught.value, error), f"{type(caught.value).__name__}: {message}"
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"
    assert "Traceback" not in message and len(message) < 600
    assert snapshot(quick_copy) == before
    assert Registry(quick_copy).active("digits") == BASE
    assert sorted(p.name for p in (quick_copy / "versions").iterdir()) == ["digits-inpainter-v1", BASE, "digits-vae-v1"]


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_job_stores_one_complete_version_and_strict_gates_reject_it(quick_copy):
    """(max_fid_increase cannot be negative: that case is refused above; the impossible
    gates here are zero invalidity together with every retained class keeping its share.)"""
    registry = Registry(quick_copy)
    before = snapshot(quick_copy)
    strict = spec(name="too-strict", hyperparameters={"epochs": 1, "monitor_samples": 200},
                  gates={"eval_samples": 200, "max_invalidity": 0.0, "max_fid_increase": 0.0,
                         "min_class_share_ratio": 1.0})

    outcome = run_redaction(strict, registry=registry)

    # exactly one new, complete version folder, and nothing else touched
    versions = sorted(p.name for p in (quick_copy / "versions").iterdir())
    assert versions == ["digits-inpainter-v1", BASE, "digits-v2", "digits-vae-v1"] and outcome.version == "digits-v2"
    after = snapshot(quick_copy)
    assert {k: v for k, v in after.items() if k in before} == before
    new_files = set(after) - set(before)
    assert new_files and all(k.startswith("versions/digits-v2/") for k in new_files)
    folder = quick_copy / "versions" / "digits-v2"
    manifest = json.loads((folder / "manifest.json").read_text())
    on_disk = {p.name for p in folder.iterdir() if p.name != "manifest.json"}
    assert set(manifest["files"]) == on_disk >= {"generator.safetensors", "discriminator.safetensors",
                                                 "generator.onnx", "generator.json"}
    for name, digest in manifest["files"].items():
        assert _sha256(folder / name) == digest, name
    assert manifest["parent"] == BASE and manifest["spec"]["name"] == "too-strict"

    # rejected, with a reason that names exactly the gates that failed
    assert outcome.status == "rejected" and not outcome.activated
    failed = {g.name for g in outcome.gates if not g.passed}
    assert failed and failed <= {"invalidity", "fid_increase", "class_balance"}
    assert "class_balance" in failed  # shares sum to 1: all of them >= the parent's means unchanged
    for gate in outcome.gates:
        assert (f"{gate.name}:" in outcome.reason) == (gate.name in failed), (gate.name, outcome.reason)
    assert manifest["status"] == "rejected" and manifest["reason"] == outcome.reason

    # kept as rejected; the pointer did not move, and activating it needs force
    assert registry.get("digits-v2").status == "rejected"
    assert registry.active("digits") == BASE
    assert after["active/digits.json"] == before["active/digits.json"]
    with pytest.raises(LetheError, match="rejected") as caught:
        registry.activate("digits-v2")
    assert "digits-v2" in str(caught.value)
    assert snapshot(quick_copy) == after
    assert registry.active("digits") == BASE
    registry.activate("digits-v2", force=True)
    assert registry.active("digits") == "digits-v2"

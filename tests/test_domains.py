"""Domains: a dataset with a guide (what specs name and methods train against) and a judge
trained apart (the other half of the training images, another architecture and seed), which
no method sees. Registered from a user's own data (`lethe domain add`: IDX, npz, PNG folders)
with every problem named; bootstrapped for a domain that is not the default; and a method
that fools its guide is caught by the judge's gate."""

from __future__ import annotations

import gzip
import json
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from clirun import assert_user_error, lethe
from conftest import snapshot
from unlearning.data import digits_splits, make_shapes
from unlearning.data.files import to_uint8
from unlearning.domains.register import DATA_FILE, JUDGE, SPLITS_FILE
from unlearning.evaluation import judge, load_domain
from unlearning.jobs import prepare_redaction_set
from unlearning.jobs.pipeline import JOB_TRAINING_IMAGES, TRAINING_SAMPLE_SEED
from unlearning.jobs.gates import generator_gates
from unlearning.models import JudgeClassifier
from unlearning.registry import Registry
from unlearning.spec import load_spec

DIGITS_DCGAN = Path(__file__).parent / "fixtures" / "digits" / "digits"  # the default bootstrap's, committed
ZERO = {"kind": "classifier", "classifier": "digits", "score": {"type": "one_minus_prob", "label": 0}, "tau": 0.5}


def test_the_digits_domain_keeps_its_judge_apart(base_home):
    registry = Registry(base_home)
    domain = registry.verify_domain("digits")
    folder = registry.domain_dir("digits")
    with np.load(folder / SPLITS_FILE) as splits:
        guide_half, judge_half = set(splits["guide"].tolist()), set(splits["judge"].tolist())
    assert guide_half and judge_half and not guide_half & judge_half
    assert len(guide_half) + len(judge_half) == domain.sizes["train"]
    # the judge lives in the domain's folder, so no spec can name it; the guide is a classifier
    assert {c.name for c in registry.list_classifiers()} == {"digits"} and domain.guide == "digits"
    assert f"{JUDGE}.safetensors" in domain.files and DATA_FILE not in domain.files  # digits are read in place
    loaded = load_domain(registry, "digits", device=torch.device("cpu"))
    assert isinstance(loaded.judge, JudgeClassifier) and type(loaded.guide) is not type(loaded.judge)
    for role in ("guide", "judge"):
        assert domain.metrics[role]["held_out_accuracy"] >= 0.95
    listed = lethe(base_home, "domains", "--json")
    assert listed.returncode == 0, listed.stderr
    (entry,) = json.loads(listed.stdout)
    assert entry["name"] == "digits" and set(entry["models"]) == {"digits", "digits-vae", "digits-inpainter"}


def test_a_job_reads_the_same_seeded_sample_of_a_large_training_split(base_home):
    """What a job reads of a training split larger than its cap: the same rows every time,
    each image still with its own label; a split within the cap is read whole."""
    domain = load_domain(Registry(base_home), "digits", device=torch.device("cpu"))
    assert len(domain.train) < JOB_TRAINING_IMAGES and domain.with_training_sample(JOB_TRAINING_IMAGES, 1) is domain
    first, again = (domain.with_training_sample(300, TRAINING_SAMPLE_SEED) for _ in range(2))
    assert len(first.train) == 300 and torch.equal(first.train.images, again.train.images)
    rows = {image.numpy().tobytes(): int(label) for image, label in zip(domain.train.images, domain.train.labels)}
    assert all(rows[image.numpy().tobytes()] == int(label) for image, label in zip(first.train.images, first.train.labels))
    assert not torch.equal(first.train.images, domain.with_training_sample(300, TRAINING_SAMPLE_SEED + 1).train.images)


def _idx(path: Path, array: np.ndarray) -> None:
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as fh:
        fh.write(header + array.astype(np.uint8).tobytes())


def _digits_idx(folder: Path) -> Path:
    """scikit-learn's digits written as MNIST-style IDX files (train and t10k pairs)."""
    folder.mkdir(parents=True)
    train, held_out = digits_splits()
    for prefix, part in (("train", train), ("t10k", held_out)):
        _idx(folder / f"{prefix}-images-idx3-ubyte.gz", to_uint8(part.images)[:, 0])
        _idx(folder / f"{prefix}-labels-idx1-ubyte.gz", part.labels.numpy())
    return folder


def _shapes_folder(folder: Path, n: int = 1200) -> Path:
    """Procedural RGB shapes at 8x8, one sub-folder per colour."""
    data = make_shapes(n, resolution=8, seed=3)
    pixels = to_uint8(data.images)
    for i, colour in enumerate(data.attributes["colour"].tolist()):
        target = folder / ["red", "green", "blue"][colour]
        target.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.moveaxis(pixels[i], 0, -1)).save(target / f"{i:05d}.png")
    return folder


def _redact(home: Path, tmp_path: Path, spec: dict, *args: str) -> dict:
    spec_path = tmp_path / f"{spec['name']}.json"
    spec_path.write_text(json.dumps(spec))
    done = lethe(home, "redact", spec_path, "--json", "--quiet", *args, timeout=900)
    assert done.returncode in (0, 3), done.stderr
    return json.loads(done.stdout)


def test_a_folder_of_rgb_pngs_becomes_a_domain_whose_judge_grades_a_redaction(tmp_path):
    """`lethe domain add` on a folder of RGB PNGs (shapes, one sub-folder per colour): the
    images are copied in, the labels are the folders' names, both classifiers pass. Then
    bootstrap trains the domain's DCGAN, and a classifier spec naming a colour by name
    forgets it, promoted, judged by the new domain's judge.

    8x8, because a user's DCGAN takes its full schedule: at 16x16 the same run passes
    (guide 27 % -> 0.03 %, judge 28 % -> 0.13 %) but pre-trains for 140 s instead of 70 s.
    Red is not the colour forgotten: that 16x16 DCGAN draws about 15 % near-empty images,
    which the guide calls blue and the judge red, so forgetting red fools the guide
    (guide 0.2 %, judge 11 %: rejected by the judge's gate, rightly)."""
    home = tmp_path / "home"
    added = lethe(home, "domain", "add", "shapes", "--data", _shapes_folder(tmp_path / "shapes"), "--json",
                  "--quiet", timeout=900)
    assert added.returncode == 0, added.stderr
    manifest = json.loads(added.stdout)
    assert manifest["guide"] == "shapes" and DATA_FILE in manifest["files"]  # a user's data is copied in
    assert manifest["labels"] == ["blue", "green", "red"] and manifest["image_shape"] == [3, 8, 8]
    assert min(manifest["metrics"]["guide"]["held_out_accuracy"], manifest["metrics"]["judge"]["held_out_accuracy"]) >= 0.9
    built = lethe(home, "bootstrap", "--domain", "shapes", "--quiet", timeout=900)
    assert built.returncode == 0, built.stderr

    spec = {"name": "forget-green", "sets": [{"kind": "classifier", "classifier": "shapes",
                                              "score": {"type": "one_minus_prob", "label": "green"}}],
            # every default but these: the guide's invalidity ended at 0.23 % (limit 0.1 %)
            "gates": {"eval_samples": 3000, "max_invalidity": 0.005, "attack_starts": 0}}
    outcome = _redact(home, tmp_path, spec)
    gates = {g["name"]: g for g in outcome["gates"]}
    print(json.dumps({"gates": {k: g["value"] for k, g in gates.items()}, "before": outcome["before"].get("judge_invalidity")}))
    assert outcome["status"] == "promoted", outcome["reason"]
    assert outcome["after"]["judged_by"]["judge_invalidity"] == "judge:shapes"
    assert outcome["before"]["judge_invalidity"] >= 0.2 and outcome["after"]["judge_invalidity"] <= 0.01
    assert gates["fid_ratio"]["passed"] and gates["class_balance"]["passed"]


def test_a_users_idx_dataset_becomes_a_domain_whose_judge_grades_a_redaction(tmp_path):
    """`lethe domain add` on an IDX pair (digits, 8x8 grey); the user's own pre-trained DCGAN
    imported into it (`lethe import`: the committed digits DCGAN, trained on the same images;
    the PNG test above has bootstrap pre-train one); a classifier spec naming a label by name
    forgets it, promoted, judged by the new domain's judge. Bootstrap's ``--epochs`` sets
    the schedule of the DCGAN it builds beside it."""
    home, name, forget = tmp_path / "home", "handwriting", "3"
    added = lethe(home, "domain", "add", name, "--data", _digits_idx(tmp_path / "idx"), "--json", "--quiet",
                  timeout=900)
    assert added.returncode == 0, added.stderr
    manifest = json.loads(added.stdout)
    assert manifest["guide"] == name and DATA_FILE in manifest["files"]
    assert min(manifest["metrics"]["guide"]["held_out_accuracy"], manifest["metrics"]["judge"]["held_out_accuracy"]) >= 0.9
    imported = lethe(home, "import", "mine", "--domain", name, DIGITS_DCGAN)
    assert imported.returncode == 0, imported.stderr
    built = lethe(home, "bootstrap", "--domain", name, "--epochs", "1", "--quiet", timeout=900)
    assert built.returncode == 0, built.stderr
    registry = Registry(home)
    assert registry.get(registry.active(name)).metrics["pretraining"]["epochs"] == 1

    spec = {"name": f"forget-{forget}", "sets": [{"kind": "classifier", "classifier": name,
                                                  "score": {"type": "one_minus_prob", "label": forget}}],
            # Kong's defaults took the 3s from 8.4 % to 0.6-0.8 % (judge 8.7-9.1 % to 0.5-0.7 %);
            # the judge's limit is the default 1 %
            "gates": {"eval_samples": 5000, "max_invalidity": 0.015, "attack_starts": 32}}
    outcome = _redact(home, tmp_path, spec, "--model", "mine")
    gates = {g["name"]: g for g in outcome["gates"]}
    print(json.dumps({"gates": {k: g["value"] for k, g in gates.items()}, "before": outcome["before"].get("judge_invalidity")}))
    assert outcome["status"] == "promoted", outcome["reason"]
    assert registry.get(outcome["version"]).domain == name
    assert outcome["after"]["judged_by"]["judge_invalidity"] == f"judge:{name}"
    assert outcome["before"]["judge_invalidity"] >= 0.05 and outcome["after"]["judge_invalidity"] <= 0.01


def _bad_folder(tmp_path: Path, problem: str) -> tuple[Path, list[str]]:
    root = tmp_path / problem
    (root / "a").mkdir(parents=True)
    pixel = np.zeros((8, 8), np.uint8)
    for i in range(6):
        Image.fromarray(pixel).save(root / "a" / f"{i}.png")
    if problem == "one class":
        return root, ["has one class", "'a'"]
    (root / "b").mkdir()
    for i in range(6):
        Image.fromarray(pixel).save(root / "b" / f"{i}.png")
    if problem == "mixed sizes":
        Image.fromarray(np.zeros((9, 9), np.uint8)).save(root / "b" / "5.png")
        return root, ["'b/5.png' is 9x9 pixels", "'a/0.png' is 8x8"]
    if problem == "corrupt file":
        (root / "b" / "3.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
        return root, ["'b/3.png'"]
    if problem == "too few images":
        for i in range(4):
            (root / "b" / f"{i}.png").unlink()
        return root, ["class 'b' has 2 training images"]
    raise AssertionError(problem)


def _bad_idx(tmp_path: Path, problem: str) -> tuple[Path, list[str]]:
    folder = tmp_path / problem
    folder.mkdir()
    images = np.zeros((20, 8, 8), np.uint8)
    _idx(folder / "train-images-idx3-ubyte.gz", images)
    if problem == "no labels":
        return folder, ["train-images", "no labels file"]
    _idx(folder / "train-labels-idx1-ubyte.gz", np.arange(20) % 3)
    if problem == "truncated":
        raw = (folder / "train-images-idx3-ubyte.gz").read_bytes()
        (folder / "train-images-idx3-ubyte.gz").write_bytes(raw[: len(raw) // 2])
        return folder, ["train-images-idx3-ubyte.gz"]
    raise AssertionError(problem)


@pytest.mark.parametrize("problem", ["one class", "mixed sizes", "corrupt file", "too few images", "no labels",
                                     "truncated"])
def test_bad_datasets_are_refused_naming_the_file_and_nothing_is_registered(problem, quick_copy, tmp_path):
    data, fragments = (_bad_idx if problem in ("no labels", "truncated") else _bad_folder)(tmp_path, problem)
    before = snapshot(quick_copy)
    done = lethe(quick_copy, "domain", "add", "mine", "--data", data, "--quiet")
    assert_user_error(done, *fragments)
    assert snapshot(quick_copy) == before


def test_a_spec_must_name_labels_the_classifier_has_and_classifiers_of_its_domain(quick_copy, tmp_path):
    before = snapshot(quick_copy)
    cases = [
        ({"kind": "validity", "rule": {"type": "classifier_label", "classifier": "digits", "labels": ["Trouser"]}},
         ["'Trouser' is not a label of classifier 'digits'", "its labels: 0, 1, 2"]),
        ({"kind": "classifier", "classifier": "digits", "score": {"type": "one_minus_prob", "label": 12}},
         ["label 12 is out of range", "10 classes"]),
    ]
    for number, (spec_set, fragments) in enumerate(cases):
        spec = tmp_path / f"bad-{number}.json"
        spec.write_text(json.dumps({"name": "bad", "sets": [spec_set]}))
        assert_user_error(lethe(quick_copy, "redact", spec, "--quiet"), *fragments)
    assert snapshot(quick_copy) == before


class _FoolsTheGuide(torch.nn.Module):
    """The base generator whose every image is nudged (PGD on the guide's logit margin, at
    most 0.5 per pixel, stopping once the guide's margin against "0" reaches 1) until the
    guide stops seeing a zero: a candidate that games what a method trains against. The
    smallest nudge that flips the guide mostly does not flip a classifier it never saw
    (measured on 2,000 samples: guide 10.6 % -> 0.0 %, judge 10.1 % -> 6.9 %)."""

    def __init__(self, generator: torch.nn.Module, guide: torch.nn.Module, epsilon: float = 0.5, steps: int = 40):
        super().__init__()
        self.generator, self.guide, self.epsilon, self.steps = generator, guide, epsilon, steps
        self.latent_dim = generator.latent_dim

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        # the judging loop samples in inference mode, where nothing has a gradient
        with torch.inference_mode(False), torch.enable_grad():
            images = self.generator(z.clone()).detach()
            delta = torch.zeros_like(images)
            for _ in range(self.steps):
                delta.requires_grad_(True)
                logits = self.guide((images + delta).clamp(-1, 1))
                others = logits.clone()
                others[:, 0] = float("-inf")
                margin = (logits[:, 0] - others.max(1).values).clamp(min=-1.0)
                (grad,) = torch.autograd.grad(margin.sum(), delta)
                delta = (delta - self.epsilon / 8 * grad.sign()).clamp(-self.epsilon, self.epsilon).detach()
            return (images + delta).clamp(-1, 1)


def test_a_candidate_that_fools_its_guide_is_rejected_by_the_judge(base_home):
    """A candidate whose images are adversarial examples for the guide (each one nudged until
    the guide's "0" probability falls): what the guide calls invalid falls, what the judge
    calls invalid does not, and the judge_invalidity gate rejects the candidate the
    invalidity gate passes."""
    registry = Registry(base_home)
    parent = registry.get(registry.active("digits"))
    domain = load_domain(registry, parent, device=torch.device("cpu"))
    spec = load_spec({"name": "forget-zero", "sets": [ZERO], "gates": {"max_invalidity": 0.02,
                                                                        "eval_samples": 5000}})
    sets = prepare_redaction_set(spec, registry, domain, None)
    generator = registry.load_generator(parent.version)
    candidate = _FoolsTheGuide(generator, domain.guide).eval()
    retained, _ = sets.omega.training_split(domain.train.images)
    reference = domain.reference(retained)
    before = judge(generator, domain, n=5000, seed=1, omega=sets.omega, judged=sets.judged, reference=reference,
                   filtered=True)
    after = judge(candidate, domain, n=5000, seed=1, omega=sets.omega, judged=sets.judged, reference=reference)
    gates = {g.name: g for g in generator_gates(spec, before, after, parity=0.0)}
    print(json.dumps({"guide": [before["invalidity"], after["invalidity"]],
                      "judge": [before["judge_invalidity"], after["judge_invalidity"]]}))
    assert after["invalidity"] <= 0.02 < before["invalidity"] and gates["invalidity"].passed
    assert after["judge_invalidity"] > 0.05 and not gates["judge_invalidity"].passed

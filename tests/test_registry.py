"""The model registry: real files under a temporary LETHE_HOME, small untrained models."""

from __future__ import annotations

import json
import multiprocessing
import threading
from pathlib import Path

import pytest
import torch

from conftest import flip_a_byte
from unlearning.errors import IntegrityError, LetheError, NotFoundError
from unlearning.models import Classifier, ClassifierConfig, DCGANConfig, Discriminator, Generator, save_model
from unlearning.registry import ClassifierManifest, Registry, VersionManifest


def _generator(seed: int = 0) -> Generator:
    torch.manual_seed(seed)
    return Generator(DCGANConfig()).eval()


def _writer(seed: int = 0):
    def write(folder: Path) -> None:
        torch.manual_seed(seed)
        config = DCGANConfig()
        save_model(Generator(config), folder, "generator")
        save_model(Discriminator(config), folder, "discriminator")

    return write


def _tiny_writer(text: str):
    def write(folder: Path) -> None:
        (folder / "note.txt").write_text(text)

    return write


def _visible(home: Path) -> list[str]:
    return sorted(p.name for p in (home / "versions").iterdir())


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("LETHE_HOME", str(tmp_path / "lethe"))
    return tmp_path / "lethe"


def test_create_get_list_activate_round_trip(home):
    registry = Registry()  # LETHE_HOME from the environment
    assert registry.home == home
    assert registry.list_versions() == [] and registry.models() == [] and registry.active("digits") is None

    first = registry.create_version("digits", _writer(0), dataset="digits8", classifier="digits-clf")
    assert isinstance(first, VersionManifest)
    assert first.version == "digits-v1" and first.status == "candidate" and first.parent is None
    assert set(first.files) == {
        "generator.safetensors", "generator.json", "discriminator.safetensors", "discriminator.json"
    }
    assert all(len(digest) == 64 for digest in first.files.values())
    assert (home / "versions" / "digits-v1" / "manifest.json").is_file()

    spec = {"kind": "redaction", "labels": [3]}
    second = registry.create_version("digits", _writer(1), parent="digits-v1", spec=spec, metrics={"fid": 1.5})
    assert second.version == "digits-v2" and second.parent == "digits-v1" and second.spec == spec
    assert registry.get("digits-v2") == second
    assert registry.version_dir("digits-v2") == home / "versions" / "digits-v2"
    assert [m.version for m in registry.list_versions()] == ["digits-v1", "digits-v2"]
    assert [m.version for m in registry.list_versions("digits")] == ["digits-v1", "digits-v2"]
    assert registry.list_versions("faces") == []

    registry.activate("digits-v2")
    assert registry.active("digits") == "digits-v2"
    pointer = json.loads((home / "active" / "digits.json").read_text())
    assert pointer["version"] == "digits-v2" and "activated_at" in pointer
    assert registry.models() == ["digits"]

    generator = registry.load_generator("digits-v2")
    assert isinstance(generator, Generator) and not generator.training
    with torch.no_grad():
        z = torch.randn(4, 128)
        assert torch.equal(generator(z), _generator(1)(z))
    assert isinstance(registry.load_discriminator("digits-v1"), Discriminator)
    with pytest.raises(NotFoundError, match="no component 'encoder'"):
        registry.load_component("digits-v1", "encoder")
    with pytest.raises(NotFoundError, match="digits-v9"):
        registry.create_version("digits", _writer(), parent="digits-v9")


def test_active_pointer_survives_restart(home):
    Registry().create_version("digits", _writer())
    Registry().activate("digits-v1")
    restarted = Registry(home)
    assert restarted.active("digits") == "digits-v1"
    assert restarted.get("digits-v1").model == "digits"


def test_ids_increment_per_model(home):
    registry = Registry()
    ids = [registry.create_version("digits", _tiny_writer(str(i))).version for i in range(3)]
    assert ids == ["digits-v1", "digits-v2", "digits-v3"]
    assert registry.create_version("faces", _tiny_writer("x")).version == "faces-v1"
    assert registry.create_version("digits", _tiny_writer("y")).version == "digits-v4"
    assert registry.models() == ["digits", "faces"]


def test_concurrent_threads_get_distinct_ids(home):
    registry = Registry()
    results: list[str] = []
    errors: list[BaseException] = []

    def work(i: int) -> None:
        try:
            for j in range(3):
                results.append(Registry(home).create_version("digits", _tiny_writer(f"{i}-{j}")).version)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert sorted(results) == sorted(f"digits-v{n}" for n in range(1, 19))
    assert len(registry.list_versions("digits")) == 18


def _create_in_process(home: str, tag: str, count: int, queue, barrier) -> None:
    registry = Registry(Path(home))
    barrier.wait(timeout=60)  # all processes start creating at the same moment
    for j in range(count):
        queue.put(registry.create_version("digits", _tiny_writer(f"{tag}-{j}")).version)


def test_concurrent_processes_get_distinct_ids(home):
    Registry(home)
    ctx = multiprocessing.get_context("spawn")
    queue, barrier = ctx.Queue(), ctx.Barrier(3)
    procs = [
        ctx.Process(target=_create_in_process, args=(str(home), f"p{i}", 4, queue, barrier)) for i in range(3)
    ]
    for proc in procs:
        proc.start()
    ids = [queue.get(timeout=120) for _ in range(12)]  # 3 processes x 4 versions
    for proc in procs:
        proc.join(timeout=30)
        assert proc.exitcode == 0
    assert len(set(ids)) == 12
    assert sorted(ids, key=lambda v: int(v.rsplit("v", 1)[1])) == [f"digits-v{n}" for n in range(1, 13)]
    listed = Registry(home).list_versions("digits")
    assert len(listed) == 12
    # every version holds what its own writer wrote: no folder was shared
    assert len({(home / "versions" / m.version / "note.txt").read_text() for m in listed}) == 12


def test_tampered_file_is_refused(home):
    registry = Registry()
    registry.create_version("digits", _writer(0))
    registry.create_version("digits", _writer(1))
    registry.activate("digits-v1")
    registry.verify("digits-v2")

    flip_a_byte(home / "versions" / "digits-v2" / "generator.safetensors", offset=-1)
    message = "digits-v2/generator.safetensors: checksum mismatch"
    with pytest.raises(IntegrityError, match=message):
        registry.verify("digits-v2")
    with pytest.raises(IntegrityError, match=message):
        registry.load_generator("digits-v2")
    with pytest.raises(IntegrityError, match=message):
        registry.activate("digits-v2")
    assert registry.active("digits") == "digits-v1"
    assert Registry(home).active("digits") == "digits-v1"
    registry.verify("digits-v1")  # the other version is untouched


def test_missing_file_is_an_integrity_error(home):
    registry = Registry()
    registry.create_version("digits", _writer())
    (home / "versions" / "digits-v1" / "discriminator.json").unlink()
    with pytest.raises(IntegrityError, match="digits-v1/discriminator.json: missing"):
        registry.verify("digits-v1")
    with pytest.raises(IntegrityError, match="digits-v1/discriminator.json"):
        registry.activate("digits-v1")
    assert registry.active("digits") is None


def test_unknown_version_and_missing_manifest_are_not_found(home):
    registry = Registry()
    registry.create_version("digits", _tiny_writer("a"))
    registry.create_version("digits", _tiny_writer("b"))
    with pytest.raises(NotFoundError, match=r"'digits-v7' not found.*digits-v1, digits-v2"):
        registry.get("digits-v7")
    for bad in ("nonsense", "../digits-v1", ".tmp-1-x", ""):
        with pytest.raises(NotFoundError):
            registry.get(bad)
    with pytest.raises(NotFoundError):
        registry.activate("digits-v7")

    (home / "versions" / "digits-v2" / "manifest.json").unlink()
    with pytest.raises(NotFoundError, match="digits-v2"):
        registry.get("digits-v2")
    with pytest.raises(NotFoundError):
        registry.load_generator("digits-v2")
    assert [m.version for m in registry.list_versions()] == ["digits-v1"]
    # the number is never handed out again
    assert registry.create_version("digits", _tiny_writer("c")).version == "digits-v3"


def test_crash_mid_create_leaves_nothing_visible(home):
    registry = Registry()
    registry.create_version("digits", _writer())
    before_listing = registry.list_versions()
    before_dirs = _visible(home)

    def crash(folder: Path) -> None:
        save_model(_generator(), folder, "generator")
        (folder / "discriminator.safetensors").write_bytes(b"half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        registry.create_version("digits", crash)
    assert registry.list_versions() == before_listing
    assert _visible(home) == before_dirs  # not even a temporary folder is left
    assert registry.create_version("digits", _tiny_writer("next")).version == "digits-v2"


def test_stale_temporary_folder_from_a_killed_process_is_removed(home):
    registry = Registry()
    stale = home / "versions" / ".tmp-2147483646-deadbeef"  # no such process
    stale.mkdir()
    (stale / "generator.safetensors").write_bytes(b"partial")
    assert registry.list_versions() == []
    registry.create_version("digits", _tiny_writer("a"))
    assert not stale.exists()
    assert _visible(home) == ["digits-v1"]


def test_manifest_is_written_by_the_registry_only(home):
    registry = Registry()

    def sneaky(folder: Path) -> None:
        (folder / "manifest.json").write_text("{}")

    with pytest.raises(LetheError, match="manifest.json"):
        registry.create_version("digits", sneaky)
    with pytest.raises(LetheError, match="not allowed"):
        registry.create_version("../evil", _tiny_writer("x"))
    assert _visible(home) == []


def test_rejected_version_needs_force(home):
    registry = Registry()
    registry.create_version("digits", _writer(0))
    registry.activate("digits-v1")
    rejected = registry.create_version("digits", _writer(1), status="rejected", reason="FID rose by 40%")
    assert rejected.status == "rejected"
    with pytest.raises(LetheError, match="rejected: FID rose by 40%"):
        registry.activate("digits-v2")
    assert registry.active("digits") == "digits-v1"
    registry.activate("digits-v2", force=True)
    assert registry.active("digits") == "digits-v2"

    registry.create_version("digits", _writer(2))
    registry.update("digits-v3", status="rejected", reason="still draws 3s")
    with pytest.raises(LetheError, match="still draws 3s"):
        registry.activate("digits-v3")
    assert registry.active("digits") == "digits-v2"


def test_update_rewrites_manifest_and_keeps_files(home):
    registry = Registry()
    created = registry.create_version("digits", _writer(), metrics={"fid": 2.0})
    updated = registry.update("digits-v1", status="promoted", metrics={"invalidity": 0.01})
    assert updated.status == "promoted"
    assert updated.metrics == {"fid": 2.0, "invalidity": 0.01}
    assert updated.files == created.files
    assert Registry(home).get("digits-v1") == updated
    registry.verify("digits-v1")
    assert not [p for p in (home / "versions" / "digits-v1").iterdir() if p.name.startswith(".")]


def test_corrupt_manifest_is_an_integrity_error(home):
    registry = Registry()
    registry.create_version("digits", _tiny_writer("a"))
    (home / "versions" / "digits-v1" / "manifest.json").write_text("{not json")
    with pytest.raises(IntegrityError, match="digits-v1/manifest.json"):
        registry.get("digits-v1")
    assert registry.list_versions() == []


def test_classifier_round_trip_gives_identical_logits(home):
    registry = Registry()
    torch.manual_seed(0)
    classifier = Classifier(ClassifierConfig(labels=[str(i) for i in range(10)])).eval()
    manifest = registry.register_classifier("digits-clf", classifier, {"accuracy": 0.99})
    assert isinstance(manifest, ClassifierManifest)
    assert manifest.format == "torch" and manifest.labels == [str(i) for i in range(10)]
    assert set(manifest.files) == {"classifier.safetensors", "classifier.json"}

    loaded = Registry(home).load_classifier("digits-clf")
    x = torch.rand(16, 1, 8, 8) * 2 - 1
    with torch.no_grad():
        assert torch.equal(loaded(x), classifier(x))
    assert [m.name for m in registry.list_classifiers()] == ["digits-clf"]
    assert registry.get_classifier("digits-clf").metrics == {"accuracy": 0.99}

    with pytest.raises(LetheError, match="already exists"):
        registry.register_classifier("digits-clf", classifier, {})
    torch.manual_seed(1)
    other = Classifier().eval()
    registry.register_classifier("digits-clf", other, {"accuracy": 0.5}, replace=True)
    with torch.no_grad():
        assert torch.equal(registry.load_classifier("digits-clf")(x), other(x))
    assert _visible_classifiers(home) == ["digits-clf"]

    with pytest.raises(NotFoundError, match="'faces-clf' not found.*digits-clf"):
        registry.load_classifier("faces-clf")

    flip_a_byte(home / "classifiers" / "digits-clf" / "classifier.safetensors", offset=-1)
    with pytest.raises(IntegrityError, match="classifiers/digits-clf/classifier.safetensors"):
        registry.load_classifier("digits-clf")


def _visible_classifiers(home: Path) -> list[str]:
    return sorted(p.name for p in (home / "classifiers").iterdir())


def test_onnx_classifier_is_stored_verified_and_converted(home, tmp_path):
    import warnings

    torch.manual_seed(0)
    classifier = Classifier().eval()
    path = tmp_path / "upload.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # the TorchScript exporter writes Flatten; onnx2torch cannot convert the dynamo
        # exporter's Reshape(allowzero=1)
        torch.onnx.export(
            classifier, (torch.zeros(2, 1, 8, 8),), str(path), input_names=["x"],
            output_names=["logits"], opset_version=17, dynamo=False,
            dynamic_axes={"x": {0: "batch"}, "logits": {0: "batch"}},
        )
    registry = Registry()
    manifest = registry.register_onnx_classifier("uploaded", path, {"accuracy": 0.9}, labels=list("abcdefghij"))
    assert manifest.format == "onnx" and set(manifest.files) == {"classifier.onnx"}
    loaded = registry.load_classifier("uploaded")
    x = torch.rand(8, 1, 8, 8) * 2 - 1
    with torch.no_grad():
        assert torch.allclose(loaded(x), classifier(x), atol=1e-5)

    with pytest.raises(LetheError, match="not a readable ONNX model|invalid ONNX"):
        registry.register_onnx_classifier("garbage", b"\x08\x01 definitely not onnx", {})
    assert _visible_classifiers(home) == ["uploaded"]

    flip_a_byte(home / "classifiers" / "uploaded" / "classifier.onnx")
    with pytest.raises(IntegrityError, match="classifiers/uploaded/classifier.onnx: checksum mismatch"):
        registry.load_classifier("uploaded")

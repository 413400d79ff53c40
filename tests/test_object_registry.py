"""The registry on shared storage: versions, classifiers and domains in S3-compatible object
storage (moto's server), the active pointer and version numbers in PostgreSQL, two registries with
separate LETHE_HOMEs as two instances would have them. Folders are published complete or
not at all (files, then the manifest), downloaded into a verified local cache, and what was
cached stays readable while the object storage is down."""

from __future__ import annotations

import shutil
import threading
from pathlib import Path

import boto3
import pytest

from backends import TcpProxy
from unlearning.errors import ConflictError, IntegrityError, LetheError, NotFoundError
from unlearning.registry import Registry
from unlearning.store import StorageUnavailableError


def _writer(text: str, size: int = 0):
    def write(folder: Path) -> None:
        (folder / "note.txt").write_text(text)
        if size:
            (folder / "weights.bin").write_bytes(text.encode() * (size // max(1, len(text))))

    return write


@pytest.fixture
def shared(postgres, s3, monkeypatch):
    """(database URL, bucket URL) with boto3's variables pointing at the moto server."""
    for key, value in s3.env().items():
        monkeypatch.setenv(key, value)
    return postgres.new_database(), s3.new_bucket()


def _instance(tmp_path: Path, name: str, shared) -> Registry:
    db, bucket = shared
    return Registry(tmp_path / name, database_url_=db, registry_url_=bucket)


def on_every_registry(work, registries: list[Registry]) -> None:
    """``work(registry, i)`` on every registry at once, one thread each (two minutes at most)."""
    threads = [threading.Thread(target=work, args=(r, i)) for i, r in enumerate(registries)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)


def test_two_instances_share_versions_pointers_and_classifiers(shared, tmp_path):
    a, b = _instance(tmp_path, "a", shared), _instance(tmp_path, "b", shared)
    first = a.create_version("digits", _writer("one"), status="promoted")
    assert first.version == "digits-v1"
    assert b.get("digits-v1") == first  # b's home never saw it: read from the bucket
    assert not (tmp_path / "b" / "versions" / "digits-v1").exists()
    assert b.file_path("digits-v1", "note.txt").read_text() == "one"  # downloaded, verified, cached
    assert (tmp_path / "b" / "versions" / "digits-v1" / "manifest.json").is_file()

    second = b.create_version("digits", _writer("two"), parent="digits-v1")
    assert second.version == "digits-v2" and [m.version for m in a.list_versions()] == ["digits-v1", "digits-v2"]
    assert a.update("digits-v2", status="promoted", metrics={"fid": 2.0}).status == "promoted"
    assert b.get("digits-v2").metrics == {"fid": 2.0}  # a manifest's fields change for everyone

    b.activate("digits-v2")
    assert a.active("digits") == "digits-v2" and a.models() == ["digits"]
    assert not (tmp_path / "a" / "active").exists() or not list((tmp_path / "a" / "active").iterdir())

    a.register_onnx_classifier("mine", _tiny_onnx(), labels=["x", "y"])
    assert [c.name for c in b.list_classifiers()] == ["mine"]
    assert b.verify_classifier("mine").labels == ["x", "y"]
    with pytest.raises(LetheError, match="already exists"):
        b.register_onnx_classifier("mine", _tiny_onnx())
    with pytest.raises(NotFoundError, match="digits-v9"):
        b.get("digits-v9")


def test_version_numbers_are_unique_across_instances(shared, tmp_path):
    registries = [_instance(tmp_path, f"i{i}", shared) for i in range(4)]
    made: list[str] = []
    errors: list[BaseException] = []

    def work(registry: Registry, i: int) -> None:
        try:
            for j in range(3):
                made.append(registry.create_version("digits", _writer(f"{i}-{j}")).version)
        except BaseException as exc:  # reported below
            errors.append(exc)

    on_every_registry(work, registries)
    assert not errors, errors
    assert sorted(made, key=lambda v: int(v.rsplit("v", 1)[1])) == [f"digits-v{n}" for n in range(1, 13)]


def test_without_a_database_the_bucket_itself_refuses_a_taken_name(s3, tmp_path, monkeypatch):
    for key, value in s3.env().items():
        monkeypatch.setenv(key, value)
    bucket = s3.new_bucket()
    a = Registry(tmp_path / "a", registry_url_=bucket)
    b = Registry(tmp_path / "b", registry_url_=bucket)
    assert a.create_version("digits", _writer("a")).version == "digits-v1"
    # b lists nothing new in its own home, yet gets v2: the name is arbitrated by the bucket
    assert b.create_version("digits", _writer("b")).version == "digits-v2"
    assert b.file_path("digits-v1", "note.txt").read_text() == "a"


def test_a_new_models_name_is_taken_for_every_instance(shared, s3, tmp_path):
    """``lethe import`` (``new_model``) on several instances at once: one model of a name,
    one version; the others are refused, with or without the database arbitrating."""
    registries = [_instance(tmp_path, f"i{i}", shared) for i in range(4)]
    made: list[str] = []
    refused: list[BaseException] = []

    def work(registry: Registry, i: int) -> None:
        try:
            made.append(registry.create_version("byo", _writer(f"{i}"), status="promoted", new_model=True).version)
        except ConflictError as exc:
            refused.append(exc)

    on_every_registry(work, registries)
    assert made == ["byo-v1"] and len(refused) == 3 and all("'byo' is taken" in str(e) for e in refused)
    assert [m.version for m in registries[3].list_versions("byo")] == ["byo-v1"]

    bucket = s3.new_bucket()  # no database: the bucket refuses the name
    a, b = (Registry(tmp_path / name, database_url_="", registry_url_=bucket) for name in ("a", "b"))
    assert a.create_version("byo", _writer("a"), new_model=True).version == "byo-v1"
    with pytest.raises(ConflictError, match="'byo' is taken"):
        b.create_version("byo", _writer("b"), new_model=True)
    assert [m.version for m in a.list_versions("byo")] == ["byo-v1"]


def test_object_storage_down_mid_upload_leaves_no_version_and_the_cache_serves(shared, s3, tmp_path):
    db, bucket = shared
    proxy = TcpProxy(s3.port)
    url = f"http://127.0.0.1:{proxy.port}"
    import os

    os.environ["AWS_ENDPOINT_URL"] = url  # monkeypatched by `shared`: restored after the test
    from unlearning import registry as registry_module

    registry_module._REMOTES.pop(bucket, None)
    a = Registry(tmp_path / "a", database_url_=db, registry_url_=bucket)
    base = a.create_version("digits", _writer("base"), status="promoted")
    a.activate(base.version)
    a.file_path(base.version, "note.txt")

    cut = threading.Timer(0.3, proxy.stop)
    cut.start()
    try:
        with pytest.raises(StorageUnavailableError, match="cannot be reached|try again"):
            for i in range(200):  # big enough that the cut lands in the middle of an upload
                a.create_version("digits", _writer(f"big-{i}", size=4 << 20))
    finally:
        cut.join()
    # while it is down: what was cached still reads, nothing half-written is listed
    assert a.get(base.version).version == base.version
    assert a.file_path(base.version, "note.txt").read_text() == "base"
    assert [m.version for m in a.list_versions()][0] == base.version
    proxy.start()
    listed = [m.version for m in a.list_versions()]
    for version in listed:
        a.verify(version)  # every listed version is complete: all its files are in the bucket
    client = boto3.client("s3", endpoint_url=url)
    bucket_name, prefix = bucket[len("s3://"):].split("/", 1)
    keys = {o["Key"] for o in client.list_objects_v2(Bucket=bucket_name, Prefix=f"{prefix}/versions/")["Contents"]}
    assert keys == {f"{prefix}/versions/{v}/manifest.json" for v in listed}
    assert a.create_version("digits", _writer("after")).version.startswith("digits-v")  # and it works again
    proxy.stop()


def test_a_corrupted_cached_file_is_downloaded_again_and_a_corrupted_object_is_refused(shared, tmp_path):
    from conftest import flip_a_byte

    a, b = _instance(tmp_path, "a", shared), _instance(tmp_path, "b", shared)
    version = a.create_version("digits", _writer("x" * 1000)).version
    cached = b.file_path(version, "note.txt")
    flip_a_byte(cached)
    assert b.verify(version).version == version and cached.read_text() == "x" * 1000  # fetched afresh

    _, bucket = shared
    bucket_name, prefix = bucket[len("s3://"):].split("/", 1)
    digest = a.get(version).files["note.txt"]
    boto3.client("s3").put_object(Bucket=bucket_name, Key=f"{prefix}/blobs/{digest}", Body=b"tampered")
    c = _instance(tmp_path, "c", shared)
    with pytest.raises(IntegrityError, match="note.txt: checksum mismatch"):
        c.verify(version)
    assert not (tmp_path / "c" / "versions" / version).exists()  # never half-cached


def _tiny_onnx() -> bytes:
    import io

    import torch

    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 2)).eval()
    buffer = io.BytesIO()
    torch.onnx.export(model, torch.zeros(1, 1, 8, 8), buffer, input_names=["x"], output_names=["y"],
                      dynamic_axes={"x": {0: "n"}, "y": {0: "n"}}, dynamo=False)
    return buffer.getvalue()


def test_uploads_and_reports_reach_the_other_instance_and_uploads_are_deleted_everywhere(shared, tmp_path):
    a, b = _instance(tmp_path, "a", shared), _instance(tmp_path, "b", shared)
    staged = tmp_path / "a" / "uploads" / ".tmp-1-upload"
    staged.mkdir(parents=True)
    (staged / "negatives.npz").write_bytes(b"npz bytes")
    kept = a.keep_uploads(staged)
    assert kept.parent == tmp_path / "a" / "uploads" and (kept / "negatives.npz").read_bytes() == b"npz bytes"
    shutil.rmtree(kept)  # as if a's folder were on another node
    fetched = b.uploads(str(kept))  # the job record names a's path; b fetches the same files
    assert fetched == tmp_path / "b" / "uploads" / kept.name and (fetched / "negatives.npz").read_bytes() == b"npz bytes"
    assert b.uploads(str(tmp_path / "a" / "uploads" / "never-uploaded")).name == "never-uploaded"

    _, bucket = shared
    bucket_name, prefix = bucket[len("s3://"):].split("/", 1)
    client = boto3.client("s3")

    def stored(under: str) -> set[str]:
        listed = client.list_objects_v2(Bucket=bucket_name, Prefix=f"{prefix}/{under}")
        return {o["Key"][len(prefix) + 1:] for o in listed.get("Contents", [])}

    # an upload's bytes are its own (never a shared blob), so a job that ends unserved takes them along
    assert stored(f"uploads/{kept.name}/") == {f"uploads/{kept.name}/manifest.json",
                                               f"uploads/{kept.name}/files/negatives.npz"}
    assert not stored("blobs/")
    assert b.discard_uploads(str(kept)) and not fetched.exists()
    assert not stored(f"uploads/{kept.name}/") and not b.discard_uploads(str(kept))
    assert not b.uploads(str(kept)).exists()  # no node can fetch them any more

    # the job worker's sweep at start: what no job keeps goes, here and in the bucket, when the
    # database (so every job that may refer to them) is shared; with S3 alone, only this node's
    left = []
    for i in range(3):
        staged = tmp_path / "a" / "uploads" / f".tmp-1-left-{i}"
        staged.mkdir()
        (staged / "x.npz").write_bytes(b"left %d" % i)
        left.append(a.keep_uploads(staged).name)
    s3_only = Registry(tmp_path / "c", database_url_="", registry_url_=bucket)
    assert s3_only.sweep_uploads(set(), older_than_s=0) == [] and len(stored("uploads/")) == 6
    assert sorted(a.sweep_uploads({left[0]}, older_than_s=0)) == sorted(left[1:])
    assert stored("uploads/") == {f"uploads/{left[0]}/manifest.json", f"uploads/{left[0]}/files/x.npz"}
    assert sorted(p.name for p in (tmp_path / "a" / "uploads").iterdir()) == [left[0]]

    report = tmp_path / "a" / "reports" / "jobs" / "job-1"
    report.mkdir(parents=True)
    (report / "index.html").write_text("<html>report</html>")
    a.share_report("job-1")
    assert (report / "index.html").is_file()  # still where the job worker wrote it
    shutil.rmtree(report)
    assert (b.report("job-1") / "index.html").read_text() == "<html>report</html>"
    assert not b.report("job-2").exists()


def test_domains_reach_the_other_instance_and_data_read_in_place_is_checked(shared, tmp_path):
    """A job on another node needs its parent's domain (the judge, the splits, the reference
    statistics): it is a folder like a classifier, fetched and verified where it is used."""
    from conftest import flip_a_byte
    from unlearning.registry import sha256_file

    a, b = _instance(tmp_path, "a", shared), _instance(tmp_path, "b", shared)
    data = tmp_path / "debian" / "train-images.gz"  # as Debian's Fashion-MNIST: read in place, not copied
    data.parent.mkdir()
    data.write_bytes(b"images" * 100)

    def write(folder: Path) -> None:
        (folder / "judge.safetensors").write_bytes(b"judge weights" * 50)
        (folder / "splits.npz").write_bytes(b"splits")

    fields = {"labels": ["a", "b"], "image_shape": (1, 8, 8), "builtin": "tiny", "guide": "tiny",
              "references": {str(data): sha256_file(data)}}
    made = a.register_domain("tiny", write, fields)
    with pytest.raises(LetheError, match="already exists"):
        b.register_domain("tiny", write, fields)

    assert [d.name for d in b.list_domains()] == ["tiny"] and b.get_domain("tiny") == made
    assert not (tmp_path / "b" / "domains" / "tiny").exists()  # b's home never saw it
    assert b.verify_domain("tiny") == made  # its files fetched into b's cache and checked
    folder = b.domain_dir("tiny")
    assert folder == tmp_path / "b" / "domains" / "tiny"
    assert (folder / "judge.safetensors").read_bytes() == b"judge weights" * 50

    flip_a_byte(folder / "judge.safetensors")  # a cached copy that rots is fetched again
    assert b.verify_domain("tiny") == made and (folder / "judge.safetensors").read_bytes() == b"judge weights" * 50
    data.write_bytes(b"other images")  # the data it reads in place changed under it: refused
    with pytest.raises(IntegrityError, match="changed since the domain was registered"):
        b.verify_domain("tiny")
    data.unlink()
    with pytest.raises(IntegrityError, match="which is missing"):
        a.verify_domain("tiny")
    with pytest.raises(NotFoundError, match="known domains: tiny"):
        b.get_domain("nope")

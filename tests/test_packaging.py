"""Packaging: `bentoml build` from bentofile.yaml works offline, the Bento holds what the
service needs and nothing else, and `bentoml serve <tag>` from the Bento store (not from
the working tree) answers /generate and /readyz.

Real processes. The builds run without a network: inside a private network namespace
(`unshare --net`) where the machine allows one, and always with proxies that lead nowhere
and pip's index turned off. BentoML 1.4.39's default builder pip-installs `uv` when it is
missing, even when it locks nothing; `BENTOML_ENABLE_FEATURES=no_image` selects the Bento
format that never looks for it (README, "Packaging").
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import tomllib
from importlib.metadata import version
from pathlib import Path
from typing import Iterator

import httpx
import pytest
import yaml

from serving import decode, free_port

REPO = Path(__file__).resolve().parents[1]
BENTOML = Path(sys.executable).with_name("bentoml")
TOKEN = "packaging-admin-token"
VOLUME = "/var/lib/lethe"
BUILD_TIMEOUT_S = 240
READY_TIMEOUT_S = 150
STOP_TIMEOUT_S = 30
DEAD_PROXY = "http://127.0.0.1:9"  # the discard port: nothing answers there
STATE_SUFFIXES = {".onnx", ".safetensors", ".sqlite", ".lock", ".npz", ".png", ".html"}


def _no_network_prefix() -> list[str]:
    """`unshare --net --` where this machine gives us a network namespace of our own (only a
    loopback, down): a command run under it cannot reach anything. Else nothing."""
    unshare = shutil.which("unshare")
    if unshare is None:
        return []
    for prefix in ([unshare, "--net"], [unshare, "--net", "--map-root-user"]):
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            if subprocess.run([*prefix, "true"], capture_output=True, timeout=30).returncode == 0:
                return [*prefix, "--"]
    return []


OFFLINE = _no_network_prefix()


def _env(**extra: object) -> dict[str, str]:
    """This environment without anything that could point at the working tree or another
    store, offline, plus ``extra``."""
    drop = {"PYTHONPATH", "BENTOML_HOME", "LETHE_HOME", "NO_PROXY", "BENTOML_CONFIG"}
    env = {k: v for k, v in os.environ.items() if k.upper() not in drop}
    for name in ("http_proxy", "https_proxy", "all_proxy"):
        env[name] = env[name.upper()] = DEAD_PROXY
    # COLUMNS: BentoML prints through rich, which folds a long path (`bentoml get -o path`)
    # at the console's width, 80 without a terminal
    env.update(PIP_NO_INDEX="1", BENTOML_ENABLE_FEATURES="no_image", COLUMNS="4096")
    env.update({k: str(v) for k, v in extra.items()})
    return env


def _bentoml(*args: str, env: dict[str, str], cwd: Path, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([*OFFLINE, str(BENTOML), *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)


def _build(bentofile: Path, bentoml_home: Path, scratch: Path, *, no_image: bool = True) -> tuple[str, Path, str]:
    """Build offline into ``bentoml_home``; return the tag, the Bento's folder and the output.
    The build imports the service, which creates a LETHE_HOME: a scratch one, never the Bento's."""
    env = _env(BENTOML_HOME=bentoml_home, LETHE_HOME=scratch / "build-lethe-home")
    if not no_image:
        del env["BENTOML_ENABLE_FEATURES"]
    result = _bentoml("build", "-f", str(bentofile), str(REPO), env=env, cwd=REPO, timeout=BUILD_TIMEOUT_S)
    output = result.stdout + result.stderr
    how = "no network" if OFFLINE else "dead proxies"
    assert result.returncode == 0, f"bentoml build failed ({how}):\n{output[-5000:]}"
    match = re.search(r'Successfully built Bento\(tag="([^"]+)"\)', output)
    assert match, output[-3000:]
    assert "Locking" not in output and "installing it with" not in output, output[-3000:]  # no lock, no uv install
    tag = match.group(1)
    path = _bentoml("get", tag, "-o", "path", env=env, cwd=scratch)
    assert path.returncode == 0, path.stderr
    return tag, Path(path.stdout.strip()), output


def _requirements(path: Path) -> list[str]:
    return [line.strip() for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")]


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("bentoml-home")


@pytest.fixture(scope="module")
def bento(store, tmp_path_factory) -> dict:
    scratch = tmp_path_factory.mktemp("build")
    tag, path, output = _build(REPO / "bentofile.yaml", store, scratch)
    return {"tag": tag, "path": path, "output": output}


def test_build_is_offline_and_in_the_store(bento, store, tmp_path):
    assert bento["tag"].startswith("lethe:")
    listing = _bentoml("list", "-o", "json", env=_env(BENTOML_HOME=store), cwd=tmp_path)
    assert listing.returncode == 0, listing.stderr
    assert bento["tag"] in {row["tag"] for row in yaml.safe_load(listing.stdout)}
    assert bento["path"].is_relative_to(store)


def test_bento_holds_the_service_and_no_state(bento):
    root = bento["path"]
    src = root / "src"
    files = {p.relative_to(src).as_posix() for p in src.rglob("*") if p.is_file()}
    wanted = {f"service/{p.name}" for p in (REPO / "service").glob("*.py")}
    wanted |= {p.relative_to(REPO).as_posix() for p in (REPO / "unlearning").rglob("*.py")}
    assert "service/app.py" in files and "unlearning/__init__.py" in files
    assert wanted <= files, f"missing from the Bento: {sorted(wanted - files)}"
    assert files - wanted <= {"pyproject.toml", "bentofile.yaml"}, sorted(files - wanted)

    everything = [p.relative_to(root) for p in root.rglob("*")]
    for part in (".venv", "tests", "bench", "docs", "examples", "__pycache__", "versions", "active", "classifiers"):
        assert not [p for p in everything if part in p.parts], f"{part}/ is in the Bento"
    assert not [p for p in everything if p.suffix in STATE_SUFFIXES or p.name == "manifest.json"]

    info = yaml.safe_load((root / "bento.yaml").read_text())
    assert {"name": "LETHE_HOME", "value": VOLUME} in [{k: e[k] for k in ("name", "value")} for e in info["envs"]]
    assert info["service"] == "service.app:Lethe"
    assert info["python"]["lock_packages"] is False
    assert not (root / "env/python/requirements.lock.txt").exists()
    # the image installs pyproject's dependencies, bentoml pinned to this one
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    expected = [d for d in project if not d.startswith("bentoml")] + [f"bentoml=={version('bentoml')}"]
    assert sorted(_requirements(root / "env/python/requirements.txt")) == sorted(expected)
    dockerfile = (root / "env/docker/Dockerfile").read_text()
    assert f"LETHE_HOME={VOLUME}" in dockerfile and re.search(r"^FROM python:3\.\d+-slim", dockerfile, re.M)


def _minimal_home(home: Path) -> str:
    """A LETHE_HOME with one active `digits` version (an untrained DCGAN, registered as
    bootstrap registers one): seconds instead of a bootstrap's minutes."""
    import torch

    from unlearning.export import export_generator_onnx
    from unlearning.models import DCGANConfig, Generator, save_model
    from unlearning.registry import Registry

    registry = Registry(home)
    torch.manual_seed(0)
    generator = Generator(DCGANConfig(resolution=8, channels=1)).eval()
    with tempfile.TemporaryDirectory() as scratch:
        onnx_path = export_generator_onnx(generator, Path(scratch) / "generator.onnx")

        def write_files(folder: Path) -> None:
            save_model(generator, folder, "generator")
            shutil.copyfile(onnx_path, folder / "generator.onnx")

        manifest = registry.create_version("digits", write_files, status="promoted", dataset="digits")
    registry.activate(manifest.version)
    return manifest.version


def _descendants(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()
    children = [int(c) for c in out]
    return children + [d for c in children for d in _descendants(c)]


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@contextlib.contextmanager
def _served(tag: str, store: Path, home: Path, folder: Path) -> Iterator[tuple[httpx.Client, subprocess.Popen, Path]]:
    """`bentoml serve <tag>` from the store, run in an empty folder; stopped (its process
    group, then any worker left behind, which BentoML starts in sessions of their own)."""
    cwd = folder / "empty"
    cwd.mkdir()
    port = free_port()
    log_path = folder / "serve.log"
    env = _env(BENTOML_HOME=store, LETHE_HOME=home, LETHE_ADMIN_TOKEN=TOKEN)
    with open(log_path, "wb") as log:
        process = subprocess.Popen([str(BENTOML), "serve", tag, "--host", "127.0.0.1", "--port", str(port)],
                                   cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60)
    pids: list[int] = []
    try:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while True:
            assert process.poll() is None, f"bentoml serve exited:\n{log_path.read_text()[-5000:]}"
            with contextlib.suppress(httpx.HTTPError):
                if client.get("/readyz", timeout=2).status_code == 200:
                    break
            assert time.monotonic() < deadline, f"not ready in {READY_TIMEOUT_S} s:\n{log_path.read_text()[-5000:]}"
            time.sleep(0.5)
        pids = _descendants(process.pid)
        yield client, process, log_path
    finally:
        client.close()
        pids = sorted(set(pids) | set(_descendants(process.pid)))
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)
        deadline = time.monotonic() + 10
        while any(_alive(p) for p in pids) and time.monotonic() < deadline:
            time.sleep(0.2)
        left = [p for p in pids if _alive(p)]
        for pid in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if left and sys.exc_info()[0] is None:
            raise AssertionError(f"processes outlived bentoml serve: {left}")


def test_the_bento_serves_from_the_store(bento, store, tmp_path):
    home = tmp_path / "lethe-home"
    active = _minimal_home(home)
    with _served(bento["tag"], store, home, tmp_path) as (client, process, log_path):
        reply = client.post("/generate", json={"n": 2, "seed": 1})
        assert reply.status_code == 200, f"{reply.text}\n{log_path.read_text()[-3000:]}"
        body = reply.json()
        assert (body["model"], body["model_version"], body["seed"]) == ("digits", active, 1)
        images = decode(body["images"])
        assert tuple(images.shape) == (2, 1, 8, 8)
        assert client.post("/generate", json={"n": 2, "seed": 1}).json()["images"] == body["images"]
        assert client.get("/readyz").status_code == 200
        assert client.get("/models").json()["models"][0]["active"] == active
        assert client.get("/admin/redactions").status_code == 401
        assert client.get("/admin/redactions", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200

        # the worker that answered runs the Bento's copy of the sources, not the working tree's
        worker = int(reply.headers["X-Lethe-Worker"])
        if Path(f"/proc/{worker}/cwd").exists():
            assert Path(os.readlink(f"/proc/{worker}/cwd")).resolve() == (bento["path"] / "src").resolve()
    assert process.returncode is not None


def test_gpu_variant_builds_offline(store, tmp_path):
    variant = REPO / "deploy" / "bentofile-gpu.yaml"
    cpu = yaml.safe_load((REPO / "bentofile.yaml").read_text())
    gpu = yaml.safe_load(variant.read_text())
    # the same Bento but for onnxruntime-gpu and the CUDA base image
    assert gpu["python"]["packages"] == [
        "onnxruntime-gpu>=1.18" if p == "onnxruntime>=1.18" else p for p in cpu["python"]["packages"]]
    assert {k: v for k, v in gpu["python"].items() if k != "packages"} == \
        {k: v for k, v in cpu["python"].items() if k != "packages"}
    assert gpu["docker"]["cuda_version"]
    same = {k for k in cpu if k not in {"name", "python"}}  # the name: lethe-gpu
    assert {k: gpu.get(k) for k in same} == {k: cpu[k] for k in same}
    assert set(gpu) - set(cpu) == {"docker"}

    tag, path, _ = _build(variant, store, tmp_path, no_image=False)  # cuda_version selects that format itself
    assert tag.startswith("lethe-gpu:")
    requirements = _requirements(path / "env/python/requirements.txt")
    assert "onnxruntime-gpu>=1.18" in requirements and "onnxruntime>=1.18" not in requirements
    assert "FROM nvidia/cuda:" in (path / "env/docker/Dockerfile").read_text()
    assert (path / "src/service/app.py").is_file()

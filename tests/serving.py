"""A real `lethe serve` (BentoML server + job worker) in a subprocess, for tests."""

from __future__ import annotations

import base64
import contextlib
import io
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import psutil
import torch
from PIL import Image

TOKEN = "test-admin-token"
FINAL = {"promoted", "rejected", "failed", "cancelled"}
# a job that passes quickly even on a 2-epoch bootstrap: 1 epoch, small gate samples, permissive gates,
# no attacks (they took 8 of its 13 s; tests/test_attacks.py and the jobs with defaults run them)
QUICK_SPEC = {"sets": [{"kind": "classifier", "classifier": "digits", "score": {"type": "one_minus_prob", "label": 0},
                        "tau": 0.5}],
              "hyperparameters": {"epochs": 1, "monitor_samples": 200},
              "gates": {"eval_samples": 200, "max_invalidity": 1.0, "max_fid_ratio": 1e6,
                        "min_class_share_ratio": 0.0, "attack_starts": 0}}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LetheServer:
    def __init__(self, home: Path, bentoml_home: Path, *, workers: int = 2, env: dict[str, str] | None = None,
                 job_worker: bool = True, host: str | None = "127.0.0.1"):
        self.home = home
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = bentoml_home.parent / f"serve-{self.port}.log"
        self.env = {**os.environ, "LETHE_HOME": str(home), "BENTOML_HOME": str(bentoml_home),
                    "LETHE_ADMIN_TOKEN": TOKEN, "LETHE_SWAP_POLL_S": "0.2", **(env or {})}
        self.workers = workers
        self.job_worker = job_worker
        self.host = host  # None: `lethe serve`'s default
        self.token = self.env["LETHE_ADMIN_TOKEN"] or None  # None: read from the file `lethe serve` writes
        self.process: subprocess.Popen | None = None
        self.client = httpx.Client(base_url=self.url, timeout=120)

    def start(self, *, ready: bool = True) -> "LetheServer":
        """Start and wait for /readyz (``ready=False``: only /livez, for a server that is
        meant to come up unable to serve)."""
        lethe = Path(sys.executable).with_name("lethe")
        self._log = open(self.log_path, "ab")
        self.process = subprocess.Popen(
            [str(lethe), "serve", "--port", str(self.port), "--workers", str(self.workers),
             *(["--host", self.host] if self.host else []), *([] if self.job_worker else ["--no-job-worker"])],
            env=self.env, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            assert self.process.poll() is None, f"lethe serve exited early:\n{self.log()}"
            try:
                if self.client.get("/readyz" if ready else "/livez", timeout=2).status_code == 200 and (
                        self.job_worker_pid() or not self.job_worker):
                    if self.token is None:
                        self.token = (self.home / "admin-token").read_text().strip()
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise AssertionError(f"lethe serve did not become ready:\n{self.log()}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            tree = self.processes()
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
            _, alive = psutil.wait_procs(tree, timeout=10)
            for process in alive:  # nothing outlives the test
                with contextlib.suppress(psutil.Error):
                    process.kill()
        self.client.close()
        self._log.close()

    def processes(self) -> list[psutil.Process]:
        """`lethe serve` and everything it started (BentoML's workers run in their own
        process groups, so the launcher's group is not all of it)."""
        try:
            root = psutil.Process(self.process.pid)
            return [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-5000:]

    def job_worker_pid(self) -> int | None:
        """The `python -m service.worker` child of our `lethe serve`."""
        out = subprocess.run(["pgrep", "-f", "-P", str(self.process.pid), "service.worker"],
                             capture_output=True, text=True).stdout.split()
        return int(out[0]) if out else None

    def serving_worker_pids(self) -> list[int]:
        """BentoML's serving worker processes (the arbiter's ``_bentoml_impl.worker`` children)."""
        pids = []
        for process in self.processes():
            with contextlib.suppress(psutil.Error):
                if "_bentoml_impl.worker" in " ".join(process.cmdline()):
                    pids.append(process.pid)
        return sorted(pids)

    def kill(self, tree: list[psutil.Process] | None = None) -> None:
        """kill -9 of everything `lethe serve` started (launcher, arbiter, workers, job
        worker, a job's process) at once, as when a machine or container dies. ``tree``:
        a snapshot of ``processes()`` taken earlier, so the kill is not delayed by
        walking /proc; the deepest processes die first."""
        tree = tree if tree is not None else self.processes()
        for process in reversed(tree):
            with contextlib.suppress(psutil.Error):
                process.kill()
        psutil.wait_procs(tree, timeout=30)
        self.process.wait(30)

    # ---------------------------------------------------------------------- sampling

    def generate(self, **body: Any) -> httpx.Response:
        return self.client.post("/generate", json=body)

    def images(self, n: int, seed: int, version: str | None = None,
               model: str | None = None) -> tuple[str, torch.Tensor, list[str]]:
        reply = self.generate(n=n, seed=seed, version=version, **({"model": model} if model else {}))
        assert reply.status_code == 200, reply.text
        data = reply.json()
        return data["model_version"], decode(data["images"]), data["images"]

    def inpaint(self, images: torch.Tensor | list[str], **body: Any) -> httpx.Response:
        """POST /inpaint with ``images`` ((N, C, H, W) in [-1, 1], sent as PNGs, or base64 strings)."""
        if isinstance(images, torch.Tensor):
            from unlearning.data.files import png_bytes

            images = [base64.b64encode(png_bytes(image)).decode() for image in images]
        return self.client.post("/inpaint", json={"images": images, **body})

    def restored(self, images: torch.Tensor, **body: Any) -> tuple[str, torch.Tensor]:
        reply = self.inpaint(images, **body)
        assert reply.status_code == 200, reply.text
        return reply.json()["model_version"], decode(reply.json()["images"])

    def wait_serving(self, version: str, timeout: float = 5.0, model: str | None = None) -> float:
        """Seconds until a request (for ``model``, default the service's) is answered by ``version``."""
        start = time.monotonic()
        while time.monotonic() - start < timeout:
            reply = self.generate(n=1, seed=0, **({"model": model} if model else {}))
            if reply.status_code == 200 and reply.json()["model_version"] == version:
                return time.monotonic() - start
            time.sleep(0.05)
        raise AssertionError(f"{version} not served within {timeout} s")

    # ------------------------------------------------------------------------- admin

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def submit(self, spec: dict, files: dict[str, bytes] | None = None) -> httpx.Response:
        import json

        parts = {"spec": (None, json.dumps(spec), "application/json")}
        for name, payload in (files or {}).items():
            parts[name] = (name, payload, "application/octet-stream")
        return self.client.post("/admin/redactions", files=parts, headers=self.auth)

    def job(self, job_id: str) -> dict:
        reply = self.client.get(f"/admin/redactions/{job_id}", headers=self.auth)
        assert reply.status_code == 200, reply.text
        return reply.json()

    def wait_job(self, job_id: str, *, until: set[str] = FINAL, timeout: float = 900, every=None) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            job = self.job(job_id)
            if job["state"] in until:
                return job
            if every is not None:
                every(job)
            time.sleep(1.0)
        raise AssertionError(f"job {job_id} still {job['state']} after {timeout} s:\n{self.log()}")

    def activate(self, version: str) -> httpx.Response:
        return self.client.post(f"/admin/models/{version}/activate", headers=self.auth)

    def metrics(self) -> dict[tuple[str, tuple], float]:
        """``/metrics`` parsed: (name, sorted labels) -> value, for ``lethe_*`` samples."""
        text = self.client.get("/metrics").text
        out = {}
        for line in text.splitlines():
            match = re.match(r"^(lethe_[a-z_]+)(\{[^}]*\})?\s+(\S+)$", line)
            if match:
                labels = tuple(sorted(re.findall(r'(\w+)="([^"]*)"', match.group(2) or "")))
                out[(match.group(1), labels)] = float(match.group(3))
        return out


def wait_until(condition, timeout: float, what: str):
    """``condition()``'s first true value within ``timeout`` seconds (else fail saying ``what``)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"not {what} within {timeout:g} s")


def copy_version(home: Path, version: str, **fields: Any) -> str:
    """A new, complete version of ``version``'s model holding the same files (``fields``:
    manifest fields such as ``status``, ``spec``, ``metrics``); returns its name."""
    from unlearning.registry import Registry

    registry = Registry(home)
    source = registry.get(version)

    def write_files(folder: Path) -> None:
        for name in source.files:
            (folder / name).write_bytes(registry.file_path(version, name).read_bytes())

    fields = {"parent": version, "status": "promoted", "dataset": source.dataset,
              "classifier": source.classifier, **fields}
    return registry.create_version(source.model, write_files, **fields).version


def decode(images_b64: list[str]) -> torch.Tensor:
    """Base64 PNGs -> float tensor (N, C, H, W) in [-1, 1]."""
    arrays = []
    for item in images_b64:
        array = np.asarray(Image.open(io.BytesIO(base64.b64decode(item))), dtype=np.float32)
        arrays.append(array[None] if array.ndim == 2 else np.moveaxis(array, -1, 0))
    return torch.from_numpy(np.stack(arrays)) / 127.5 - 1.0

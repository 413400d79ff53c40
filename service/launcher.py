"""``lethe serve``: bootstrap what ``LETHE_MODEL`` needs (its built-in domain and that domain's
models) if it has no active version, then run the BentoML server and the job worker
side by side, restarting the worker if it dies, stopping both on SIGTERM/SIGINT.

The worker is started once the server is ready, with the server's
``PROMETHEUS_MULTIPROC_DIR`` (BentoML empties that folder when it starts), so job
metrics appear at the server's ``/metrics``.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

READY_TIMEOUT_S = 180.0
WORKER_RESTART_S = 1.0
TOKEN_FILE = "admin-token"


def _bentoml_multiproc_dir() -> str:
    from bentoml._internal.configuration.containers import BentoMLContainer

    return str(Path(BentoMLContainer.prometheus_multiproc_dir.get()).absolute())


def _probe(port: int, path: str) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as reply:
            return reply.status == 200
    except OSError:
        return False


def _wait_live(port: int, server: subprocess.Popen) -> bool:
    """Wait for /livez, not /readyz: a service whose active version cannot be loaded is
    live but not ready, and still needs its job worker (a job can promote a good version)."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if server.poll() is not None:
            return False
        if _probe(port, "/livez"):
            return True
        time.sleep(0.5)
    return False


def _stop(process: subprocess.Popen | None, timeout: float = 20.0) -> None:
    if process is None or process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def admin_token_file(home: Path) -> tuple[Path, str]:
    """The token ``lethe serve`` uses when ``LETHE_ADMIN_TOKEN`` is not set, and its file:
    ``LETHE_HOME/admin-token``, read, or generated into it (mode 0600; never printed or
    logged) when it is missing or empty."""
    path = home / TOKEN_FILE
    token = path.read_text().strip() if path.is_file() else ""
    if not token:
        token = secrets.token_urlsafe(24)
        tmp = path.with_name(f".{TOKEN_FILE}-{os.getpid()}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, (token + "\n").encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    os.chmod(path, 0o600)
    return path, token


def serve(*, port: int = 3000, host: str = "127.0.0.1", workers: int = 1, job_worker: bool = True) -> int:
    from unlearning.errors import LetheError
    from unlearning.registry import Registry
    from unlearning.runtime import DEFAULT_MODEL

    registry = Registry()
    model = os.environ.get("LETHE_MODEL", DEFAULT_MODEL)
    try:
        unbuilt = registry.active(model) is None
    except LetheError as exc:  # a garbled pointer: serve, and let the service refuse saying why
        print(f"lethe: {exc}", file=sys.stderr)
        unbuilt = False
    if unbuilt:
        # torch comes with these: a launcher with nothing to build never loads it (1.5 s, 500 MB)
        from unlearning.bootstrap import bootstrap
        from unlearning.domains import builtin_for_model

        domain = builtin_for_model(model)
        if domain is None:
            print(f"lethe: model {model!r} has no active version and no built-in domain makes it: import it "
                  "(`lethe import`) or bootstrap its domain first", file=sys.stderr)
            return 2
        print(f"lethe: no active {model!r} yet; bootstrapping domain {domain.name!r} first", file=sys.stderr)
        bootstrap(registry, domain=domain.name)
    env = dict(os.environ, LETHE_HOME=str(registry.home), LETHE_WORKERS=str(workers))
    if not env.get("LETHE_ADMIN_TOKEN"):
        token_file, env["LETHE_ADMIN_TOKEN"] = admin_token_file(registry.home)
        print(f"lethe: the admin token is in {token_file} (set LETHE_ADMIN_TOKEN to choose your own)",
              file=sys.stderr, flush=True)
    bentoml = Path(sys.executable).with_name("bentoml")
    command = [str(bentoml), "serve", "service.app:Lethe", "--port", str(port), "--host", host]
    server = subprocess.Popen(command, env=env)
    worker: subprocess.Popen | None = None
    stopping = False

    def on_signal(signum, frame) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        if not _wait_live(port, server):
            print("lethe: the server did not start", file=sys.stderr)
            return server.poll() or 1
        print(f"lethe: serving on http://{host}:{port} (admin API at /admin)", file=sys.stderr, flush=True)
        if not _probe(port, "/readyz"):
            print("lethe: not ready: an active version cannot be loaded (the log above names it); "
                  "sampling is refused (409) until a good version is activated", file=sys.stderr, flush=True)
        worker_env = dict(env, PROMETHEUS_MULTIPROC_DIR=_bentoml_multiproc_dir())
        while not stopping:
            if server.poll() is not None:
                return server.returncode
            if job_worker and (worker is None or worker.poll() is not None):
                if worker is not None:
                    print(f"lethe: job worker exited ({worker.returncode}); restarting it", file=sys.stderr, flush=True)
                    time.sleep(WORKER_RESTART_S)
                worker = subprocess.Popen([sys.executable, "-m", "service.worker"], env=worker_env)
            time.sleep(0.2)
        return 0
    finally:
        _stop(worker)
        _stop(server)

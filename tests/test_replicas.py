"""Two `lethe serve` instances sharing one LETHE_HOME (as two replicas on a shared volume):
jobs submitted to both run one at a time across both (the job store's lock, not luck),
the instances agree on the active version, and a promotion reaches both within 5 s."""

from __future__ import annotations

import shutil
import threading
import time

import pytest

from serving import QUICK_SPEC as QUICK, LetheServer

pytestmark = pytest.mark.slow

ACTIVE_STATES = {"running", "validating"}


@pytest.fixture(scope="module")
def replicas(quick_home, tmp_path_factory):
    root = tmp_path_factory.mktemp("replicas")
    home = root / "home"
    shutil.copytree(quick_home, home)
    servers = []
    try:
        for name in ("a", "b"):
            servers.append(LetheServer(home, root / f"bentoml-{name}", workers=1).start())
        yield servers
    finally:
        for server in servers:
            server.stop()


def test_jobs_run_one_at_a_time_and_promotions_reach_every_replica(replicas):
    a, b = replicas
    assert a.client.get("/models").json() == b.client.get("/models").json()  # one registry, one truth
    base = a.generate(n=1, seed=0).json()["model_version"]
    assert b.generate(n=1, seed=0).json()["model_version"] == base

    job_ids = []
    for i, server in enumerate((a, b, a, b)):
        reply = server.submit({"name": f"replica-job-{i}", **QUICK})
        assert reply.status_code == 202, reply.text
        job_ids.append(reply.json()["job_id"])

    overlaps, seen_active = [], set()
    stop = threading.Event()

    def watch() -> None:  # both instances' views of the shared store, as fast as they answer
        while not stop.is_set():
            for server in (a, b):
                jobs = server.client.get("/admin/redactions", headers=server.auth).json()["jobs"]
                running = [j["id"] for j in jobs if j["state"] in ACTIVE_STATES]
                seen_active.update(running)
                if len(running) > 1:
                    overlaps.append(running)
            time.sleep(0.1)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        jobs = [(a if i % 2 == 0 else b).wait_job(job_id, timeout=900) for i, job_id in enumerate(job_ids)]
    finally:
        stop.set()
        watcher.join(10)
    assert not overlaps, f"jobs ran at the same time: {overlaps[:3]}"
    assert all(j["state"] == "promoted" for j in jobs), [(j["state"], j.get("reason")) for j in jobs]
    assert len(seen_active) >= 2  # the watcher did see jobs running, one after another
    # claimed by the two instances' job workers, whichever was free: never two at once
    started = sorted((j["started_at"], j["finished_at"]) for j in jobs)
    assert all(prev[1] <= nxt[0] for prev, nxt in zip(started, started[1:])), started

    last = max(jobs, key=lambda j: j["finished_at"])["version"]
    for server in (a, b):  # every job activated its version; the last one is served everywhere
        assert server.wait_serving(last, timeout=5) < 5
    assert a.client.get("/models").json() == b.client.get("/models").json()

    # a manual rollback through one instance reaches the other
    promoted_at = time.monotonic()
    assert a.activate(base).status_code == 200
    b.wait_serving(base, timeout=5)
    assert time.monotonic() - promoted_at < 5

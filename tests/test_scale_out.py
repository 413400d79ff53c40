"""Two `lethe serve` instances with *separate* LETHE_HOMEs that share only a PostgreSQL
database and an S3 bucket (moto's server), as two nodes would:

* jobs submitted to both run one at a time (the database's lock); a promotion on one
  reaches every serving worker of both within 2 s (NOTIFY), and so does a rollback;
  sampling is bit-identical across the instances for the same seed and version;
* the S3 endpoint stopped while a job stores its version, then PostgreSQL restarted
  mid-job: sampling never fails, each job ends in a truthful state, no version is
  half-visible, and everything works again once they are back;
* kill -9 of the instance whose job worker holds the running job (last: it leaves one
  instance without a job worker): the job ends truthfully, the other instance's worker
  takes the next job once the stall limit has passed, and the dead node, back, serves it.
"""

from __future__ import annotations

import contextlib
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from backends import TcpProxy, publish_home
from serving import QUICK_SPEC, LetheServer, wait_until
from unlearning.registry import Registry

sys.path.append(str(Path(__file__).resolve().parents[1] / "bench"))
from loadgen import Load  # noqa: E402

pytestmark = pytest.mark.slow

ACTIVE = {"running", "validating"}
STALL_S = 15
SWAP_LIMIT_S = 2.0


@pytest.fixture(scope="module")
def cluster(quick_home, postgres, s3, tmp_path_factory):
    """The shared database and bucket (S3 reached through a proxy a test can take down),
    seeded with the quick home's classifiers and versions, and two instances on them."""
    root = tmp_path_factory.mktemp("scale-out")
    proxy = TcpProxy(s3.port)
    env = {**s3.env(), "AWS_ENDPOINT_URL": f"http://127.0.0.1:{proxy.port}",
           "LETHE_DATABASE_URL": postgres.new_database(), "LETHE_REGISTRY_URL": s3.new_bucket(),
           "LETHE_JOB_STALL_S": str(STALL_S), "AWS_MAX_ATTEMPTS": "2"}
    with pytest.MonkeyPatch.context() as patch:
        for key, value in env.items():
            patch.setenv(key, value)
        publish_home(quick_home, Registry(root / "seed"))
    servers = {name: LetheServer(root / f"home-{name}", root / f"bentoml-{name}", workers=2, env=env)
               for name in ("a", "b")}
    try:
        for server in servers.values():
            server.start()
        yield {"servers": servers, "proxy": proxy, "env": env, "root": root}
    finally:
        for server in servers.values():
            with contextlib.suppress(Exception):
                server.stop()
        proxy.stop()


def served_by_every_worker(server: LetheServer, version: str, deadline: float) -> set[str]:
    """Fresh connections until every serving worker of ``server`` has answered with
    ``version`` (before ``deadline``); the workers seen."""
    workers = {str(pid) for pid in server.serving_worker_pids()}
    seen: set[str] = set()
    while seen != workers:
        assert time.monotonic() < deadline, f"{version} not served by every worker of {server.url} in time: {seen}"
        reply = httpx.post(f"{server.url}/generate", json={"n": 1, "seed": 0}, headers={"Connection": "close"},
                           timeout=10)
        if reply.status_code == 200 and reply.json()["model_version"] == version:
            seen.add(reply.headers["x-lethe-worker"])
    return seen


def _which(servers: dict[str, LetheServer], worker: str) -> str:
    pid = int(worker.rpartition(":")[2])
    return next(name for name, server in servers.items() if server.job_worker_pid() == pid)


def test_jobs_run_one_at_a_time_and_swaps_reach_every_worker_of_both(cluster):
    a, b = cluster["servers"]["a"], cluster["servers"]["b"]
    base = a.generate(n=1, seed=0).json()["model_version"]
    assert b.generate(n=1, seed=0).json()["model_version"] == base
    assert a.client.get("/models").json() == b.client.get("/models").json()
    same = [server.generate(n=16, seed=1234).json()["images"] for server in (a, b)]
    assert same[0] == same[1]  # bit-identical: same seed, same version, different nodes

    job_ids = [server.submit({"name": f"shared-{i}", **QUICK_SPEC}).json()["job_id"] for i, server in
               enumerate((a, b))]
    overlaps: list[list[str]] = []
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            jobs = b.client.get("/admin/redactions", headers=b.auth).json()["jobs"]
            running = [j["id"] for j in jobs if j["state"] in ACTIVE]
            if len(running) > 1:
                overlaps.append(running)
            time.sleep(0.1)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        jobs = [a.wait_job(job_id, timeout=900) for job_id in job_ids]
    finally:
        stop.set()
        watcher.join(10)
    assert not overlaps, overlaps[:3]
    assert [j["state"] for j in jobs] == ["promoted"] * 2, [(j["state"], j["reason"]) for j in jobs]
    spans = sorted((j["started_at"], j["finished_at"]) for j in jobs)
    assert all(x[1] <= y[0] for x, y in zip(spans, spans[1:])), spans
    assert len({j["version"] for j in jobs}) == 2  # numbered once across both instances
    submits = [e for e in b.client.get("/admin/audit", params={"action": "submit"}, headers=b.auth).json()["entries"]
               if e["job_id"] in job_ids]
    assert len(submits) == 2 and len({e["actor"] for e in submits}) == 1  # one token, one actor on both

    last = max(jobs, key=lambda j: j["finished_at"])["version"]
    for server in (a, b):
        served_by_every_worker(server, last, time.monotonic() + 30)
    versions = {v["version"] for v in a.client.get("/models").json()["models"][0]["versions"]}
    assert {j["version"] for j in jobs} <= versions
    assert a.generate(n=16, seed=99).json()["images"] == b.generate(n=16, seed=99).json()["images"]

    for target, via in ((base, b), (last, a)):  # a rollback through b, a promotion through a
        assert via.activate(target).status_code == 200
        # the promotion is committed and announced: from here every worker of both has 2 s
        # (on a loaded machine the admin call itself took a good part of them)
        moved = time.monotonic()
        deadline = moved + SWAP_LIMIT_S
        for server in (a, b):
            served_by_every_worker(server, target, deadline)
        assert time.monotonic() - moved < SWAP_LIMIT_S


def test_postgres_restart_and_s3_outage_mid_job(cluster, postgres):
    servers, proxy = cluster["servers"], cluster["proxy"]
    a, b = servers["a"], servers["b"]
    loads = [Load(server.url, 2, n=4, pause_s=0.05, timeout_s=30).start() for server in (a, b)]
    try:
        # the S3 endpoint down while a job stores its version: it fails saying so
        registry = Registry(cluster["root"] / "observer")
        versions_before = {m.version for m in registry.list_versions()}
        job = b.submit({"name": "through-an-s3-outage", **QUICK_SPEC}).json()["job_id"]
        wait_until(lambda: b.job(job)["state"] in ACTIVE, 120, "the job claimed")
        proxy.stop()
        try:
            failed = b.wait_job(job, timeout=900)
        finally:
            proxy.start()
        assert failed["state"] == "failed", failed
        assert "object storage" in failed["reason"], failed
        assert {m.version for m in registry.list_versions()} == versions_before  # nothing half-visible
        for version in versions_before:
            registry.verify(version)

        # S3 back, and PostgreSQL restarted while the next job trains: the job goes on, is
        # stored, promoted and served everywhere (both recovered)
        # every one of 10 epochs run (15 s of training on one core): the restart lands mid-training
        training = {**QUICK_SPEC["hyperparameters"], "epochs": 10, "patience": None}
        job = a.submit({**QUICK_SPEC, "name": "through-a-restart", "hyperparameters": training}).json()["job_id"]
        wait_until(lambda: a.job(job)["state"] in ACTIVE, 120, "the job claimed")
        postgres.stop()
        time.sleep(3)
        postgres.start()
        done = a.wait_job(job, timeout=900)
        assert done["state"] == "promoted", done
        assert done["version"] not in versions_before
        for server in (a, b):
            served_by_every_worker(server, done["version"], time.monotonic() + 30)
    finally:
        for load in loads:
            load.stop()
    for load in loads:
        records = load.snapshot()
        failed = [r["error"] for r in records if not r["ok"]]
        assert len(records) > 100 and not failed, failed[:5]  # sampling never failed


def test_kill_9_of_the_instance_holding_the_job(cluster):
    servers = cluster["servers"]
    long_job = {**QUICK_SPEC, "name": "held-by-the-dead", "hyperparameters": {"epochs": 500, "patience": 500}}
    first = servers["a"].submit(long_job).json()["job_id"]
    claimed = servers["a"].wait_job(first, until=ACTIVE, timeout=120)
    wait_until(lambda: servers["a"].job(first)["progress_info"].get("epoch"), 300, "the job training")
    holder = _which(servers, claimed["worker"])
    other = servers["b" if holder == "a" else "a"]
    servers[holder].kill()  # the node dies: launcher, job worker and the job's own process
    killed_at = time.monotonic()
    second = other.submit({"name": "after-the-node-died", **QUICK_SPEC}).json()["job_id"]
    # the node comes back, serving only, while the survivor waits out the stall limit (its
    # own job worker would find the dead job's pid gone on this shared host at once)
    servers[holder] = back = LetheServer(servers[holder].home, cluster["root"] / f"bentoml-{holder}-2",
                                         workers=2, env=cluster["env"], job_worker=False).start()

    ended = other.wait_job(first, timeout=STALL_S + 120)
    waited = time.monotonic() - killed_at
    assert ended["state"] == "failed", ended
    assert "stopped sending heartbeats" in ended["reason"] and ended["reason"].startswith("interrupted:"), ended
    assert waited >= STALL_S, waited  # not before the stall limit: its worker might only be slow
    done = other.wait_job(second, timeout=900)
    assert done["state"] == "promoted", done
    assert _which({"other": other}, done["worker"]) == "other"
    for server in (other, back):
        served_by_every_worker(server, done["version"], time.monotonic() + 30)
    assert other.generate(n=2).status_code == 200

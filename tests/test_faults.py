"""Faults, each against a real `lethe serve` (BentoML workers, ONNX Runtime, SQLite, files
on disk), each ending with the service answering again:

* kill -9 of a serving worker under load: the other worker keeps answering, the arbiter
  starts a replacement, and the replacement answers;
* kill -9 of the whole server in the middle of a promotion: on restart the active pointer
  names a complete version whose files match their checksums, and the next job works;
* a version file corrupted on disk: activating it is refused with the file named; with a
  pointer moved onto it by hand, with the served version's own file corrupted, with a
  garbled pointer, after a worker is replaced and after a restart, every worker answers
  alike (not ready, 409 naming the file), never with an older version, until the file is
  restored or another version is activated;
* the disk filling up during a job: the job fails naming the full disk, nothing
  half-written is visible, the service keeps serving, and once space is freed a job works;
* a job's own process killed (as the out-of-memory killer would), or hung: that job fails
  saying so (a hung one once it has sent no heartbeat for LETHE_JOB_STALL_S), the job
  worker lives on and runs the next job, and keeps none of a job's memory.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest

from conftest import flip_a_byte
from serving import QUICK_SPEC, LetheServer, copy_version, wait_until
from unlearning.registry import Registry

sys.path.append(str(Path(__file__).resolve().parents[1] / "bench"))
from loadgen import Load  # noqa: E402

pytestmark = pytest.mark.slow

CLIENTS = 4


def _home(quick_home: Path, root: Path) -> Path:
    home = root / "home"
    shutil.copytree(quick_home, home)
    return home


def staged(home: Path) -> list[str]:
    """Versions being written (the registry's private temporary folders)."""
    return [name for name in os.listdir(home / "versions") if name.startswith(".tmp-")]


def assert_every_version_complete(registry: Registry) -> None:
    for manifest in registry.list_versions():
        registry.verify(manifest.version)  # IntegrityError names the first bad file


# ---------------------------------------------------------------------- a serving worker


def answered_by_new_connection(url: str) -> str | None:
    """The serving worker (pid) that answers a request on a fresh connection."""
    reply = httpx.post(f"{url}/generate", json={"n": 1, "seed": 0}, headers={"Connection": "close"}, timeout=30)
    return reply.headers.get("x-lethe-worker") if reply.status_code == 200 else None


def test_kill_9_of_a_serving_worker_under_load(quick_home, tmp_path):
    server = LetheServer(_home(quick_home, tmp_path), tmp_path / "bentoml", workers=2, job_worker=False).start()
    load = Load(server.url, CLIENTS, n=8, timeout_s=30)
    try:
        first = server.serving_worker_pids()
        assert len(first) == 2, f"expected two serving workers, found {first}"
        seen: set[str | None] = set()  # both answer (on fresh connections: keep-alive ones stay put)
        wait_until(lambda: seen.add(answered_by_new_connection(server.url)) or seen >= set(map(str, first)), 60,
                   "both workers answering")
        load.start()
        time.sleep(2.0)
        # the victim is the worker holding the most of the load, so the kill cuts requests in flight
        served = Counter(r["worker"] for r in load.snapshot() if r["ok"])
        victim = max(first, key=lambda pid: served[str(pid)])
        survivor = next(pid for pid in first if pid != victim)
        killed_at = time.perf_counter()
        os.kill(victim, signal.SIGKILL)
        replacement = wait_until(lambda: next(iter(set(server.serving_worker_pids()) - set(first)), None), 90,
                                 "a replacement worker started")
        # the load's keep-alive connections all sit on the survivor now: new connections find the replacement
        wait_until(lambda: answered_by_new_connection(server.url) == str(replacement), 90,
                   "the replacement answering")
        time.sleep(1.0)
        assert sorted(server.serving_worker_pids()) == sorted([survivor, replacement])
        assert server.client.get("/readyz").status_code == 200
    finally:
        load.stop()
        server.stop()

    records = load.snapshot()
    failed = [r for r in records if not r["ok"]]
    # only the requests the dead worker was holding fail, and only as cut connections
    assert len(failed) <= CLIENTS, [r["error"] for r in failed]
    assert all(r["status"] is None for r in failed), [r["error"] for r in failed]
    assert all(r["start"] <= killed_at + 1.0 for r in failed), "a request failed well after the kill"
    answered = sorted(r["end"] for r in records if r["ok"] and r["end"] > killed_at)
    gaps = [b - a for a, b in zip([killed_at, *answered], answered)]
    assert max(gaps) < 3.0, f"no answer for {max(gaps):.1f} s after the kill"
    assert sum(r["ok"] and r["worker"] == str(survivor) and r["end"] > killed_at for r in records) >= 10


# ------------------------------------------------------------------- during a promotion


def _written(home: Path, known: set[str], moment: str) -> bool:
    new = set(os.listdir(home / "versions")) - known
    if moment == "writing the version":
        return any(name.startswith(".tmp-") for name in new)
    return any(not name.startswith(".") for name in new)  # renamed into place; pointer next


@pytest.mark.parametrize("moment", ["writing the version", "version in place, pointer not yet moved"])
def test_kill_9_of_the_server_during_a_promotion(quick_home, tmp_path, moment):
    home = _home(quick_home, tmp_path)
    registry = Registry(home)
    before = registry.active("digits")
    known = set(os.listdir(home / "versions"))
    server = LetheServer(home, tmp_path / "bentoml-1", workers=1).start()
    try:
        job_id = server.submit({"name": "killed-mid-promotion", **QUICK_SPEC}).json()["job_id"]
        wait_until(lambda: server.job(job_id)["progress_info"], 300, "the job running")
        tree = server.processes()  # the job's own process included
        deadline = time.monotonic() + 600
        while not _written(home, known, moment):  # as fast as the file system tells us
            assert time.monotonic() < deadline, f"the job never reached the promotion:\n{server.log()}"
            assert server.process.poll() is None, server.log()
            time.sleep(0.0005)
        server.kill(tree)
    finally:
        server.stop()

    # on disk, before anything restarts: the pointer names a complete, checksummed version
    active = registry.active("digits")
    assert active is not None
    assert registry.verify(active).model == "digits"
    assert_every_version_complete(registry)  # a half-written folder is never listed
    assert active in {before, *(m.version for m in registry.list_versions("digits"))}

    restarted = LetheServer(home, tmp_path / "bentoml-2", workers=1).start()
    try:
        assert restarted.generate(n=1, seed=0).json()["model_version"] == active
        job = restarted.wait_job(job_id, timeout=60)  # the new job worker recovers as it starts
        stored = [m for m in registry.list_versions("digits") if m.job == job_id]
        # what the job says depends on how far it got before the kill landed; it is always true
        if not stored:
            assert moment == "writing the version", "the kill came after the rename: the version must be listed"
            assert job["state"] == "failed" and job["reason"].startswith("interrupted:"), job
            assert job["version"] is None, job
        elif stored[0].version != active:  # stored, not activated: the job names it and how to serve it
            assert job["state"] == "failed" and job["reason"].startswith("interrupted:"), job
            assert job["version"] == stored[0].version, job
            assert f"POST /admin/models/{stored[0].version}/activate" in job["reason"], job
        else:  # the pointer moved too before the kill: all done but the record
            assert job["state"] == "promoted" and job["version"] == active, job
            assert job["reason"].startswith("recovered:"), job
        # nothing is wedged (lock, database, registry): the next job is stored, promoted and served
        reply = restarted.submit({"name": "after-the-crash", **QUICK_SPEC})
        assert reply.status_code == 202, reply.text
        second = restarted.wait_job(reply.json()["job_id"], timeout=600)
        assert second["state"] == "promoted", second
        restarted.wait_serving(second["version"])
        assert staged(home) == []  # the dead writer's temporary folder was cleared
        assert_every_version_complete(registry)
    finally:
        restarted.stop()


# --------------------------------------------------------------- a job's process killed


def test_a_job_whose_process_is_killed_or_hangs_fails_alone(quick_home, tmp_path):
    import psutil

    home = _home(quick_home, tmp_path)
    known = set(os.listdir(home / "versions"))
    server = LetheServer(home, tmp_path / "bentoml", workers=1, env={"LETHE_JOB_STALL_S": "15"}).start()
    try:
        worker = psutil.Process(server.job_worker_pid())
        idle_rss = worker.memory_info().rss
        long_job = {**QUICK_SPEC, "name": "killed-job", "hyperparameters": {"epochs": 500, "patience": 500}}
        job_id = server.submit(long_job).json()["job_id"]
        wait_until(lambda: server.job(job_id)["progress_info"].get("epoch"), 300, "the job training")
        job_process, = worker.children()  # the job runs in a process of its own
        assert job_process.memory_info().rss > idle_rss  # which holds what training took
        job_process.kill()

        job = server.wait_job(job_id, timeout=60)
        assert job["state"] == "failed", job
        assert job["reason"] == ("interrupted: the job's process was killed by SIGKILL (the out-of-memory "
                                 "killer?) while running; restart the job to try again"), job
        assert set(os.listdir(home / "versions")) - known == set()
        assert worker.is_running() and server.job_worker_pid() == worker.pid  # it lives on
        assert server.generate(n=2).status_code == 200

        # hung (here: stopped, so its heartbeats stop too): killed after LETHE_JOB_STALL_S, not waited on for ever
        job_id = server.submit({**long_job, "name": "hung-job"}).json()["job_id"]
        wait_until(lambda: server.job(job_id)["progress_info"].get("epoch"), 300, "the job training")
        hung, = worker.children()
        hung.suspend()
        stopped_at = time.monotonic()
        job = server.wait_job(job_id, timeout=90)
        assert job["state"] == "failed" and time.monotonic() - stopped_at >= 15 - 5, job
        assert "the job's process sent no heartbeat for" in job["reason"], job
        assert "LETHE_JOB_STALL_S=15" in job["reason"], job
        assert not hung.is_running() and set(os.listdir(home / "versions")) - known == set()

        second = server.wait_job(server.submit({**QUICK_SPEC, "name": "next"}).json()["job_id"], timeout=600)
        assert second["state"] == "promoted", second
        wait_until(lambda: not worker.children(), 30, "the job's process exiting")
        # what training allocated went with the job's process
        assert worker.memory_info().rss < idle_rss + 64 * 2**20, (idle_rss, worker.memory_info().rss)
    finally:
        server.stop()


# ---------------------------------------------------------------------- a corrupted file


def move_pointer_by_hand(home: Path, version: str) -> None:
    """What a careless operator (or a replica of an older Lethe) could do: no checks."""
    tmp = home / "active" / "digits.json.by-hand"
    tmp.write_text(json.dumps({"version": version, "activated_at": "2026-11-23T00:00:00+00:00"}))
    os.replace(tmp, home / "active" / "digits.json")


def fresh_answers(server, count: int = 24) -> set[tuple[int, int, str]]:
    """(readyz status, /generate status, what /generate said) over fresh connections, so
    that every serving worker answers some of them."""
    seen = set()
    for _ in range(count):
        ready = httpx.get(f"{server.url}/readyz", headers={"Connection": "close"}, timeout=30).status_code
        reply = httpx.post(f"{server.url}/generate", json={"n": 1, "seed": 0}, headers={"Connection": "close"},
                           timeout=30)
        said = reply.json()["model_version"] if reply.status_code == 200 else reply.json()["error"]
        seen.add((ready, reply.status_code, said))
    return seen


def refusing(server, problem: str) -> bool:
    return fresh_answers(server, 6) == {(503, 409, problem)}


def serving(server, version: str) -> bool:
    return fresh_answers(server, 6) == {(200, 200, version)}


def test_a_corrupted_version_file_is_refused_by_every_worker_alike(quick_home, tmp_path):
    """What a worker does with the next request depends only on the files on disk, so every
    worker (and a replacement, and a restart) answers alike: the active version, or a
    refusal naming the bad file (409, not ready), never an older version from memory."""
    home = _home(quick_home, tmp_path)
    registry = Registry(home)
    good = registry.active("digits")
    bad = copy_version(home, good)
    flip_a_byte(home / "versions" / bad / "generator.onnx")
    named = f"{bad}/generator.onnx: checksum mismatch"
    refused = (f"the active version {bad!r} of 'digits' cannot be served: {named} "
               "(file changed or corrupted on disk)")

    server = LetheServer(home, tmp_path / "bentoml-1", workers=2, job_worker=False,
                         env={"LETHE_SWAP_RETRY_S": "1"}).start()
    try:
        reply = server.activate(bad)
        assert reply.status_code == 409 and named in reply.json()["error"], reply.text
        assert registry.active("digits") == good
        reply = server.generate(n=1, seed=0, version=bad)
        assert reply.status_code == 409 and named in reply.text, reply.text

        # a pointer moved onto it by hand: every worker refuses, as one started now would
        move_pointer_by_hand(home, bad)
        wait_until(lambda: refusing(server, refused), 10, "every worker refusing the corrupted version")
        assert fresh_answers(server) == {(503, 409, refused)}
        assert server.activate(good).status_code == 200  # the operator rolls back: no restart needed
        wait_until(lambda: serving(server, good), 10, "every worker serving the good version again")

        # the served version's own file corrupted on disk: every worker stops serving it
        good_file = home / "versions" / good / "generator.onnx"
        flip_a_byte(good_file)
        own = (f"the active version {good!r} of 'digits' cannot be served: {good}/generator.onnx: checksum "
               "mismatch (file changed or corrupted on disk)")
        wait_until(lambda: refusing(server, own), 10, "every worker refusing the version it had in memory")
        # one worker killed: its replacement, which can load nothing, answers like the other
        victim = server.serving_worker_pids()[0]
        os.kill(victim, signal.SIGKILL)
        wait_until(lambda: len(set(server.serving_worker_pids()) - {victim}) == 2, 90, "a replacement worker")
        wait_until(lambda: server.log_path.read_text(errors="replace").count(f"not serving 'digits': {own}") >= 3, 90,
                   "the replacement refusing as it started")
        assert fresh_answers(server) == {(503, 409, own)}
        flip_a_byte(good_file)  # restored from a backup: every worker serves it again
        wait_until(lambda: serving(server, good), 10, "every worker serving the restored version")
        assert fresh_answers(server) == {(200, 200, good)}

        # a garbled pointer: /models still answers, every worker refuses saying why, once
        pointer = home / "active" / "digits.json"
        kept = pointer.read_bytes()
        pointer.write_text("{garbled")
        garbled = "the active pointer of 'digits' cannot be read: active/digits.json: unreadable pointer"
        wait_until(lambda: all(ready == 503 and status == 409 and said.startswith(garbled)
                               for ready, status, said in fresh_answers(server, 6)), 10, "refusing a garbled pointer")
        models = server.client.get("/models")
        assert models.status_code == 200, models.text
        digits, = [m for m in models.json()["models"] if m["model"] == "digits"]
        assert digits["active"] is None and digits["problem"].startswith("active/digits.json: unreadable pointer")
        time.sleep(2.0)  # 10 polls of every worker: logged once each, not at every poll
        assert server.log_path.read_text(errors="replace").count(f"not serving 'digits': {garbled}") == 2
        pointer.write_bytes(kept)
        wait_until(lambda: serving(server, good), 10, "serving once the pointer is readable again")
        move_pointer_by_hand(home, bad)  # for the restart below
        wait_until(lambda: refusing(server, refused), 10, "refusing the corrupted version again")
        assert "Traceback" not in server.log_path.read_text(errors="replace")
    finally:
        server.stop()

    # restarted with the corrupted version active: not ready, and sampling is refused naming
    # the file; never an older version (which may still show what a later one forgot)
    restarted = LetheServer(home, tmp_path / "bentoml-2", workers=1, job_worker=False,
                            env={"LETHE_SWAP_RETRY_S": "1"}).start(ready=False)
    try:
        assert restarted.client.get("/readyz").status_code == 503
        wait_until(lambda: "lethe: not ready: an active version cannot be loaded" in restarted.log(), 30,
                   "the launcher saying why it is not ready")
        reply = restarted.generate(n=1, seed=0)
        assert reply.status_code == 409, reply.text
        assert reply.json()["error"] == refused and "Traceback" not in reply.text

        flip_a_byte(home / "versions" / bad / "generator.onnx")  # restored from a backup: retried, served
        restarted.wait_serving(bad, timeout=10)
        assert restarted.client.get("/readyz").status_code == 200
        assert restarted.activate(good).status_code == 200  # and a rollback needs no restart either
        restarted.wait_serving(good)
    finally:
        restarted.stop()


# ------------------------------------------------------------------------ a full disk


@pytest.fixture
def small_disk(tmp_path):
    """A 64 MiB tmpfs of its own, so a test can fill it up without touching the machine's."""
    mount = tmp_path / "disk"
    mount.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a small file system needs root (CI runs as root)")
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(path: Path, leave_bytes: int) -> None:
    """Write zeros to ``path`` until only ``leave_bytes`` are free on its file system."""
    stat = os.statvfs(path.parent)
    size = stat.f_bavail * stat.f_frsize - leave_bytes
    with open(path, "wb") as out:
        chunk = bytes(1 << 20)
        while size > 0:
            size -= out.write(chunk[: min(len(chunk), size)])
        out.flush()
        os.fsync(out.fileno())


def test_the_disk_filling_up_during_a_job(quick_home, small_disk, tmp_path):
    home = small_disk / "home"
    shutil.copytree(quick_home, home)
    registry = Registry(home)
    good = registry.active("digits")
    versions_before = sorted(m.version for m in registry.list_versions())
    version_bytes = sum((home / "versions" / good / name).stat().st_size for name in registry.get(good).files)
    server = LetheServer(home, tmp_path / "bentoml", workers=1).start()
    try:
        reply = server.submit({"name": "disk-fills-up", **QUICK_SPEC})
        assert reply.status_code == 202, reply.text
        job_id = reply.json()["job_id"]
        server.wait_job(job_id, until={"running", "validating", *{"promoted", "rejected", "failed"}}, timeout=300)
        # while it trains, something else takes the disk: less room than the version needs
        filler = small_disk / "filler"
        fill(filler, leave_bytes=version_bytes // 2)

        job = server.wait_job(job_id, timeout=600)
        assert job["state"] == "failed", job
        assert "No space left on device" in job["reason"], job["reason"]
        assert "Traceback" not in job["reason"]

        # nothing half-written is visible, and what was stored is intact
        assert staged(home) == []
        assert sorted(m.version for m in registry.list_versions()) == versions_before
        assert registry.active("digits") == good
        assert_every_version_complete(registry)
        with sqlite3.connect(home / "jobs.sqlite") as db:
            assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert server.generate(n=2, seed=0).json()["model_version"] == good
        failed = server.client.get("/admin/audit", params={"job_id": job_id}, headers=server.auth).json()
        assert [e["action"] for e in failed["entries"]][0] == "failed"

        # space comes back: the next job works without a restart
        filler.unlink()
        reply = server.submit({"name": "disk-freed", **QUICK_SPEC})
        assert reply.status_code == 202, reply.text
        job = server.wait_job(reply.json()["job_id"], timeout=600)
        assert job["state"] == "promoted", job
        server.wait_serving(job["version"])
    finally:
        server.stop()

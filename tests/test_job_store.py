"""The job store on both back ends, real SQLite files and a real PostgreSQL server:
persistence, FIFO claims, one job at a time across processes, cancel/finish rules,
progress, crash recovery, unreadable databases and a database server that goes away."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import socket
import sqlite3
import threading
import time
from pathlib import Path

import pytest

from unlearning.errors import LetheError, NotFoundError
from unlearning.store import (
    FINAL_STATES,
    JobFinishedError,
    JobRecord,
    JobStore,
    JobStoreError,
    QueueFullError,
    SqliteJobStore,
    StoredVersion,
    StoreUnavailableError,
    open_store,
    this_worker,
)

SPEC = {"forget": {"classes": [3]}, "method": "adversarial"}
ACTIVE = ["running", "validating"]


def _submit(store: JobStore, name: str = "forget-3", **kwargs) -> JobRecord:
    return store.submit(dict(SPEC, name=name), spec_hash=f"hash-{name}", spec_name=name, **kwargs)


def open_at(where: str) -> JobStore:
    """The store at a SQLite path or a PostgreSQL URL (what a child process is handed)."""
    return open_store(url=where) if where.startswith("postgresql://") else SqliteJobStore(Path(where))


def where(store: JobStore) -> str:
    return store.db.url if store.backend == "postgresql" else str(store.path)


def execute(store: JobStore, sql: str, params: tuple = ()) -> None:
    """Raw SQL behind the store's back (``?`` placeholders), as another program would."""
    with store._connect() as conn:
        conn.execute(sql, params)


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request, tmp_path) -> JobStore:
    if request.param == "sqlite":
        return SqliteJobStore(tmp_path / "jobs.sqlite")
    return open_store(url=request.getfixturevalue("postgres").new_database())


# ------------------------------------------------------------- child processes (spawned)


def _race(path: str, out: str, index: int, barrier) -> None:
    """Claim in a loop, hold each job a little, finish it; record what happened."""
    store = open_at(path)
    worker = this_worker()
    events = []
    barrier.wait()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        job = store.claim_next(worker)
        if job is None:
            if not store.list(states=["queued"]) and not store.list(states=ACTIVE):
                break
            time.sleep(0.002)
            continue
        start = time.monotonic()
        active = [j.id for j in store.list(states=ACTIVE)]
        time.sleep(0.1)
        end = time.monotonic()
        store.finish(job.id, "promoted", version=f"digits-v{index}")
        events.append({"job": job.id, "worker": worker, "start": start, "end": end, "active": active})
    Path(out, f"{index}.json").write_text(json.dumps(events))


def _claim_and_die(path: str) -> None:
    open_at(path).claim_next(this_worker())
    os._exit(0)  # no finish, no cleanup: a crash as far as the store can tell


# ----------------------------------------------------------------------------------- tests


def test_submit_get_list_round_trip_and_persistence(store, tmp_path):
    first = _submit(store, "a", parent="digits-v1", actor="alice", uploads_dir=str(tmp_path / "up"))
    second = _submit(store, "b")

    assert len(first.id) == 32 and int(first.id, 16) >= 0
    assert first.state == "queued" and first.progress == 0.0 and not first.cancel_requested
    assert first.created_at.endswith("+00:00") and first.started_at is None
    assert store.get(first.id) == first
    assert store.get(first.id).spec == dict(SPEC, name="a")
    assert (first.parent, first.actor, first.spec_hash) == ("digits-v1", "alice", "hash-a")

    reopened = open_at(where(store))  # a new process would see the same
    assert reopened.get(second.id) == second
    assert [j.id for j in reopened.list()] == [second.id, first.id]  # newest first
    assert [j.id for j in reopened.list(limit=1)] == [second.id]
    assert reopened.list(states=["running"]) == []
    with store._connect() as conn:  # schema created once
        assert conn.execute("SELECT count(*) AS n FROM schema_version").fetchone()["n"] == 1
    if store.backend == "sqlite":
        with sqlite3.connect(store.path) as conn:  # WAL journal
            assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    with pytest.raises(LetheError, match="unknown job state"):
        reopened.list(states=["done"])
    with pytest.raises(LetheError, match="not plain JSON"):
        store.submit({"x": float("nan")}, spec_hash="h")


def test_default_path_is_under_lethe_home(tmp_path, monkeypatch):
    monkeypatch.setenv("LETHE_HOME", str(tmp_path / "lethe"))
    monkeypatch.delenv("LETHE_DATABASE_URL", raising=False)
    assert SqliteJobStore().path == open_store().path == tmp_path / "lethe" / "jobs.sqlite"


def test_unknown_id_is_not_found(store):
    for call in (store.get, store.cancel, store.cancel_requested, store.heartbeat,
                 lambda i: store.finish(i, "failed"), lambda i: store.report_progress(i, 0.5, {})):
        with pytest.raises(NotFoundError, match="nope"):
            call("nope")


def test_claims_are_fifo_and_one_at_a_time(store):
    jobs = [_submit(store, name) for name in "abc"]
    first = store.claim_next("w:1")
    assert first.id == jobs[0].id and first.state == "running" and first.worker == "w:1"
    assert first.started_at and first.heartbeat_at
    assert store.claim_next("w:2") is None  # one job at a time, whoever asks
    store.report_progress(first.id, 0.9, {"stage": "validating"}, state="validating")
    assert store.claim_next("w:2") is None
    store.finish(first.id, "rejected", reason="gate failed")
    second = store.claim_next("w:2")
    assert second.id == jobs[1].id
    store.finish(second.id, "failed", reason="boom")
    assert store.claim_next("w:1").id == jobs[2].id


def test_threads_racing_get_one_job(store):
    job = _submit(store)
    got, barrier = [], threading.Barrier(8)

    def claim(i: int) -> None:
        barrier.wait()
        got.append(store.claim_next(f"thread:{i}"))

    threads = [threading.Thread(target=claim, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert [r.id for r in got if r is not None] == [job.id]


def test_processes_racing_never_run_two_jobs_at_once(store, tmp_path):
    jobs = {_submit(store, name).id for name in "abc"}
    out = tmp_path / "events"
    out.mkdir()
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(4)
    procs = [ctx.Process(target=_race, args=(where(store), str(out), i, barrier)) for i in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(15)
    assert [p.exitcode for p in procs] == [0, 0, 0, 0]

    events = [e for i in range(4) for e in json.loads((out / f"{i}.json").read_text())]
    assert sorted(e["job"] for e in events) == sorted(jobs)  # each claimed exactly once
    for e in events:
        assert e["active"] == [e["job"]]  # while held, it was the only active job
    spans = sorted((e["start"], e["end"]) for e in events)
    for (_, end), (start, _) in zip(spans, spans[1:]):
        assert end <= start, f"two jobs were running at once: {spans}"
    assert {j.state for j in store.list()} == {"promoted"}


def test_the_queue_limit_and_pages(store):
    jobs = [_submit(store, name) for name in "abc"]
    with pytest.raises(QueueFullError, match="3 jobs are queued"):
        store.submit(dict(SPEC, name="d"), spec_hash="hash-d", max_queued=3)
    assert len(store.list()) == 3  # refused in the transaction: nothing stored
    store.claim_next("w:1")  # a running job is not queued
    assert store.submit(dict(SPEC, name="d"), spec_hash="hash-d", max_queued=3).state == "queued"
    newest_first = [j.id for j in store.list()]
    assert newest_first[1:] == [j.id for j in jobs[::-1]]
    assert [j.id for j in store.list(limit=2, before=newest_first[1])] == newest_first[2:]
    assert [j.id for j in store.list(states=["queued"], before=newest_first[0])] == [jobs[2].id, jobs[1].id]
    with pytest.raises(NotFoundError, match="'nope' not found"):
        store.list(before="nope")


def test_cancel_queued_job(store):
    job = _submit(store)
    cancelled = store.cancel(job.id)
    assert cancelled.state == "cancelled" and cancelled.finished_at
    assert cancelled.reason == "cancelled before it started"
    assert store.claim_next("w:1") is None  # never runs


def test_cancel_running_job_sets_flag_then_worker_finishes(store):
    job = _submit(store)
    store.claim_next("w:1")
    assert store.cancel_requested(job.id) is False
    flagged = store.cancel(job.id)
    assert flagged.state == "running" and flagged.cancel_requested
    assert store.cancel(job.id).cancel_requested  # asking twice is fine
    assert store.cancel_requested(job.id) is True
    done = store.finish(job.id, "cancelled")
    assert done.state == "cancelled" and done.reason == "cancelled by request" and done.finished_at


def test_finished_jobs_cannot_change(store):
    job = _submit(store)
    store.claim_next("w:1")
    store.finish(job.id, "promoted", version="digits-v2", result={"status": "promoted", "fid": 3.5})
    with pytest.raises(JobFinishedError, match=rf"job {job.id} already ended: it was promoted") as err:
        store.cancel(job.id)
    assert isinstance(err.value, LetheError)
    with pytest.raises(JobFinishedError, match="promoted.*cannot become failed"):
        store.finish(job.id, "failed", reason="late")
    with pytest.raises(ValueError, match="final state"):
        store.finish(job.id, "running")
    assert store.cancel_requested(job.id) is True  # a worker still holding it should stop
    final = store.get(job.id)
    assert final.state == "promoted" and final.version == "digits-v2" and final.reason is None
    assert final.result == {"status": "promoted", "fid": 3.5} and final.progress == 1.0
    assert final.state in FINAL_STATES


def test_progress_is_visible(store):
    job = _submit(store)
    with pytest.raises(LetheError, match="queued"):
        store.report_progress(job.id, 0.1, {})
    claimed = store.claim_next("w:1")
    store.report_progress(job.id, 0.25, {"stage": "training", "epoch": 1, "invalidity": 0.4})
    store.report_progress(job.id, 0.3, {"epoch": 2})  # the estimate stays until replaced
    seen = store.get(job.id)
    assert seen.progress == 0.3 and seen.state == "running"
    assert seen.progress_info == {"stage": "training", "epoch": 2, "invalidity": 0.4}
    assert seen.heartbeat_at >= claimed.heartbeat_at

    store.report_progress(job.id, 7.0, {"stage": "validating", "fid": float("nan")}, state="validating")
    seen = store.get(job.id)
    assert seen.state == "validating" and seen.progress == 1.0  # clamped
    assert seen.progress_info == {"stage": "validating", "fid": None}  # new stage, NaN -> null

    # the attack check reports a stage of its own while validating: the job stays validating
    store.report_progress(job.id, 0.9, {"stage": "attack"}, state="running")
    seen = store.get(job.id)
    assert seen.state == "validating" and seen.progress_info == {"stage": "attack"}

    store.finish(job.id, "failed", reason="boom")
    store.report_progress(job.id, 0.5, {"stage": "late"})  # ignored once ended
    store.heartbeat(job.id)
    seen = store.get(job.id)
    assert seen.state == "failed" and seen.progress_info["stage"] == "attack"


def test_recover_fails_jobs_of_dead_workers_only(store):
    crashed = _submit(store, "crashed")
    child = mp.get_context("spawn").Process(target=_claim_and_die, args=(where(store),))
    child.start()
    child.join(15)
    assert child.exitcode == 0
    assert store.get(crashed.id).state == "running"  # the store cannot know yet

    assert store.recover() == [crashed.id]
    failed = store.get(crashed.id)
    worker = f"{socket.gethostname()}:{child.pid}"
    assert failed.state == "failed" and failed.finished_at
    assert failed.reason == (
        f"interrupted: the job worker stopped ({worker}) while running; restart the job to try again"
    )

    live = _submit(store, "live")
    store.claim_next(this_worker())  # this test process: alive, started before the claim
    assert store.recover() == []
    assert store.get(live.id).state == "running"
    assert store.recover(alive=lambda w: w != this_worker()) == [live.id]

    remote = _submit(store, "remote")
    store.claim_next("elsewhere.invalid:4242")
    assert store.recover(stale_after_s=60) == []  # fresh heartbeat
    assert store.recover(stale_after_s=0) == [remote.id]
    assert "stopped sending heartbeats" in store.get(remote.id).reason

    # a worker watching another instance's jobs goes by heartbeats alone, even for this host
    here = _submit(store, "here-but-silent")
    store.claim_next(this_worker())
    assert store.recover(stale_after_s=60, by_heartbeat_only=True) == []
    assert store.recover(stale_after_s=0, by_heartbeat_only=True) == [here.id]


def test_recover_names_the_version_a_dead_job_stored(store):
    """A crash after a job stored its version: the job records that version. Stored but not
    active: it fails saying how to serve it. Stored and active: it ends promoted (only
    its record was missing). A job that stored nothing fails saying to restart it."""
    left = {"promoted-job": StoredVersion("digits-v7", "promoted", False),
            "rejected-job": StoredVersion("digits-v8", "rejected", False),
            "activated-job": StoredVersion("digits-v9", "promoted", True), "no-version": None}
    jobs = {}
    for name, stored in left.items():  # one running job at a time
        jobs[name] = _submit(store, name)
        assert store.claim_next("elsewhere.invalid:1").id == jobs[name].id
        assert store.recover(stale_after_s=0, stored={jobs[name].id: stored}.get) == [jobs[name].id]

    promoted = store.get(jobs["promoted-job"].id)
    assert promoted.state == "failed" and promoted.version == "digits-v7"
    assert "after storing digits-v7, which passed its gates" in promoted.reason
    assert promoted.reason.endswith("to serve it: POST /admin/models/digits-v7/activate")
    rejected = store.get(jobs["rejected-job"].id)
    assert rejected.version == "digits-v8" and "as rejected; restart the job" in rejected.reason
    activated = store.get(jobs["activated-job"].id)  # all done but the record: promoted
    assert activated.state == "promoted" and activated.version == "digits-v9"
    assert activated.reason.startswith("recovered: ") and "digits-v9 was stored and activated" in activated.reason
    nothing = store.get(jobs["no-version"].id)
    assert nothing.version is None and nothing.reason.endswith("restart the job to try again")
    audited = {e.job_id: (e.action, e.version) for e in store.audit_log() if e.action != "submit"}
    assert audited == {job.id: ("promoted" if name == "activated-job" else "failed", left[name] and left[name].version)
                       for name, job in jobs.items()}


def test_end_interrupted_tells_what_the_killed_job_left(store):
    """The job worker ends a job whose process died or was killed: failed with the reason,
    cancelled if a cancel was asked for (it has stopped), or with the version it stored."""
    died = _submit(store, "died")
    store.claim_next("here:1")
    ended = store.end_interrupted(died.id, "the job's process was killed by SIGKILL")
    assert ended.state == "failed" and ended.reason == (
        "interrupted: the job's process was killed by SIGKILL while running; restart the job to try again")
    with pytest.raises(JobFinishedError, match="already ended: it was failed"):
        store.end_interrupted(died.id, "again")

    asked = _submit(store, "asked-to-stop")
    store.claim_next("here:1")
    store.cancel(asked.id, actor="token:abc")
    ended = store.end_interrupted(asked.id, "its process sent no heartbeat for 20 s (hung?) and was killed")
    assert ended.state == "cancelled" and ended.reason.startswith("cancelled by request: its process sent no")

    stored = _submit(store, "stored")
    store.claim_next("here:1")
    ended = store.end_interrupted(stored.id, "hung", stored=StoredVersion("digits-v4", "promoted", True))
    assert ended.state == "promoted" and ended.version == "digits-v4" and ended.reason.startswith("recovered: hung")

    queued = _submit(store, "queued")
    with pytest.raises(LetheError, match="has not been claimed"):
        store.end_interrupted(queued.id, "never ran")
    audited = {(e.job_id, e.action) for e in store.audit_log() if e.action not in ("submit", "cancel")}
    assert audited == {(died.id, "failed"), (asked.id, "cancelled"), (stored.id, "promoted")}


def test_recover_sees_through_a_reused_pid(store):
    job = _submit(store)
    store.claim_next(this_worker())
    # claimed long before this process existed
    execute(store, "UPDATE jobs SET started_at = '2001-01-01T00:00:00+00:00' WHERE id = ?", (job.id,))
    assert store.recover() == [job.id]


def test_unreadable_database_is_a_clear_error(tmp_path):
    bad = tmp_path / "jobs.sqlite"
    bad.write_bytes(b"definitely not SQLite\n" * 100)
    with pytest.raises(JobStoreError, match="not a readable SQLite database") as err:
        SqliteJobStore(bad)
    assert str(bad) in str(err.value) and isinstance(err.value, LetheError)
    assert err.value.__cause__ is None

    folder = tmp_path / "folder.sqlite"
    folder.mkdir()
    with pytest.raises(JobStoreError):
        SqliteJobStore(folder)

    path = tmp_path / "later.sqlite"
    store = SqliteJobStore(path)
    job = _submit(store)
    for suffix in ("-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    path.write_bytes(b"\x00garbage" * 2000)
    with pytest.raises(JobStoreError, match="cannot be used"):
        store.get(job.id)


def test_newer_schema_is_refused(store):
    execute(store, "UPDATE schema_version SET version = 99")
    with pytest.raises(JobStoreError, match="schema version 99"):
        if store.backend == "sqlite":
            SqliteJobStore(store.path)
        else:
            from unlearning.store.postgres import PostgresDatabase

            PostgresDatabase(store.db.url).ensure_schema()


def test_a_database_server_that_goes_away_is_a_clear_error_and_is_reconnected(postgres):
    """PostgreSQL restarted under a store: calls while it is down raise StoreUnavailableError
    naming the database (never a traceback of psycopg's), and the next call after it is
    back works without reopening the store."""
    store = open_store(url=postgres.new_database())
    job = _submit(store)
    postgres.stop()
    try:
        with pytest.raises(StoreUnavailableError, match="cannot be reached") as err:
            store.get(job.id)
        assert "127.0.0.1" in str(err.value) and isinstance(err.value, LetheError)
    finally:
        postgres.start()
    assert store.get(job.id).state == "queued"
    assert store.claim_next("w:1").id == job.id

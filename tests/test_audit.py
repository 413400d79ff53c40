"""The audit trail: every admin action and job outcome appended to the job store (real
SQLite and a real PostgreSQL), read back in order and filtered; an old SQLite database
upgraded in place; and over real
HTTP against a real `lethe serve`: submit, cancel, activate and the worker's outcome are
recorded with the actor, spec hash and versions, and ``GET /admin/audit`` serves them."""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from unlearning.errors import LetheError
from unlearning.store import AuditEntry, JobStore, SqliteJobStore, open_store, this_worker
from unlearning.store.events import record_activation
from unlearning.store.migrations import SQLITE_SCHEMA_VERSION as SCHEMA_VERSION

SPEC = {"name": "forget-3", "sets": []}


def _submit(store: JobStore, name: str = "forget-3", model: str | None = "digits", **kwargs):
    return store.submit(dict(SPEC, name=name), spec_hash=f"hash-{name}", spec_name=name, parent="digits-v1",
                        actor="token:alice", model=model, **kwargs)


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request, tmp_path) -> JobStore:
    if request.param == "sqlite":
        return SqliteJobStore(tmp_path / "jobs.sqlite")
    return open_store(url=request.getfixturevalue("postgres").new_database())


def reopened(store: JobStore) -> JobStore:
    """The same store opened afresh, as another process would."""
    if store.backend == "sqlite":
        return SqliteJobStore(store.path)
    from unlearning.store.postgres import PostgresJobStore

    return PostgresJobStore(store.db.url)


def raw_sql(store: JobStore):
    """A connection of another program's (not the store's), and the error type it raises."""
    if store.backend == "sqlite":
        return sqlite3.connect(store.path, isolation_level=None), sqlite3.DatabaseError
    import psycopg

    return psycopg.connect(store.db.url, autocommit=True), psycopg.Error


# ------------------------------------------------------------------------- the store


def test_entries_are_appended_in_order_with_their_fields(store):
    first = _submit(store, "a", detail={"method": "kong-classifier"})
    store.cancel(first.id, actor="token:bob")                      # queued: cancelled at once
    second = _submit(store, "b")
    store.claim_next(this_worker())
    store.cancel(second.id, actor="token:bob")                     # running: flagged
    store.finish(second.id, "cancelled", detail={"worker": "w:1"})  # the worker ends it
    third = _submit(store, "c")
    store.claim_next(this_worker())
    store.finish(third.id, "promoted", version="digits-v2", detail={"activated": True})
    fourth = _submit(store, "d")
    store.claim_next(this_worker())
    store.finish(fourth.id, "rejected", version="digits-v3", reason="invalidity 0.2 > 0.01")
    fifth = _submit(store, "e")
    store.claim_next(this_worker())
    store.finish(fifth.id, "failed", reason="out of memory")
    store.record("activate", "token:carol", model="digits", version="digits-v1", parent=None,
                 detail={"previous": "digits-v2", "force": False})

    entries = store.audit_log()
    assert [e.seq for e in entries] == list(range(len(entries), 0, -1))  # newest first, no gaps
    assert [(e.action, e.actor) for e in reversed(entries)] == [
        ("submit", "token:alice"), ("cancel", "token:bob"),
        ("submit", "token:alice"), ("cancel", "token:bob"), ("cancelled", "job-worker"),
        ("submit", "token:alice"), ("promoted", "job-worker"),
        ("submit", "token:alice"), ("rejected", "job-worker"),
        ("submit", "token:alice"), ("failed", "job-worker"),
        ("activate", "token:carol"),
    ]
    by_seq = {e.seq: e for e in entries}
    submit = by_seq[1]
    assert (submit.job_id, submit.model, submit.spec_name, submit.spec_hash, submit.parent, submit.version) == (
        first.id, "digits", "a", "hash-a", "digits-v1", None)
    assert submit.detail == {"method": "kong-classifier"}
    assert submit.time.endswith("+00:00") and submit.time <= by_seq[2].time
    assert by_seq[2].detail == {"previous_state": "queued", "state": "cancelled"}
    assert by_seq[4].detail == {"previous_state": "running", "state": "running"}
    assert by_seq[5].detail == {"worker": "w:1", "reason": "cancelled by request"}
    promoted = by_seq[7]  # later entries carry the job's spec, parent and (from its submit) model
    assert (promoted.job_id, promoted.version, promoted.parent, promoted.model, promoted.spec_hash) == (
        third.id, "digits-v2", "digits-v1", "digits", "hash-c")
    assert promoted.detail == {"activated": True}
    assert by_seq[9].version == "digits-v3" and by_seq[9].detail == {"reason": "invalidity 0.2 > 0.01"}
    assert by_seq[11].detail == {"reason": "out of memory"}
    assert by_seq[12].job_id is None and by_seq[12].detail == {"previous": "digits-v2", "force": False}
    assert reopened(store).audit_log() == entries  # durable: another process reads the same


def test_filters_and_limit(store):
    jobs = [_submit(store, name) for name in "abcde"]
    store.cancel(jobs[1].id, actor="token:bob")
    store.cancel(jobs[3].id, actor="token:bob")  # seqs 1-5 submits, 6 and 7 cancels

    assert [e.seq for e in store.audit_log(limit=2)] == [7, 6]
    assert [e.seq for e in store.audit_log(since_seq=5)] == [7, 6]
    # a tail misses nothing: with a limit, the entries right after since_seq (newest first)
    assert [e.seq for e in store.audit_log(since_seq=2, limit=2)] == [4, 3]
    assert store.audit_log(since_seq=7) == []
    assert [e.job_id for e in store.audit_log(action="cancel")] == [jobs[3].id, jobs[1].id]
    assert [e.action for e in store.audit_log(job_id=jobs[1].id)] == ["cancel", "submit"]
    assert [e.seq for e in store.audit_log(action="submit", since_seq=3, job_id=jobs[4].id)] == [5]
    assert store.audit_log(job_id="nope") == []
    for kwargs, name in (({"limit": 0}, "limit"), ({"limit": 1001}, "limit"), ({"limit": "5"}, "limit"),
                         ({"since_seq": -1}, "since_seq"), ({"action": "deleted"}, "action")):
        with pytest.raises(LetheError, match=name):
            store.audit_log(**kwargs)


def test_the_log_is_append_only_and_a_job_never_lacks_its_entry(store):
    _submit(store)
    conn, error = raw_sql(store)
    with conn:
        statements = ["UPDATE audit SET actor = 'someone else'", "DELETE FROM audit"]
        for statement in statements + (["TRUNCATE audit"] if store.backend == "postgresql" else []):
            with pytest.raises(error, match="append-only"):
                conn.execute(statement)
    assert len(store.audit_log()) == 1

    conn, _ = raw_sql(store)
    with conn:  # the entry cannot be written: the submit fails whole
        conn.execute("DROP TABLE audit")
    with pytest.raises(LetheError):
        _submit(store, "lost")
    assert [j.spec_name for j in store.list()] == ["forget-3"]


def test_recover_records_the_jobs_it_fails(store):
    job = _submit(store)
    store.claim_next("elsewhere:1")
    assert store.recover(alive=lambda worker: False) == [job.id]
    entry = store.audit_log(action="failed")[0]
    assert (entry.actor, entry.job_id, entry.model) == ("job-worker", job.id, "digits")
    assert entry.detail["worker"] == "elsewhere:1" and "interrupted" in entry.detail["reason"]


# the schema a database written by the previous Lethe has (service/job_store.py, schema 1)
SCHEMA_V1 = [
    "CREATE TABLE schema_version (version INTEGER NOT NULL)",
    """CREATE TABLE jobs (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        id TEXT NOT NULL UNIQUE,
        state TEXT NOT NULL CHECK (state IN ('queued', 'running', 'validating', 'promoted', 'rejected',
                                             'failed', 'cancelled')),
        spec TEXT NOT NULL, spec_hash TEXT NOT NULL, spec_name TEXT, parent TEXT, actor TEXT,
        uploads_dir TEXT, created_at TEXT NOT NULL, updated_at TEXT NOT NULL, started_at TEXT,
        finished_at TEXT, progress REAL NOT NULL DEFAULT 0, progress_info TEXT NOT NULL DEFAULT '{}',
        cancel_requested INTEGER NOT NULL DEFAULT 0, worker TEXT, heartbeat_at TEXT, version TEXT,
        result TEXT, reason TEXT
    )""",
    "CREATE INDEX jobs_state ON jobs (state, seq)",
    "CREATE UNIQUE INDEX jobs_one_active ON jobs ((0)) WHERE state IN ('running', 'validating')",
    "INSERT INTO schema_version (version) VALUES (1)",
]


def test_an_old_database_is_upgraded_in_place(tmp_path):
    path = tmp_path / "jobs.sqlite"
    with sqlite3.connect(path) as conn:
        for statement in SCHEMA_V1:
            conn.execute(statement)
        conn.execute("PRAGMA journal_mode = WAL")
        now = "2026-01-01T00:00:00+00:00"
        for job_id, state in (("a" * 32, "promoted"), ("b" * 32, "queued")):
            conn.execute("""INSERT INTO jobs (id, state, spec, spec_hash, spec_name, parent, actor, created_at,
                            updated_at, version) VALUES (?, ?, '{"name": "old"}', 'h-old', 'old', 'digits-v1',
                            'token:old', ?, ?, ?)""",
                         (job_id, state, now, now, "digits-v2" if state == "promoted" else None))
    assert SCHEMA_VERSION == 2

    store = SqliteJobStore(path)

    old = store.get("a" * 32)
    assert (old.state, old.version, old.spec, old.actor) == ("promoted", "digits-v2", {"name": "old"}, "token:old")
    assert [j.id for j in store.list()] == ["b" * 32, "a" * 32]
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT version FROM schema_version").fetchall() == [(2,)]
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        assert "audit" in tables
    assert store.audit_log() == []  # no history is invented for what happened before
    store.cancel("b" * 32, actor="token:new")  # an old job gets entries (its model is not known)
    entry = store.audit_log()[0]
    assert (entry.action, entry.job_id, entry.spec_hash, entry.model) == ("cancel", "b" * 32, "h-old", None)
    new = _submit(store, "new")
    SqliteJobStore(path)  # opening again changes nothing
    assert [e.job_id for e in SqliteJobStore(path).audit_log()] == [new.id, "b" * 32]


def test_one_token_is_one_actor_on_every_instance_sharing_the_trail(postgres, tmp_path):
    """With PostgreSQL, instances on several nodes have homes of their own: the key of the
    token fingerprints lives with the trail, so one token is one actor on all of them."""
    from service.admin_auth import actor_key, fingerprint

    url = postgres.new_database()
    keys = [actor_key(tmp_path / name, open_store(url=url)) for name in ("a", "b")]  # asks nothing yet
    assert keys[0]() == keys[1]() and len(keys[0]()) == 32
    assert fingerprint(b"token", keys[0]()) == fingerprint(b"token", keys[1]())
    assert not list(tmp_path.rglob("audit.key"))
    home = tmp_path / "c"  # SQLite: the home's own file, as every worker and replica on it reads
    home.mkdir()
    key = actor_key(home, SqliteJobStore(home / "jobs.sqlite"))
    assert (home / "audit.key").read_bytes() == key() != keys[0]()


def test_a_postgres_database_of_schema_1_is_upgraded_in_place(postgres):
    import psycopg

    from unlearning.store.migrations import POSTGRES_MIGRATIONS

    url = postgres.new_database()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
        for statement in POSTGRES_MIGRATIONS[1]:
            conn.execute(statement)
        conn.execute("INSERT INTO schema_version (version) VALUES (1)")
    store = open_store(url=url)
    assert len(store.shared_secret("x")) == 32 and store.shared_secret("x") == reopened(store).shared_secret("x")
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT version FROM schema_version").fetchall() == [(2,)]


def test_a_failed_audit_write_never_fails_an_activation(tmp_path, caplog):
    class Manifest:  # what record_activation reads of a version's manifest
        version, model, parent, status = "digits-v2", "digits", "digits-v1", "promoted"
        spec = {"name": "forget-zero", "sets": [{"kind": "validity", "rule": {
            "type": "classifier_label", "classifier": "digits", "labels": [0]}}]}

    path = tmp_path / "jobs.sqlite"
    store = SqliteJobStore(path)
    record_activation(store, Manifest, "token:x", previous="digits-v1", force=True)
    entry = store.audit_log()[0]
    assert (entry.action, entry.version, entry.parent, entry.spec_name) == ("activate", "digits-v2", "digits-v1",
                                                                             "forget-zero")
    assert len(entry.spec_hash) == 64 and entry.detail == {"previous": "digits-v1", "force": True,
                                                           "status": "promoted"}
    for suffix in ("-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    path.write_bytes(b"\x00garbage" * 2000)
    with caplog.at_level(logging.WARNING, logger="unlearning.store.events"):
        record_activation(store, Manifest, "token:x", previous="digits-v1", force=False)  # no raise
    assert "digits-v2 was activated by token:x, but the audit entry could not be written" in caplog.text


def test_cli_audit_prints_the_entries(tmp_path):
    store = SqliteJobStore(tmp_path / "jobs.sqlite")
    job = _submit(store, "cli", detail={"method": "feedback"})
    store.cancel(job.id, actor="token:bob")
    env = {**os.environ, "LETHE_HOME": str(tmp_path)}

    def lethe(*args):
        done = subprocess.run([sys.executable, "-m", "unlearning.cli", "audit", *args], env=env,
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
        return done.stdout

    listed = json.loads(lethe("--json"))
    assert [AuditEntry.model_validate(e) for e in listed] == store.audit_log()
    lines = lethe("--limit", "1").splitlines()
    assert len(lines) == 1 and " token:bob " in lines[0] and " cancel " in lines[0] and f"job={job.id}" in lines[0]
    assert "spec_hash=hash-cli" in lethe().splitlines()[1]


def test_cli_activate_is_recorded(quick_copy):
    done = subprocess.run([sys.executable, "-m", "unlearning.cli", "activate", "digits-v1"],
                          env={**os.environ, "LETHE_HOME": str(quick_copy)}, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0 and done.stdout.strip() == "active digits: digits-v1", done.stderr
    entry, = SqliteJobStore(quick_copy / "jobs.sqlite").audit_log()
    assert entry.actor.startswith("cli:") and (entry.action, entry.model, entry.version) == (
        "activate", "digits", "digits-v1")
    assert entry.detail == {"previous": "digits-v1", "force": False, "status": "promoted"}


# ------------------------------------------------------------------------- over HTTP

VALID = {"name": "audit-zero", "sets": [{"kind": "validity", "rule": {
    "type": "classifier_label", "classifier": "digits", "labels": [0]}}],
    "hyperparameters": {"epochs": 200}, "gates": {"eval_samples": 100}}
REFUSED = {"name": "audit-refused", "sets": [{"kind": "validity", "rule": {
    "type": "classifier_label", "classifier": "no-such-classifier", "labels": [0]}}]}


@pytest.fixture(scope="module")
def server(quick_home, tmp_path_factory):
    from serving import LetheServer, copy_version

    root = tmp_path_factory.mktemp("audit")
    home = root / "home"
    shutil.copytree(quick_home, home)
    assert copy_version(home, "digits-v1", spec=VALID) == "digits-v2"
    srv = LetheServer(home, root / "bentoml", workers=1).start()
    yield srv
    srv.stop()


def test_admin_actions_are_in_the_audit_trail(server):
    from serving import TOKEN
    from unlearning.spec import load_spec, spec_hash

    # a keyed hash of the token (the home's audit.key), never a plain hash of the header
    key = (server.home / "audit.key").read_bytes()
    actor = "token:" + hmac.new(key, TOKEN.encode(), hashlib.sha256).hexdigest()[:16]
    get = lambda **params: server.client.get("/admin/audit", params=params, headers=server.auth)  # noqa: E731

    for headers in ({}, {"Authorization": "Bearer wrong"}):
        reply = server.client.get("/admin/audit", headers=headers)
        assert reply.status_code == 401 and "token" in reply.json()["error"]
    assert get().json() == {"entries": []}

    refused = server.submit(REFUSED)
    assert refused.status_code == 404 and "no-such-classifier" in refused.text
    assert get().json() == {"entries": []}  # refused at preflight: nothing happened, nothing recorded

    submitted = server.submit(VALID)
    assert submitted.status_code == 202, submitted.text
    job_id = submitted.json()["job_id"]
    from serving import wait_until

    wait_until(lambda: server.job(job_id)["state"] != "queued", 60, "the job worker claiming the job")
    cancelled = server.client.post(f"/admin/redactions/{job_id}/cancel", headers=server.auth)
    assert cancelled.status_code in (200, 202), cancelled.text
    job = server.wait_job(job_id, timeout=90)
    assert job["state"] == "cancelled"

    assert server.activate("digits-v2").status_code == 200
    rollback = server.client.post("/admin/models/digits-v1/activate?force=true", headers=server.auth)
    assert rollback.status_code == 200, rollback.text
    assert server.activate("digits-v999").status_code == 404  # failed: not recorded

    entries = get().json()["entries"]
    digest = spec_hash(load_spec(VALID))
    assert job["spec_hash"] == digest
    assert [(e["action"], e["actor"]) for e in entries] == [
        ("activate", actor), ("activate", actor), ("cancelled", "job-worker"), ("cancel", actor), ("submit", actor)]
    rolled, activated, outcome, cancel, submit = entries
    assert [e["seq"] for e in entries] == sorted((e["seq"] for e in entries), reverse=True)
    assert {e["time"][-6:] for e in entries} == {"+00:00"}
    assert {key: submit[key] for key in ("job_id", "model", "spec_name", "spec_hash", "parent", "version")} == {
        "job_id": job_id, "model": "digits", "spec_name": "audit-zero", "spec_hash": digest,
        "parent": "digits-v1", "version": None}
    assert submit["detail"] == {"method": "kong-validity"}
    assert (cancel["job_id"], cancel["spec_hash"], cancel["model"]) == (job_id, digest, "digits")
    assert cancel["detail"]["previous_state"] in ("running", "validating")
    assert (outcome["job_id"], outcome["spec_hash"], outcome["parent"]) == (job_id, digest, "digits-v1")
    assert outcome["detail"]["reason"] == "cancelled by request" and outcome["detail"]["worker"]
    assert {key: activated[key] for key in ("model", "version", "parent", "spec_name", "spec_hash")} == {
        "model": "digits", "version": "digits-v2", "parent": "digits-v1", "spec_name": "audit-zero",
        "spec_hash": digest}
    assert activated["detail"] == {"previous": "digits-v1", "force": False, "status": "promoted"}
    assert (rolled["version"], rolled["spec_hash"]) == ("digits-v1", None)
    assert rolled["detail"] == {"previous": "digits-v2", "force": True, "status": "promoted"}

    assert get(limit=2).json()["entries"] == entries[:2]
    assert get(since_seq=submit["seq"], limit=2).json()["entries"] == [outcome, cancel]
    assert get(action="activate").json()["entries"] == [rolled, activated]
    assert get(job_id=job_id).json()["entries"] == [outcome, cancel, submit]
    assert get(job_id="nope").json() == {"entries": []}

    for params, name in (({"limit": "0"}, "limit"), ({"limit": "1001"}, "limit"), ({"limit": "ten"}, "limit"),
                         ({"limit": "-5"}, "limit"), ({"since_seq": "-1"}, "since_seq"),
                         ({"since_seq": "1.5"}, "since_seq"), ({"action": "deleted"}, "action"),
                         ({"actor": "me"}, "actor")):
        reply = get(**params)
        assert reply.status_code == 400, (params, reply.text)
        assert name in reply.json()["error"], (params, reply.text)

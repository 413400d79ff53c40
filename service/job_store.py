"""Redaction jobs on disk: one SQLite database, ``LETHE_HOME/jobs.sqlite``.

BentoML's task results do not survive a server start, so every job lives here, from
``submit`` (queued) to a final state. Training never runs inside a serving worker: a
separate job worker takes queued jobs with ``claim_next`` and reports through this store.

States::

    queued -> running -> validating -> promoted | rejected     (the job's outcome)
       |         \\___________\\______-> failed | cancelled      (an error, a cancel, a crash)
       +-> cancelled                                           (cancelled before it started)

Guarantees:

* At most one job is running or validating at any time across *every* process that shares
  the database: ``claim_next`` checks and claims inside one ``BEGIN IMMEDIATE`` transaction,
  and a partial unique index refuses a second active job even if some code forgot to check.
* A fresh connection per operation (safe across threads and processes), WAL journal,
  ``busy_timeout`` 5000 ms. Every change is one transaction: a crash leaves the previous
  state or the next, never half of one.
* After a crash, ``recover`` (called when a worker starts) marks every job whose worker is
  gone as failed with a reason, so every job is in a truthful state.
* Every admin action and every job outcome is appended to the ``audit`` table (the audit
  trail): a submit, a cancel and an outcome in the same transaction as the job change, so
  a job never changes without its entry. Its rows are never updated or deleted (triggers
  refuse it).
* Everything is stored as JSON text, timestamps as ISO 8601 UTC; nothing is pickled.
  Non-finite floats in progress details and results are stored as ``null`` (they are not
  JSON and would break an HTTP response).

WAL needs shared memory between the processes, so LETHE_HOME must be on a local file
system (not NFS/SMB).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import socket
import sqlite3
import uuid
from collections.abc import Callable, Iterable, Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal, NamedTuple, get_args

from pydantic import BaseModel, Field

from unlearning.processes import pid_alive
from unlearning.errors import LetheError, NotFoundError
from unlearning.names import shown

log = logging.getLogger(__name__)

JobState = Literal["queued", "running", "validating", "promoted", "rejected", "failed", "cancelled"]
JOB_STATES: tuple[str, ...] = get_args(JobState)
ACTIVE_STATES: frozenset[str] = frozenset({"running", "validating"})
FINAL_STATES: frozenset[str] = frozenset({"promoted", "rejected", "failed", "cancelled"})

DB_NAME = "jobs.sqlite"
SCHEMA_VERSION = 2
BUSY_TIMEOUT_MS = 5000
# A local pid counts as the claimer only if its process started before the claim (plus this
# much slack for clock granularity): after a container restart the new worker often gets
# the very pid of the one that died.
_START_SLACK_S = 2.0

_ACTIVE_SQL = "('running', 'validating')"
_SCHEMA = [
    """CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)""",
    f"""CREATE TABLE IF NOT EXISTS jobs (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        id TEXT NOT NULL UNIQUE,
        state TEXT NOT NULL CHECK (state IN ({", ".join(repr(s) for s in JOB_STATES)})),
        spec TEXT NOT NULL,
        spec_hash TEXT NOT NULL,
        spec_name TEXT,
        parent TEXT,
        actor TEXT,
        uploads_dir TEXT,
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL,
        started_at TEXT,
        finished_at TEXT,
        progress REAL NOT NULL DEFAULT 0,
        progress_info TEXT NOT NULL DEFAULT '{{}}',
        cancel_requested INTEGER NOT NULL DEFAULT 0,
        worker TEXT,
        heartbeat_at TEXT,
        version TEXT,
        result TEXT,
        reason TEXT
    )""",
    """CREATE INDEX IF NOT EXISTS jobs_state ON jobs (state, seq)""",
    # at most one row may be running/validating: the database itself refuses a second one
    f"""CREATE UNIQUE INDEX IF NOT EXISTS jobs_one_active ON jobs ((0))
        WHERE state IN {_ACTIVE_SQL}""",
]


# what an audit entry records: admin actions, then the outcomes the job worker produces
AuditAction = Literal["submit", "cancel", "activate", "import", "promoted", "rejected", "failed", "cancelled"]
AUDIT_ACTIONS: tuple[str, ...] = get_args(AuditAction)
AUDIT_MAX_LIMIT = 1000
WORKER_ACTOR = "job-worker"

# Migrations: the statements that take a database from the version before to this one.
# A new database gets the version-1 tables above and then every migration; an older one
# is upgraded in place, in one transaction, when a store opens it.
_MIGRATIONS: dict[int, list[str]] = {
    2: [  # the audit trail (append-only)
        """CREATE TABLE IF NOT EXISTS audit (
            seq INTEGER PRIMARY KEY AUTOINCREMENT,
            time TEXT NOT NULL,
            actor TEXT NOT NULL,
            action TEXT NOT NULL,
            job_id TEXT,
            model TEXT,
            spec_name TEXT,
            spec_hash TEXT,
            version TEXT,
            parent TEXT,
            detail TEXT NOT NULL DEFAULT '{}'
        )""",
        """CREATE INDEX IF NOT EXISTS audit_job ON audit (job_id, seq)""",
        """CREATE INDEX IF NOT EXISTS audit_action ON audit (action, seq)""",
        """CREATE TRIGGER IF NOT EXISTS audit_no_update BEFORE UPDATE ON audit
           BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END""",
        """CREATE TRIGGER IF NOT EXISTS audit_no_delete BEFORE DELETE ON audit
           BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END""",
    ],
}
assert sorted(_MIGRATIONS) == list(range(2, SCHEMA_VERSION + 1))


class StoredVersion(NamedTuple):
    """What a job that died had already stored: its version, that version's status, and
    whether it is the active version of its model."""

    version: str
    status: str
    active: bool


def _after_storing(why: str, left: StoredVersion) -> tuple[str, str]:
    """(state, reason) of a job that died after storing ``left``."""
    if left.status == "promoted" and left.active:  # it did all it set out to; only the record is missing
        return "promoted", f"recovered: {why} after {left.version} was stored and activated, before the job recorded it"
    if left.status == "promoted":
        return "failed", (f"interrupted: {why} after storing {left.version}, which passed its gates, and before "
                          f"activating it; to serve it: POST /admin/models/{left.version}/activate")
    return "failed", f"interrupted: {why} after storing {left.version} as {left.status}; restart the job to try again"


class JobStoreError(LetheError):
    """The job database cannot be opened or read (not SQLite, corrupted, newer schema)."""


class JobStoreBusyError(JobStoreError):
    """The job database stayed locked by another process for longer than the busy timeout."""


class QueueFullError(LetheError):
    """As many jobs are queued as the limit allows (``submit``'s ``max_queued``)."""


class JobFinishedError(LetheError):
    """The job already ended (promoted, rejected, failed or cancelled): it cannot change."""


class JobRecord(BaseModel):
    """One job, as stored (and as the admin API shows it)."""

    id: str = Field(description="uuid4 hex")
    state: JobState
    spec: dict[str, Any]
    spec_hash: str
    spec_name: str | None = None
    parent: str | None = Field(None, description="the version the job starts from")
    actor: str | None = Field(None, description="who submitted it")
    uploads_dir: str | None = None
    created_at: str = Field(description="ISO 8601, UTC")
    updated_at: str
    started_at: str | None = None
    finished_at: str | None = None
    progress: float = Field(0.0, ge=0.0, le=1.0)
    progress_info: dict[str, Any] = Field(
        default_factory=dict, description="stage, epoch, current invalidity estimate, ..."
    )
    cancel_requested: bool = False
    worker: str | None = Field(None, description="'host:pid' of the worker running it")
    heartbeat_at: str | None = None
    version: str | None = Field(None, description="the version the job produced")
    result: dict[str, Any] | None = Field(None, description="the job outcome")
    reason: str | None = Field(None, description="why it was not promoted")

    @property
    def final(self) -> bool:
        return self.state in FINAL_STATES

    @property
    def silent_for_s(self) -> float | None:
        """Seconds since its worker last showed life (a heartbeat, or the claim)."""
        return _age_s(self.heartbeat_at or self.started_at)


class AuditEntry(BaseModel):
    """One entry of the audit trail, as stored (and as ``GET /admin/audit`` shows it)."""

    seq: int = Field(description="position in the log, increasing")
    time: str = Field(description="ISO 8601, UTC")
    actor: str = Field(description="'token:<fingerprint>' for the admin API, 'job-worker' for job outcomes")
    action: AuditAction
    job_id: str | None = None
    model: str | None = None
    spec_name: str | None = None
    spec_hash: str | None = None
    version: str | None = Field(None, description="the version produced or activated")
    parent: str | None = Field(None, description="the version a job starts from, or the activated version's parent")
    detail: dict[str, Any] = Field(default_factory=dict, description="method, reason, previous active version, ...")


# ---------------------------------------------------------------------------------- helpers


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


def _age_s(timestamp: str | None) -> float | None:
    if not timestamp:
        return None
    try:
        then = datetime.fromisoformat(timestamp)
    except ValueError:
        return None
    if then.tzinfo is None:
        then = then.replace(tzinfo=timezone.utc)
    return (datetime.now(timezone.utc) - then).total_seconds()


def this_worker() -> str:
    """``host:pid`` of this process: the worker name ``recover`` knows how to check."""
    return f"{socket.gethostname()}:{os.getpid()}"


def _finite(value: Any) -> Any:
    """Non-finite floats -> None, numpy/torch scalars and arrays -> Python values."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    if value is None or isinstance(value, (str, int, bool)):
        return value
    for convert in ("item", "tolist"):  # numpy / torch scalars and small arrays
        method = getattr(value, convert, None)
        if callable(method):
            with contextlib.suppress(Exception):
                return _finite(method())
    raise TypeError(f"{type(value).__name__} cannot be stored as JSON")


def _dumps_plain(value: dict[str, Any], what: str) -> str:
    """JSON of a user document (the spec): refused, not altered, when it is not plain JSON."""
    if not isinstance(value, dict):
        raise LetheError(f"{what} must be a JSON object, not {type(value).__name__}")
    try:
        return json.dumps(value, sort_keys=True, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise LetheError(f"{what} is not plain JSON ({exc})") from None


def _dumps(value: dict[str, Any] | None) -> str | None:
    return None if value is None else json.dumps(_finite(value), sort_keys=True, allow_nan=False)



def _detail_json(detail: dict[str, Any] | None) -> str:
    """An audit entry's detail as JSON; never fails (odd values are written as text)."""
    try:
        return _dumps(dict(detail or {})) or "{}"
    except (TypeError, ValueError):
        return json.dumps({str(k): repr(v) for k, v in (detail or {}).items()}, sort_keys=True)


def _whole(value: Any, name: str, low: int, high: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low or (high is not None and value > high):
        bounds = f"from {low} to {high}" if high is not None else f"of at least {low}"
        raise LetheError(f"{name} must be a whole number {bounds}, not {value!r}")
    return value


def _process_started(pid: int) -> float | None:
    """Wall-clock start of a local process (Linux ``/proc``), None where unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        ticks = int(stat[stat.rindex(")") + 2 :].split()[19])  # field 22: starttime
        boot = next(
            int(line.split()[1])
            for line in Path("/proc/stat").read_text().splitlines()
            if line.startswith("btime ")
        )
        return boot + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return None


def _parse_worker(worker: str | None) -> tuple[str, int] | None:
    if not worker or ":" not in worker:
        return None
    host, _, pid = worker.rpartition(":")
    return (host, int(pid)) if pid.isdigit() else None


def _check_states(states: Iterable[str] | None) -> list[str] | None:
    if states is None:
        return None
    if isinstance(states, str):
        states = [states]
    chosen = list(states)
    unknown = [s for s in chosen if s not in JOB_STATES]
    if unknown:
        raise LetheError(
            f"unknown job state(s) {', '.join(map(repr, unknown))}; states are: {', '.join(JOB_STATES)}"
        )
    return chosen


# ------------------------------------------------------------------------------------ store


class JobStore:
    """Jobs in ``path`` (default ``LETHE_HOME/jobs.sqlite``), shared by every process."""

    def __init__(self, path: Path | str | None = None):
        if path is None:
            # imported here: unlearning.runtime imports torch, which an API process or a
            # test child that only reads jobs does not need
            from unlearning.runtime import lethe_home

            path = lethe_home() / DB_NAME
        self.path = Path(path).expanduser()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._create_schema()

    def __repr__(self) -> str:
        return f"JobStore({str(self.path)!r})"

    # ------------------------------------------------------------------------ connections

    def _error(self, exc: sqlite3.Error) -> JobStoreError:
        if getattr(exc, "sqlite_errorname", "") in ("SQLITE_BUSY", "SQLITE_LOCKED"):
            return JobStoreBusyError(
                f"job database {self.path} stayed locked by another process for more than "
                f"{BUSY_TIMEOUT_MS / 1000:g} s; try again"
            )
        name = getattr(exc, "sqlite_errorname", "")
        if name == "SQLITE_FULL":
            return JobStoreError(f"job database {self.path}: the disk is full ({exc}); free space and retry")
        if name.startswith("SQLITE_IOERR") or name in ("SQLITE_READONLY", "SQLITE_CANTOPEN"):
            return JobStoreError(f"job database {self.path} cannot be written ({name}: {exc})")
        return JobStoreError(
            f"job database {self.path} cannot be used ({exc}); it is not a readable SQLite "
            "database: move it aside and a new, empty one will be created"
        )

    @contextlib.contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        """A fresh autocommit connection; SQLite failures become JobStoreError."""
        conn = None
        try:
            conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None)
            conn.row_factory = sqlite3.Row
            conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            yield conn
        except (sqlite3.IntegrityError, sqlite3.ProgrammingError, sqlite3.InterfaceError):
            raise  # a bug in this module, not a problem with the file
        except sqlite3.DatabaseError as exc:
            raise self._error(exc) from None
        finally:
            if conn is not None:
                conn.close()

    @contextlib.contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction, holding the database's write lock from its first read."""
        with self._connect() as conn:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    def _create_schema(self) -> None:
        with self._connect() as conn:
            mode = conn.execute("PRAGMA journal_mode").fetchone()[0]
            if str(mode).lower() != "wal":
                mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
                if str(mode).lower() != "wal":
                    raise JobStoreError(
                        f"job database {self.path}: cannot switch to WAL journal (got {mode!r}); "
                        "put LETHE_HOME on a local file system"
                    )
            conn.execute("BEGIN IMMEDIATE")
            try:
                for statement in _SCHEMA:
                    conn.execute(statement)
                stored = conn.execute("SELECT max(version) FROM schema_version").fetchone()[0]
                if stored is not None and stored > SCHEMA_VERSION:
                    raise JobStoreError(
                        f"job database {self.path} has schema version {stored}, written by a newer "
                        f"Lethe; this one reads version {SCHEMA_VERSION}"
                    )
                # a new database has just got the version-1 tables: it takes every migration
                for version in range((stored or 1) + 1, SCHEMA_VERSION + 1):
                    for statement in _MIGRATIONS[version]:
                        conn.execute(statement)
                if stored is None:
                    conn.execute("INSERT INTO schema_version (version) VALUES (?)", (SCHEMA_VERSION,))
                elif stored < SCHEMA_VERSION:
                    conn.execute("UPDATE schema_version SET version = ?", (SCHEMA_VERSION,))
                    log.warning("job database %s upgraded from schema version %d to %d",
                                self.path, stored, SCHEMA_VERSION)
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    # ---------------------------------------------------------------------------- reading

    @staticmethod
    def _record(row: sqlite3.Row) -> JobRecord:
        data = dict(row)
        data.pop("seq", None)
        data["spec"] = json.loads(data["spec"])
        data["progress_info"] = json.loads(data["progress_info"] or "{}")
        data["result"] = json.loads(data["result"]) if data["result"] is not None else None
        data["cancel_requested"] = bool(data["cancel_requested"])
        data["progress"] = min(1.0, max(0.0, float(data["progress"] or 0.0)))
        return JobRecord.model_validate(data)

    def _row(self, conn: sqlite3.Connection, job_id: str) -> sqlite3.Row:
        row = None
        if isinstance(job_id, str):
            row = conn.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if row is None:
            raise NotFoundError(f"job {shown(job_id)} not found")
        return row

    def get(self, job_id: str) -> JobRecord:
        """The job ``job_id``; NotFoundError names it."""
        with self._connect() as conn:
            return self._record(self._row(conn, job_id))

    def list(self, limit: int = 100, states: Iterable[JobState] | None = None,
             before: str | None = None) -> list[JobRecord]:
        """Up to ``limit`` jobs (in ``states``, if given), newest first; with ``before`` (a
        job id), only the jobs submitted before that one (the next page)."""
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise LetheError(f"limit must be a positive whole number, not {limit!r}")
        chosen = _check_states(states)
        where, params = [], []
        if chosen is not None:
            if not chosen:
                return []
            where.append(f"state IN ({', '.join('?' * len(chosen))})")
            params.extend(chosen)
        with self._connect() as conn:
            if before is not None:
                where.append("seq < ?")
                params.append(self._row(conn, before)["seq"])
            query = "SELECT * FROM jobs" + (f" WHERE {' AND '.join(where)}" if where else "")
            return [self._record(row) for row in conn.execute(query + " ORDER BY seq DESC LIMIT ?",
                                                                [*params, limit]).fetchall()]

    def audit_log(
        self,
        *,
        limit: int = 100,
        since_seq: int | None = None,
        action: str | None = None,
        job_id: str | None = None,
    ) -> list[AuditEntry]:
        """Audit entries (of ``action``, about ``job_id``, when given), newest first: the
        latest ``limit``, or with ``since_seq`` the first ``limit`` after that seq (so a
        reader that tails the log by its highest seq misses nothing)."""
        _whole(limit, "limit", 1, AUDIT_MAX_LIMIT)
        where, params = [], []
        if since_seq is not None:
            where.append("seq > ?")
            params.append(_whole(since_seq, "since_seq", 0))
        if action is not None:
            if action not in AUDIT_ACTIONS:
                raise LetheError(f"action must be one of {', '.join(AUDIT_ACTIONS)}, not {action!r}")
            where.append("action = ?")
            params.append(action)
        if job_id is not None:
            if not isinstance(job_id, str):
                raise LetheError(f"job_id must be a job id, not {job_id!r}")
            where.append("job_id = ?")
            params.append(job_id)
        query = "SELECT * FROM audit" + (f" WHERE {' AND '.join(where)}" if where else "")
        query += f" ORDER BY seq {'ASC' if since_seq is not None else 'DESC'} LIMIT ?"
        params.append(limit)
        with self._connect() as conn:
            rows = conn.execute(query, params).fetchall()
        entries = [AuditEntry.model_validate({**dict(row), "detail": json.loads(row["detail"] or "{}")})
                   for row in rows]
        return entries[::-1] if since_seq is not None else entries

    def cancel_requested(self, job_id: str) -> bool:
        """Whether the worker running ``job_id`` should stop: a cancel was requested, or the
        job already ended without it (e.g. ``recover`` failed it after a lost heartbeat)."""
        with self._connect() as conn:
            row = self._row(conn, job_id)
            return bool(row["cancel_requested"]) or row["state"] in FINAL_STATES

    # ---------------------------------------------------------------------------- writing

    @staticmethod
    def _audit(
        conn: sqlite3.Connection,
        action: str,
        actor: str | None,
        *,
        job: sqlite3.Row | None = None,
        model: str | None = None,
        spec_name: str | None = None,
        spec_hash: str | None = None,
        version: str | None = None,
        parent: str | None = None,
        detail: dict[str, Any] | None = None,
    ) -> int:
        """Append one audit entry inside the caller's transaction; a ``job`` row fills the
        job's id, spec, parent and (from its submit entry) model. Returns its seq."""
        if action not in AUDIT_ACTIONS:
            raise ValueError(f"unknown audit action {action!r}")
        job_id = None
        if job is not None:
            job_id, spec_name, spec_hash = job["id"], job["spec_name"], job["spec_hash"]
            parent = parent or job["parent"]
            if model is None:
                found = conn.execute(
                    "SELECT model FROM audit WHERE job_id = ? AND action = 'submit' ORDER BY seq LIMIT 1",
                    (job_id,),
                ).fetchone()
                model = found["model"] if found else None
        cursor = conn.execute(
            """INSERT INTO audit (time, actor, action, job_id, model, spec_name, spec_hash, version,
               parent, detail) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)""",
            (_now(), actor or "unknown", action, job_id, model, spec_name, spec_hash, version, parent,
             _detail_json(detail)),
        )
        return int(cursor.lastrowid)

    def record(
        self,
        action: AuditAction,
        actor: str,
        *,
        job_id: str | None = None,
        model: str | None = None,
        spec_name: str | None = None,
        spec_hash: str | None = None,
        version: str | None = None,
        parent: str | None = None,
        detail: dict[str, Any] | None = None,
    ) -> AuditEntry:
        """Append an audit entry for an action that happened outside this database (an
        activation) and return it. Job changes record theirs themselves."""
        with self._write() as conn:
            job = self._row(conn, job_id) if job_id is not None else None
            seq = self._audit(conn, action, actor, job=job, model=model, spec_name=spec_name,
                              spec_hash=spec_hash, version=version, parent=parent, detail=detail)
        return self.audit_log(since_seq=seq - 1, limit=1)[0]

    def submit(
        self,
        spec: dict[str, Any],
        *,
        spec_hash: str,
        spec_name: str | None = None,
        parent: str | None = None,
        actor: str | None = None,
        uploads_dir: str | Path | None = None,
        model: str | None = None,
        detail: dict[str, Any] | None = None,
        max_queued: int | None = None,
    ) -> JobRecord:
        """Store a new job, queued, with its ``submit`` audit entry (``model`` and ``detail``,
        e.g. the method, go to that entry) in the same transaction. With ``max_queued``,
        QueueFullError when that many jobs are queued already (counted in the transaction)."""
        spec_json = _dumps_plain(spec, "the forget specification")
        job_id, now = uuid.uuid4().hex, _now()
        with self._write() as conn:
            if max_queued is not None:
                queued = conn.execute("SELECT count(*) FROM jobs WHERE state = 'queued'").fetchone()[0]
                if queued >= max_queued:
                    raise QueueFullError(f"{queued} jobs are queued, the limit (LETHE_MAX_QUEUED_JOBS={max_queued}); "
                                         "wait for some to start, or cancel one, and submit again")
            conn.execute(
                """INSERT INTO jobs (id, state, spec, spec_hash, spec_name, parent, actor,
                   uploads_dir, created_at, updated_at) VALUES (?, 'queued', ?, ?, ?, ?, ?, ?, ?, ?)""",
                (job_id, spec_json, spec_hash, spec_name, parent, actor,
                 None if uploads_dir is None else str(uploads_dir), now, now),
            )
            row = self._row(conn, job_id)
            self._audit(conn, "submit", actor, job=row, model=model, detail=detail)
            record = self._record(row)
        log.info("job %s queued (%s)", job_id, spec_name or spec_hash)
        return record

    def claim_next(self, worker: str) -> JobRecord | None:
        """Start the oldest queued job for ``worker`` ('host:pid', see ``this_worker``) and
        return it; None when nothing is queued or a job is already running or validating
        (anywhere: one job at a time across every process sharing this database)."""
        if not isinstance(worker, str) or not worker:
            raise ValueError(f"worker must name the worker ('host:pid'), not {worker!r}")
        with self._write() as conn:
            if conn.execute(f"SELECT 1 FROM jobs WHERE state IN {_ACTIVE_SQL} LIMIT 1").fetchone():
                return None
            row = conn.execute(
                "SELECT id FROM jobs WHERE state = 'queued' ORDER BY seq LIMIT 1"
            ).fetchone()
            if row is None:
                return None
            now = _now()
            conn.execute(
                """UPDATE jobs SET state = 'running', started_at = ?, updated_at = ?,
                   heartbeat_at = ?, worker = ?, progress = 0 WHERE id = ?""",
                (now, now, now, worker, row["id"]),
            )
            record = self._record(self._row(conn, row["id"]))
        log.info("job %s claimed by %s", record.id, worker)
        return record

    def report_progress(
        self,
        job_id: str,
        fraction: float,
        info: dict[str, Any] | None = None,
        *,
        state: Literal["running", "validating"] | None = None,
    ) -> JobRecord:
        """Record progress (``fraction`` clamped to [0, 1]) and beat the heart; ``state``
        moves the job between running and validating. ``info`` is merged into the stored
        details while the ``stage`` stays the same (so the last invalidity estimate stays
        visible between epochs) and replaces them when the stage changes. Ignored once the
        job has ended; a queued job cannot report progress (claim it first)."""
        if state is not None and state not in ACTIVE_STATES:
            raise ValueError(f"report_progress can only move a job to running or validating, not {state!r}")
        fraction = float(fraction)
        if math.isnan(fraction):
            raise ValueError("progress fraction is NaN")
        fraction = min(1.0, max(0.0, fraction))
        with self._write() as conn:
            row = self._row(conn, job_id)
            if row["state"] in FINAL_STATES:
                return self._record(row)
            if row["state"] not in ACTIVE_STATES:
                raise LetheError(f"job {job_id} is {row['state']}: it has not been claimed by a worker")
            if row["state"] == "validating":
                state = "validating"  # a job never goes back to running once it validates
            old = json.loads(row["progress_info"] or "{}")
            new = dict(info or {})
            if "stage" in new and new["stage"] != old.get("stage"):
                merged = new
            else:
                merged = {**old, **new}
            now = _now()
            conn.execute(
                """UPDATE jobs SET progress = ?, progress_info = ?, heartbeat_at = ?,
                   updated_at = ?, state = ? WHERE id = ?""",
                (fraction, _dumps(merged), now, now, state or row["state"], job_id),
            )
            return self._record(self._row(conn, job_id))

    def heartbeat(self, job_id: str) -> None:
        """Tell ``recover`` the worker of ``job_id`` is alive (no-op unless it is active)."""
        with self._write() as conn:
            self._row(conn, job_id)
            now = _now()
            conn.execute(
                f"UPDATE jobs SET heartbeat_at = ?, updated_at = ? WHERE id = ? AND state IN {_ACTIVE_SQL}",
                (now, now, job_id),
            )

    @staticmethod
    def _ended(row: sqlite3.Row) -> str:
        text = f"job {row['id']} already ended: it was {row['state']}"
        if row["finished_at"]:
            text += f" at {row['finished_at']}"
        if row["reason"]:
            text += f" ({row['reason']})"
        return text

    def cancel(self, job_id: str, *, actor: str | None = None) -> JobRecord:
        """Cancel a job: a queued one at once; a running/validating one is flagged and its
        worker (polling ``cancel_requested``) finishes it as cancelled. A job that already
        ended raises JobFinishedError naming its state. The ``cancel`` audit entry (by
        ``actor``) says the state before and after."""
        with self._write() as conn:
            row = self._row(conn, job_id)
            now = _now()
            if row["state"] in FINAL_STATES:
                raise JobFinishedError(f"{self._ended(row)}; there is nothing to cancel")
            if row["state"] == "queued":
                conn.execute(
                    """UPDATE jobs SET state = 'cancelled', cancel_requested = 1, finished_at = ?,
                       updated_at = ?, reason = 'cancelled before it started' WHERE id = ?""",
                    (now, now, job_id),
                )
            else:
                conn.execute(
                    "UPDATE jobs SET cancel_requested = 1, updated_at = ? WHERE id = ?", (now, job_id)
                )
            record = self._record(self._row(conn, job_id))
            self._audit(conn, "cancel", actor, job=row,
                        detail={"previous_state": row["state"], "state": record.state})
        log.info("job %s: cancel requested (%s)", job_id, record.state)
        return record

    def finish(
        self,
        job_id: str,
        state: JobState,
        *,
        version: str | None = None,
        result: dict[str, Any] | None = None,
        reason: str | None = None,
        actor: str = WORKER_ACTOR,
        detail: dict[str, Any] | None = None,
    ) -> JobRecord:
        """End a job in a final ``state`` with the version it produced, its outcome and,
        when not promoted, the reason; its audit entry (action = the state, with the
        reason and ``detail``) goes in the same transaction. A job that already ended
        raises JobFinishedError (e.g. ``recover`` failed it while its worker was presumed
        dead)."""
        if state not in FINAL_STATES:
            raise ValueError(f"finish needs a final state ({', '.join(sorted(FINAL_STATES))}), not {state!r}")
        if state == "cancelled" and reason is None:
            reason = "cancelled by request"
        result_json = _dumps(result)
        with self._write() as conn:
            row = self._row(conn, job_id)
            if row["state"] in FINAL_STATES:
                raise JobFinishedError(f"{self._ended(row)}; it cannot become {state}")
            now = _now()
            progress = 1.0 if state in ("promoted", "rejected") else row["progress"]
            conn.execute(
                """UPDATE jobs SET state = ?, version = ?, result = ?, reason = ?, finished_at = ?,
                   updated_at = ?, progress = ? WHERE id = ?""",
                (state, version, result_json, reason, now, now, progress, job_id),
            )
            record = self._record(self._row(conn, job_id))
            self._audit(conn, state, actor, job=row, version=version,
                        detail={**(detail or {}), **({"reason": reason} if reason else {})})
        log.info("job %s %s%s", job_id, state, f": {reason}" if reason else "")
        return record

    # --------------------------------------------------------------------------- recovery

    def recover(
        self, *, alive: Callable[[str], bool] | None = None, stale_after_s: float = 60.0,
        actor: str = WORKER_ACTOR, stored: Callable[[str], StoredVersion | None] | None = None,
    ) -> list[str]:
        """End every running/validating job whose worker is gone; return their ids.

        ``alive(worker)`` decides, when given. Otherwise: a worker on this host is alive
        while its pid exists *and* that process started before the job was claimed (a
        restarted container often reuses the dead worker's pid); a worker on another host
        (or an unreadable worker name) is alive while its heartbeat is younger than
        ``stale_after_s`` (clocks of the hosts must roughly agree). Call when a job worker
        starts, before it claims anything. Such a job fails, with a ``failed`` audit entry.

        ``stored(job_id)`` tells what a job stored before it died, if anything: a crash
        after its version was written. The job then records that version. One that was
        stored and activated ends ``promoted`` (only its record was missing); one stored
        but not activated fails, its reason saying how to serve it. Nothing is activated
        behind the operator's back (they may have rolled back since)."""
        host = socket.gethostname()
        ended: list[str] = []
        with self._write() as conn:
            rows = conn.execute(f"SELECT * FROM jobs WHERE state IN {_ACTIVE_SQL}").fetchall()
            for row in rows:
                worker = row["worker"] or "unknown worker"
                parsed = _parse_worker(row["worker"])
                if alive is not None:
                    gone = not alive(worker)
                    why = f"the job worker stopped ({worker})"
                elif parsed is not None and parsed[0] == host:
                    gone = not self._local_claimer_alive(parsed[1], row["started_at"])
                    why = f"the job worker stopped ({worker})"
                else:
                    age = _age_s(row["heartbeat_at"] or row["started_at"] or row["updated_at"])
                    gone = age is None or age > stale_after_s
                    why = (
                        f"the job worker ({worker}) stopped sending heartbeats"
                        + (f" {age:.0f} s ago" if age is not None else "")
                    )
                if not gone:
                    continue
                self._end_interrupted(conn, row, why, stored(row["id"]) if stored is not None else None, actor)
                ended.append(row["id"])
        return ended

    def end_interrupted(self, job_id: str, why: str, *, stored: StoredVersion | None = None,
                        actor: str = WORKER_ACTOR) -> JobRecord:
        """End one running/validating job whose process is gone (it died, or was killed
        for hanging), saying ``why`` and what it left (``stored``, as in ``recover``). A job
        whose cancellation was requested, and that stored nothing, ends cancelled: it was
        asked to stop, and it has. A job that already ended raises JobFinishedError."""
        with self._write() as conn:
            row = self._row(conn, job_id)
            if row["state"] in FINAL_STATES:
                raise JobFinishedError(f"{self._ended(row)}; it cannot be ended as interrupted")
            if row["state"] not in ACTIVE_STATES:
                raise LetheError(f"job {job_id} is {row['state']}: it has not been claimed by a worker")
            self._end_interrupted(conn, row, why, stored, actor)
            return self._record(self._row(conn, job_id))

    def _end_interrupted(self, conn: sqlite3.Connection, row: sqlite3.Row, why: str,
                         left: StoredVersion | None, actor: str) -> None:
        if left is not None:
            state, reason = _after_storing(why, left)
        elif row["cancel_requested"]:
            state, reason = "cancelled", f"cancelled by request: {why}"
        else:
            state, reason = "failed", f"interrupted: {why} while {row['state']}; restart the job to try again"
        version = left.version if left is not None else None
        now = _now()
        conn.execute(
            """UPDATE jobs SET state = ?, reason = ?, version = ?, finished_at = ?,
               updated_at = ? WHERE id = ?""",
            (state, reason, version, now, now, row["id"]),
        )
        self._audit(conn, state, actor, job=row, version=version,
                    detail={"reason": reason, "worker": row["worker"] or "unknown worker",
                            **({"activated": True} if state == "promoted" else {})})
        log.warning("job %s %s", row["id"], reason)

    @staticmethod
    def _local_claimer_alive(pid: int, started_at: str | None) -> bool:
        if not pid_alive(pid):
            return False
        process_start = _process_started(pid)
        claimed = _age_s(started_at)
        if process_start is None or claimed is None:
            return True  # cannot tell a reused pid: trust it
        claimed_at = datetime.now(timezone.utc).timestamp() - claimed
        return process_start <= claimed_at + _START_SLACK_S

"""The job queue: from ``submit`` (queued) to a final state.

States::

    queued -> running -> validating -> promoted | rejected     (the job's outcome)
       |         \\___________\\______-> failed | cancelled      (an error, a cancel, a crash)
       +-> cancelled                                           (cancelled before it started)

* At most one job is running or validating at any time across every process and every
  instance that shares the database: ``claim_next`` checks and claims inside one write
  transaction (which holds the database's write lock), and a partial unique index refuses
  a second active job even if some code forgot to check.
* Every change is one transaction, with its audit entry: a crash leaves the previous
  state or the next, never half of one.
* ``recover`` ends every active job whose worker is gone (see ``liveness``), so after a
  crash every job is in a truthful state.
"""

from __future__ import annotations

import json
import logging
import math
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Literal

from unlearning.errors import LetheError
from unlearning.store.audit import AuditTrail
from unlearning.store.base import ACTIVE_SQL, Connection
from unlearning.store.liveness import worker_gone
from unlearning.store.records import (
    ACTIVE_STATES, FINAL_STATES, WORKER_ACTOR, JobFinishedError, JobRecord, JobState, QueueFullError,
    StoredVersion, after_storing, check_states, dumps, dumps_plain, now,
)

log = logging.getLogger("unlearning.store")


def _ended(row) -> str:
    text = f"job {row['id']} already ended: it was {row['state']}"
    if row["finished_at"]:
        text += f" at {row['finished_at']}"
    if row["reason"]:
        text += f" ({row['reason']})"
    return text


class JobQueue(AuditTrail):
    # ---------------------------------------------------------------------------- reading

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
        chosen = check_states(states)
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

    def cancel_requested(self, job_id: str) -> bool:
        """Whether the worker running ``job_id`` should stop: a cancel was requested, or the
        job already ended without it (e.g. ``recover`` failed it after a lost heartbeat)."""
        with self._connect() as conn:
            row = self._row(conn, job_id)
            return bool(row["cancel_requested"]) or row["state"] in FINAL_STATES

    # ---------------------------------------------------------------------------- writing

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
        QueueFullError when that many jobs are queued already (counted in the transaction,
        under the write lock: instances sharing the database cannot overshoot it together)."""
        spec_json = dumps_plain(spec, "the forget specification")
        job_id, stamp = uuid.uuid4().hex, now()
        with self._write() as conn:
            if max_queued is not None:
                queued = conn.execute("SELECT count(*) AS n FROM jobs WHERE state = 'queued'").fetchone()["n"]
                if queued >= max_queued:
                    raise QueueFullError(f"{queued} jobs are queued, the limit (LETHE_MAX_QUEUED_JOBS={max_queued}); "
                                         "wait for some to start, or cancel one, and submit again")
            conn.execute(
                """INSERT INTO jobs (id, state, spec, spec_hash, spec_name, parent, actor,
                   uploads_dir, created_at, updated_at) VALUES (?, 'queued', ?, ?, ?, ?, ?, ?, ?, ?)""",
                (job_id, spec_json, spec_hash, spec_name, parent, actor,
                 None if uploads_dir is None else str(uploads_dir), stamp, stamp),
            )
            row = self._row(conn, job_id)
            self._audit(conn, "submit", actor, job=row, model=model, detail=detail)
            record = self._record(row)
        log.info("job %s queued (%s)", job_id, spec_name or spec_hash)
        return record

    def claim_next(self, worker: str) -> JobRecord | None:
        """Start the oldest queued job for ``worker`` ('host:pid', see ``this_worker``) and
        return it; None when nothing is queued or a job is already running or validating
        (anywhere: one job at a time across everything sharing this database)."""
        if not isinstance(worker, str) or not worker:
            raise ValueError(f"worker must name the worker ('host:pid'), not {worker!r}")
        with self._write() as conn:
            if conn.execute(f"SELECT 1 FROM jobs WHERE state IN {ACTIVE_SQL} LIMIT 1").fetchone():
                return None
            row = conn.execute("SELECT id FROM jobs WHERE state = 'queued' ORDER BY seq LIMIT 1").fetchone()
            if row is None:
                return None
            stamp = now()
            conn.execute(
                """UPDATE jobs SET state = 'running', started_at = ?, updated_at = ?,
                   heartbeat_at = ?, worker = ?, progress = 0 WHERE id = ?""",
                (stamp, stamp, stamp, worker, row["id"]),
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
            merged = new if "stage" in new and new["stage"] != old.get("stage") else {**old, **new}
            stamp = now()
            conn.execute(
                """UPDATE jobs SET progress = ?, progress_info = ?, heartbeat_at = ?,
                   updated_at = ?, state = ? WHERE id = ?""",
                (fraction, dumps(merged), stamp, stamp, state or row["state"], job_id),
            )
            return self._record(self._row(conn, job_id))

    def heartbeat(self, job_id: str) -> None:
        """Tell ``recover`` the worker of ``job_id`` is alive (no-op unless it is active)."""
        with self._write() as conn:
            self._row(conn, job_id)
            stamp = now()
            conn.execute(
                f"UPDATE jobs SET heartbeat_at = ?, updated_at = ? WHERE id = ? AND state IN {ACTIVE_SQL}",
                (stamp, stamp, job_id),
            )

    def cancel(self, job_id: str, *, actor: str | None = None) -> JobRecord:
        """Cancel a job: a queued one at once; a running/validating one is flagged and its
        worker (polling ``cancel_requested``) finishes it as cancelled. A job that already
        ended raises JobFinishedError naming its state. The ``cancel`` audit entry (by
        ``actor``) says the state before and after."""
        with self._write() as conn:
            row = self._row(conn, job_id)
            stamp = now()
            if row["state"] in FINAL_STATES:
                raise JobFinishedError(f"{_ended(row)}; there is nothing to cancel")
            if row["state"] == "queued":
                conn.execute(
                    """UPDATE jobs SET state = 'cancelled', cancel_requested = 1, finished_at = ?,
                       updated_at = ?, reason = 'cancelled before it started' WHERE id = ?""",
                    (stamp, stamp, job_id),
                )
            else:
                conn.execute("UPDATE jobs SET cancel_requested = 1, updated_at = ? WHERE id = ?", (stamp, job_id))
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
        result_json = dumps(result)
        with self._write() as conn:
            row = self._row(conn, job_id)
            if row["state"] in FINAL_STATES:
                raise JobFinishedError(f"{_ended(row)}; it cannot become {state}")
            stamp = now()
            progress = 1.0 if state in ("promoted", "rejected") else row["progress"]
            conn.execute(
                """UPDATE jobs SET state = ?, version = ?, result = ?, reason = ?, finished_at = ?,
                   updated_at = ?, progress = ? WHERE id = ?""",
                (state, version, result_json, reason, stamp, stamp, progress, job_id),
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
        by_heartbeat_only: bool = False,
    ) -> list[str]:
        """End every running/validating job whose worker is gone; return their ids.

        ``alive(worker)`` decides, when given. Otherwise: a worker on this host is alive
        while its pid exists *and* that process started before the job was claimed; a
        worker on another host (or an unreadable worker name), or any worker with
        ``by_heartbeat_only`` (a worker watching another instance's job), is alive while
        its heartbeat is younger than ``stale_after_s`` (clocks of the hosts must roughly
        agree). Such a job fails, with a ``failed`` audit entry.

        ``stored(job_id)`` tells what a job stored before it died, if anything: a crash
        after its version was written. The job then records that version. One that was
        stored and activated ends ``promoted`` (only its record was missing); one stored
        but not activated fails, its reason saying how to serve it. Nothing is activated
        behind the operator's back (they may have rolled back since)."""
        ended: list[str] = []
        with self._write() as conn:
            rows = conn.execute(f"SELECT * FROM jobs WHERE state IN {ACTIVE_SQL}").fetchall()
            for row in rows:
                worker = row["worker"] or "unknown worker"
                if alive is not None:
                    gone, why = not alive(worker), f"the job worker stopped ({worker})"
                else:
                    gone, why = worker_gone(row["worker"], row["started_at"],
                                            row["heartbeat_at"] or row["started_at"] or row["updated_at"],
                                            stale_after_s=stale_after_s, by_heartbeat_only=by_heartbeat_only)
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
                raise JobFinishedError(f"{_ended(row)}; it cannot be ended as interrupted")
            if row["state"] not in ACTIVE_STATES:
                raise LetheError(f"job {job_id} is {row['state']}: it has not been claimed by a worker")
            self._end_interrupted(conn, row, why, stored, actor)
            return self._record(self._row(conn, job_id))

    def _end_interrupted(self, conn: Connection, row, why: str, left: StoredVersion | None, actor: str) -> None:
        if left is not None:
            state, reason = after_storing(why, left)
        elif row["cancel_requested"]:
            state, reason = "cancelled", f"cancelled by request: {why}"
        else:
            state, reason = "failed", f"interrupted: {why} while {row['state']}; restart the job to try again"
        version = left.version if left is not None else None
        stamp = now()
        conn.execute(
            """UPDATE jobs SET state = ?, reason = ?, version = ?, finished_at = ?,
               updated_at = ? WHERE id = ?""",
            (state, reason, version, stamp, stamp, row["id"]),
        )
        self._audit(conn, state, actor, job=row, version=version,
                    detail={"reason": reason, "worker": row["worker"] or "unknown worker",
                            **({"activated": True} if state == "promoted" else {})})
        log.warning("job %s %s", row["id"], reason)

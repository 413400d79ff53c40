"""The audit trail: every admin action and job outcome, appended and never changed.

Job changes write their entry inside their own transaction (``_audit``), so a job never
changes without its entry; ``record`` appends one for an action that happened elsewhere
(an activation). Rows are never updated or deleted: the database refuses it (triggers)."""

from __future__ import annotations

import json
from typing import Any

from unlearning.errors import LetheError
from unlearning.store.base import Connection, SqlStore
from unlearning.store.records import (
    AUDIT_ACTIONS, AUDIT_MAX_LIMIT, AuditAction, AuditEntry, detail_json, now, whole,
)


class AuditTrail(SqlStore):
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
        whole(limit, "limit", 1, AUDIT_MAX_LIMIT)
        where, params = [], []
        if since_seq is not None:
            where.append("seq > ?")
            params.append(whole(since_seq, "since_seq", 0))
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

    @staticmethod
    def _audit(
        conn: Connection,
        action: str,
        actor: str | None,
        *,
        job=None,
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
        row = conn.execute(
            """INSERT INTO audit (time, actor, action, job_id, model, spec_name, spec_hash, version,
               parent, detail) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING seq""",
            (now(), actor or "unknown", action, job_id, model, spec_name, spec_hash, version, parent,
             detail_json(detail)),
        ).fetchone()
        return int(row["seq"])

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

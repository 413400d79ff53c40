"""What both back ends of the job store share: one SQL dialect (``?`` placeholders, rows
read by column name) over connections a back end opens, and the row -> record rules.

A back end provides ``_connect()`` (a connection for one read) and ``_write()`` (one
write transaction that holds the database's write lock from its first statement: SQLite's
``BEGIN IMMEDIATE``, PostgreSQL's transaction-scoped advisory lock). Every write of every
process, and of every instance sharing the database, runs one at a time, so a read and
the write that depends on it can never interleave with another's."""

from __future__ import annotations

import abc
import contextlib
import json
from typing import Any, Protocol

from unlearning.errors import NotFoundError
from unlearning.names import shown
from unlearning.store.records import JobRecord


class Connection(Protocol):
    def execute(self, sql: str, params: tuple | list = ()) -> Any: ...


ACTIVE_SQL = "('running', 'validating')"


class SqlStore(abc.ABC):
    """Base of the SQLite and PostgreSQL stores; ``JobQueue`` and ``AuditTrail`` are its jobs."""

    backend = "sql"

    @abc.abstractmethod
    def _connect(self) -> contextlib.AbstractContextManager[Connection]:
        """A connection for one read."""

    @abc.abstractmethod
    def _write(self) -> contextlib.AbstractContextManager[Connection]:
        """One write transaction holding the database's write lock from its first statement."""

    @staticmethod
    def _record(row) -> JobRecord:
        data = dict(row)
        data.pop("seq", None)
        data["spec"] = json.loads(data["spec"])
        data["progress_info"] = json.loads(data["progress_info"] or "{}")
        data["result"] = json.loads(data["result"]) if data["result"] is not None else None
        data["cancel_requested"] = bool(data["cancel_requested"])
        data["progress"] = min(1.0, max(0.0, float(data["progress"] or 0.0)))
        return JobRecord.model_validate(data)

    @staticmethod
    def _row(conn: Connection, job_id: str):
        row = None
        if isinstance(job_id, str):
            row = conn.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if row is None:
            raise NotFoundError(f"job {shown(job_id)} not found")
        return row

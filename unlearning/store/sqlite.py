"""The default job store: one SQLite file, ``LETHE_HOME/jobs.sqlite`` (WAL journal).

A fresh connection per operation (safe across threads and processes), ``busy_timeout``
5000 ms, and every write in ``BEGIN IMMEDIATE`` (the database's write lock from its first
read). WAL needs shared memory between the processes, so every process that opens the file
must run on one host, with LETHE_HOME on a local file system (not NFS/SMB); several hosts
share a PostgreSQL database instead (``postgres.py``)."""

from __future__ import annotations

import contextlib
import logging
import sqlite3
from collections.abc import Iterator
from pathlib import Path

from unlearning.store.migrations import SQLITE_MIGRATIONS, SQLITE_SCHEMA_VERSION, SQLITE_TABLES
from unlearning.store.queue import JobQueue
from unlearning.store.records import JobStoreBusyError, JobStoreError

log = logging.getLogger("unlearning.store")

DB_NAME = "jobs.sqlite"
BUSY_TIMEOUT_MS = 5000


class SqliteJobStore(JobQueue):
    """Jobs and the audit trail in ``path`` (default ``LETHE_HOME/jobs.sqlite``)."""

    backend = "sqlite"

    def __init__(self, path: Path | str | None = None):
        if path is None:
            from unlearning.runtime import lethe_home

            path = lethe_home() / DB_NAME
        self.path = Path(path).expanduser()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._create_schema()

    def __repr__(self) -> str:
        return f"SqliteJobStore({str(self.path)!r})"

    @property
    def where(self) -> str:
        return str(self.path)

    def _error(self, exc: sqlite3.Error) -> JobStoreError:
        name = getattr(exc, "sqlite_errorname", "")
        if name in ("SQLITE_BUSY", "SQLITE_LOCKED"):
            return JobStoreBusyError(
                f"job database {self.path} stayed locked by another process for more than "
                f"{BUSY_TIMEOUT_MS / 1000:g} s; try again"
            )
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
                for statement in SQLITE_TABLES:
                    conn.execute(statement)
                stored = conn.execute("SELECT max(version) FROM schema_version").fetchone()[0]
                if stored is not None and stored > SQLITE_SCHEMA_VERSION:
                    raise JobStoreError(
                        f"job database {self.path} has schema version {stored}, written by a newer "
                        f"Lethe; this one reads version {SQLITE_SCHEMA_VERSION}"
                    )
                # a new database has just got the version-1 tables: it takes every migration
                for version in range((stored or 1) + 1, SQLITE_SCHEMA_VERSION + 1):
                    for statement in SQLITE_MIGRATIONS[version]:
                        conn.execute(statement)
                if stored is None:
                    conn.execute("INSERT INTO schema_version (version) VALUES (?)", (SQLITE_SCHEMA_VERSION,))
                elif stored < SQLITE_SCHEMA_VERSION:
                    conn.execute("UPDATE schema_version SET version = ?", (SQLITE_SCHEMA_VERSION,))
                    log.warning("job database %s upgraded from schema version %d to %d",
                                self.path, stored, SQLITE_SCHEMA_VERSION)
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

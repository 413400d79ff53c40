"""Where Lethe keeps what must outlive a process, below both the library's registry and
CLI and the service: the job queue and its audit trail (SQLite by default, PostgreSQL with
``LETHE_DATABASE_URL``), the active pointers and version numbers, and immutable folders of
files with sha256 manifests (a local folder by default, S3-compatible object storage with
``LETHE_REGISTRY_URL``). Nothing here imports torch or the service."""

from __future__ import annotations

import os
from pathlib import Path

from unlearning.errors import LetheError
from unlearning.store.liveness import this_worker
from unlearning.store.objects import StorageUnavailableError
from unlearning.store.queue import JobQueue
from unlearning.store.records import (
    ACTIVE_STATES, AUDIT_ACTIONS, AUDIT_MAX_LIMIT, FINAL_STATES, JOB_STATES, WORKER_ACTOR, AuditAction, AuditEntry,
    JobFinishedError, JobRecord, JobState, JobStoreBusyError, JobStoreError, QueueFullError, StoredVersion,
    StoreUnavailableError,
)
from unlearning.store.sqlite import DB_NAME, SqliteJobStore

JobStore = JobQueue  # the interface both back ends implement

__all__ = [
    "ACTIVE_STATES", "AUDIT_ACTIONS", "AUDIT_MAX_LIMIT", "DB_NAME", "FINAL_STATES", "JOB_STATES", "WORKER_ACTOR",
    "AuditAction", "AuditEntry", "JobFinishedError", "JobRecord", "JobState", "JobStore", "JobStoreBusyError",
    "JobStoreError", "QueueFullError", "SqliteJobStore", "StorageUnavailableError", "StoreUnavailableError",
    "StoredVersion", "database_url", "open_store", "registry_url", "this_worker",
]


def database_url() -> str | None:
    """``LETHE_DATABASE_URL`` (``postgresql://...``), or None for SQLite in LETHE_HOME."""
    return os.environ.get("LETHE_DATABASE_URL") or None


def registry_url() -> str | None:
    """``LETHE_REGISTRY_URL`` (``s3://bucket/prefix``), or None for folders in LETHE_HOME."""
    return os.environ.get("LETHE_REGISTRY_URL") or None


def open_store(home: Path | None = None, *, url: str | None = None) -> JobQueue:
    """The job store: PostgreSQL at ``url`` (default ``LETHE_DATABASE_URL``) when set,
    else SQLite at ``home/jobs.sqlite`` (default LETHE_HOME)."""
    url = url or database_url()
    if url:
        from unlearning.store.postgres import PostgresJobStore

        if not url.startswith(("postgresql://", "postgres://")):
            raise LetheError(f"LETHE_DATABASE_URL must be a postgresql:// URL, not {url.split(':', 1)[0]!r}...")

        return PostgresJobStore(url)
    if home is None:
        from unlearning.runtime import lethe_home

        home = lethe_home()
    return SqliteJobStore(Path(home) / DB_NAME)

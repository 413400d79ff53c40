"""The job database's schema on each back end, and how an older one is upgraded.

SQLite: a new database gets the version-1 tables and then every migration; an older one
is upgraded in place, in one transaction, when a store opens it. PostgreSQL: the same
tables (same columns, same JSON-as-text, same ISO 8601 text timestamps, so one SQL serves
both) plus what several instances share there: the active pointer of each model and the
last version number given out per model."""

from __future__ import annotations

from unlearning.store.base import ACTIVE_SQL
from unlearning.store.records import JOB_STATES

_STATES = ", ".join(repr(s) for s in JOB_STATES)

# ------------------------------------------------------------------------------- SQLite

SQLITE_SCHEMA_VERSION = 2
SQLITE_TABLES = [
    """CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)""",
    f"""CREATE TABLE IF NOT EXISTS jobs (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        id TEXT NOT NULL UNIQUE,
        state TEXT NOT NULL CHECK (state IN ({_STATES})),
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
        WHERE state IN {ACTIVE_SQL}""",
]
SQLITE_MIGRATIONS: dict[int, list[str]] = {
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
assert sorted(SQLITE_MIGRATIONS) == list(range(2, SQLITE_SCHEMA_VERSION + 1))

# --------------------------------------------------------------------------- PostgreSQL

POSTGRES_SCHEMA_VERSION = 2
POSTGRES_MIGRATIONS: dict[int, list[str]] = {
    1: [
        f"""CREATE TABLE jobs (
            seq BIGSERIAL PRIMARY KEY,
            id TEXT NOT NULL UNIQUE,
            state TEXT NOT NULL CHECK (state IN ({_STATES})),
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
            progress DOUBLE PRECISION NOT NULL DEFAULT 0,
            progress_info TEXT NOT NULL DEFAULT '{{}}',
            cancel_requested INTEGER NOT NULL DEFAULT 0,
            worker TEXT,
            heartbeat_at TEXT,
            version TEXT,
            result TEXT,
            reason TEXT
        )""",
        """CREATE INDEX jobs_state ON jobs (state, seq)""",
        f"""CREATE UNIQUE INDEX jobs_one_active ON jobs ((true)) WHERE state IN {ACTIVE_SQL}""",
        """CREATE TABLE audit (
            seq BIGSERIAL PRIMARY KEY,
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
        """CREATE INDEX audit_job ON audit (job_id, seq)""",
        """CREATE INDEX audit_action ON audit (action, seq)""",
        """CREATE FUNCTION lethe_audit_append_only() RETURNS trigger LANGUAGE plpgsql AS
           $$ BEGIN RAISE EXCEPTION 'the audit log is append-only'; END $$""",
        """CREATE TRIGGER audit_no_update BEFORE UPDATE OR DELETE ON audit
           FOR EACH ROW EXECUTE FUNCTION lethe_audit_append_only()""",
        """CREATE TRIGGER audit_no_truncate BEFORE TRUNCATE ON audit
           FOR EACH STATEMENT EXECUTE FUNCTION lethe_audit_append_only()""",
        # what the instances share besides jobs: the served version of each model ...
        """CREATE TABLE active_versions (
            model TEXT PRIMARY KEY,
            version TEXT NOT NULL,
            activated_at TEXT NOT NULL
        )""",
        # ... and the last version number given out per model (<model>-v<N> stays unique)
        """CREATE TABLE version_numbers (
            model TEXT PRIMARY KEY,
            last BIGINT NOT NULL
        )""",
    ],
    2: [  # secrets every instance must agree on (the key of the audit trail's token fingerprints)
        """CREATE TABLE shared_secrets (
            name TEXT PRIMARY KEY,
            value TEXT NOT NULL
        )""",
    ],
}
assert sorted(POSTGRES_MIGRATIONS) == list(range(1, POSTGRES_SCHEMA_VERSION + 1))

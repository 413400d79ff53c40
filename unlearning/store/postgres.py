"""The job store on PostgreSQL (``LETHE_DATABASE_URL=postgresql://...``, psycopg 3), for
several instances on several hosts: jobs, the audit trail, the active pointers and the
version counters live in one database every instance reaches over the network.

* One connection per thread of a process, opened on first use (the tables are created
  then, if needed) and dropped when it fails or when the server has closed it (a restart:
  an idle connection with something to read has been told goodbye); the next call opens a
  new one. A call while the server is down raises ``StoreUnavailableError`` (a
  ``JobStoreError``); callers retry or say so.
* Every write transaction first takes one transaction-scoped advisory lock, so writes run
  one at a time across every instance, as SQLite's ``BEGIN IMMEDIATE`` makes them on one
  host: ``claim_next``'s check-then-claim cannot interleave, and the partial unique index
  ``jobs_one_active`` refuses a second active job whatever happens.
* ``listen`` follows NOTIFY on a channel from a thread of its own, reconnecting when the
  server goes away; the callback also runs after each (re)connection, since a change may
  have been missed while it was down.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import threading
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from unlearning.store.migrations import POSTGRES_MIGRATIONS, POSTGRES_SCHEMA_VERSION
from unlearning.store.queue import JobQueue
from unlearning.store.records import JobStoreBusyError, JobStoreError, StoreUnavailableError

log = logging.getLogger("unlearning.store")

WRITE_LOCK = 0x4C45_5448  # "LETH": the advisory lock every write transaction holds
LOCK_TIMEOUT_MS = 5000
STATEMENT_TIMEOUT_MS = 30_000
CONNECT_TIMEOUT_S = 5


def redacted(url: str) -> str:
    """The URL without its password, for messages and logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
    return urlunsplit(parts._replace(netloc=netloc))


class _Conn:
    """A psycopg connection that speaks the store's dialect (``?`` placeholders)."""

    def __init__(self, raw):
        self.raw = raw

    def execute(self, sql: str, params: tuple | list = ()):
        return self.raw.execute(sql.replace("?", "%s"), params)


class PostgresDatabase:
    """Connections to one PostgreSQL database, shared by everything in a process that uses
    it (the job store, the registry's pointers and counters). ``database(url)`` gives the
    process's one instance per URL."""

    def __init__(self, url: str):
        self.url = url
        self._local = threading.local()
        self._schema_ready = False

    def __repr__(self) -> str:
        return f"PostgresDatabase({redacted(self.url)!r})"

    # ------------------------------------------------------------------------ connections

    def _open(self):
        import psycopg
        from psycopg.rows import dict_row

        return psycopg.connect(
            self.url, autocommit=True, row_factory=dict_row, connect_timeout=CONNECT_TIMEOUT_S,
            options=f"-c lock_timeout={LOCK_TIMEOUT_MS} -c statement_timeout={STATEMENT_TIMEOUT_MS}",
            application_name=f"lethe:{os.getpid()}",
        )

    def _drop(self) -> None:
        raw = getattr(self._local, "conn", None)
        self._local.conn = None
        if raw is not None:
            with contextlib.suppress(Exception):
                raw.close()

    def _error(self, exc: Exception) -> JobStoreError:
        import psycopg

        where = redacted(self.url)
        if isinstance(exc, psycopg.errors.LockNotAvailable):
            return JobStoreBusyError(f"job database {where} stayed locked by another process for more than "
                                     f"{LOCK_TIMEOUT_MS / 1000:g} s; try again")
        if isinstance(exc, (psycopg.OperationalError, psycopg.InterfaceError)):
            return StoreUnavailableError(f"job database {where} cannot be reached ({str(exc).strip()}); try again")
        return JobStoreError(f"job database {where} cannot be used ({str(exc).strip()})")

    @contextlib.contextmanager
    def connect(self) -> Iterator[_Conn]:
        """This thread's connection (autocommit); failures become JobStoreError, and a
        connection that failed is dropped so the next call starts afresh."""
        import psycopg

        if getattr(self._local, "pid", None) != os.getpid():  # never a parent's connection after a fork
            self._local.conn, self._local.pid = None, os.getpid()
        try:
            if self._local.conn is not None and (self._local.conn.closed or _said_goodbye(self._local.conn)):
                self._drop()
            if self._local.conn is None:
                self._local.conn = self._open()
                if not self._schema_ready:
                    try:
                        self._create_schema(_Conn(self._local.conn))
                    except JobStoreError:
                        self._drop()  # e.g. a newer schema: every use says so, not only the first
                        raise
            yield _Conn(self._local.conn)
        except psycopg.IntegrityError:
            raise  # a bug in the store (the unique index refused a second active job), not the server
        except psycopg.Error as exc:
            if isinstance(exc, (psycopg.OperationalError, psycopg.InterfaceError)) or (
                    self._local.conn is not None and self._local.conn.broken):
                self._drop()
            raise self._error(exc) from None

    @contextlib.contextmanager
    def write(self) -> Iterator[_Conn]:
        """One transaction that holds the write lock from its first statement."""
        with self.connect() as conn:
            with conn.raw.transaction():
                conn.execute("SELECT pg_advisory_xact_lock(?)", (WRITE_LOCK,))
                yield conn

    # ---------------------------------------------------------------------------- schema

    def ensure_schema(self) -> None:
        """Create or upgrade the tables now (the first connection does it anyway)."""
        if not self._schema_ready:
            with self.connect() as conn:
                if not self._schema_ready:  # this thread's connection was opened before
                    self._create_schema(conn)

    def _create_schema(self, conn: _Conn) -> None:
        """Create or upgrade the tables (once per process; under the write lock, so two
        instances starting together do not both create them)."""
        with conn.raw.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(?)", (WRITE_LOCK,))
            conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
            stored = conn.execute("SELECT max(version) AS v FROM schema_version").fetchone()["v"]
            if stored is not None and stored > POSTGRES_SCHEMA_VERSION:
                raise JobStoreError(
                    f"job database {redacted(self.url)} has schema version {stored}, written by a newer "
                    f"Lethe; this one reads version {POSTGRES_SCHEMA_VERSION}")
            for version in range((stored or 0) + 1, POSTGRES_SCHEMA_VERSION + 1):
                for statement in POSTGRES_MIGRATIONS[version]:
                    conn.raw.execute(statement)
            if stored is None:
                conn.execute("INSERT INTO schema_version (version) VALUES (?)", (POSTGRES_SCHEMA_VERSION,))
            elif stored < POSTGRES_SCHEMA_VERSION:
                conn.execute("UPDATE schema_version SET version = ?", (POSTGRES_SCHEMA_VERSION,))
        self._schema_ready = True

    # ---------------------------------------------------------------------------- notify

    def notify(self, conn: _Conn, channel: str, payload: str) -> None:
        """Send NOTIFY inside ``conn``'s transaction: delivered when (and only if) it commits."""
        conn.execute("SELECT pg_notify(?, ?)", (channel, payload))

    def listen(self, channel: str, callback: Callable[[str | None], None], stop: threading.Event,
               *, wait_s: float = 1.0) -> threading.Thread:
        """Call ``callback(payload)`` for each NOTIFY on ``channel``, and ``callback(None)``
        after every (re)connection, from a daemon thread, until ``stop`` is set."""

        def run() -> None:
            import psycopg

            down_logged = False
            while not stop.is_set():
                try:
                    with psycopg.connect(self.url, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S) as raw:
                        raw.execute(f"LISTEN {channel}")
                        if down_logged:
                            log.info("listening for %s on %s again", channel, redacted(self.url))
                        down_logged = False
                        callback(None)
                        while not stop.is_set():
                            for note in raw.notifies(timeout=wait_s):
                                callback(note.payload)
                except psycopg.Error as exc:
                    if not down_logged:
                        log.warning("cannot listen for %s on %s (%s); polling until it is back",
                                    channel, redacted(self.url), str(exc).strip())
                        down_logged = True
                    stop.wait(1.0)
                except Exception:  # a callback's bug must not end the listening
                    log.exception("listener for %s failed", channel)
                    stop.wait(1.0)

        thread = threading.Thread(target=run, name=f"lethe-listen-{channel}", daemon=True)
        thread.start()
        return thread


def _said_goodbye(raw) -> bool:
    """Whether an idle connection has something to read: the server closed it (a restart,
    an administrator) or is about to. Costs a system call, not a round trip."""
    import select

    try:
        readable, _, _ = select.select([raw.fileno()], [], [], 0)
    except (OSError, ValueError):
        return True
    return bool(readable)


_DATABASES: dict[tuple[str, int], PostgresDatabase] = {}
_DATABASES_LOCK = threading.Lock()


def database(url: str) -> PostgresDatabase:
    """The process's one ``PostgresDatabase`` for ``url`` (nothing is connected yet: a
    server that is down now is only an error when it is used)."""
    key = (url, os.getpid())
    with _DATABASES_LOCK:
        found = _DATABASES.get(key)
        if found is None:
            found = _DATABASES[key] = PostgresDatabase(url)
    return found


class PostgresJobStore(JobQueue):
    """Jobs and the audit trail in a PostgreSQL database shared by every instance."""

    backend = "postgresql"

    def __init__(self, url: str):
        self.db = database(url)

    def __repr__(self) -> str:
        return f"PostgresJobStore({redacted(self.db.url)!r})"

    @property
    def where(self) -> str:
        return redacted(self.db.url)

    @contextlib.contextmanager
    def _connect(self) -> Iterator[Any]:
        with self.db.connect() as conn:
            yield conn

    @contextlib.contextmanager
    def _write(self) -> Iterator[Any]:
        with self.db.write() as conn:
            yield conn

    def shared_secret(self, name: str) -> bytes:
        """32 random bytes named ``name``, made by the first instance that asks and read
        alike by every other one sharing this database."""
        with self._write() as conn:
            conn.execute("INSERT INTO shared_secrets (name, value) VALUES (?, ?) ON CONFLICT (name) DO NOTHING",
                         (name, secrets.token_hex(32)))
            row = conn.execute("SELECT value FROM shared_secrets WHERE name = ?", (name,)).fetchone()
        return bytes.fromhex(row["value"])

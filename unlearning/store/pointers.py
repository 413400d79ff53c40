"""The active pointer of each model (which version is served), and the version numbers.

* ``FilePointers`` (the default): ``LETHE_HOME/active/<model>.json``, replaced atomically;
  every serving worker of every instance on that folder polls it.
* ``DatabasePointers`` (with ``LETHE_DATABASE_URL``): a row per model in PostgreSQL. A
  change is written with a NOTIFY in the same transaction, which every serving worker of
  every instance hears at once (``changes``); polling stays as the fallback while the
  notification connection is down.

Both hand out version numbers: the file pointers under the registry's lock on one host,
the database atomically for every instance (``<model>-v<N>`` never given out twice).
"""

from __future__ import annotations

import json
import logging
import threading
from pathlib import Path

from unlearning.errors import IntegrityError
from unlearning.store.files import remove_stale, write_json_atomic
from unlearning.store.records import now

log = logging.getLogger("unlearning.store")

CHANNEL = "lethe_active"


class FilePointers:
    """``active/<model>.json`` files under a LETHE_HOME."""

    shared = False  # other hosts cannot see them

    def __init__(self, folder: Path):
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)

    def get(self, model: str) -> str | None:
        path = self.folder / f"{model}.json"
        if not path.is_file():
            return None
        try:
            version = json.loads(path.read_text())["version"]
        except (ValueError, KeyError, TypeError, UnicodeDecodeError) as exc:
            raise IntegrityError(f"active/{path.name}: unreadable pointer ({exc})") from None
        if not isinstance(version, str):
            raise IntegrityError(f"active/{path.name}: pointer names no version")
        return version

    def set(self, model: str, version: str) -> None:
        """Call with the registry's lock held."""
        remove_stale(self.folder)
        write_json_atomic(self.folder / f"{model}.json", {"version": version, "activated_at": now()})

    def models(self) -> list[str]:
        return sorted(p.stem for p in self.folder.glob("*.json") if not p.name.startswith("."))

    def changes(self) -> threading.Event:
        """An event set when a pointer changes: files give no notice, so it never is (the
        watcher's poll finds the change)."""
        return threading.Event()


class DatabasePointers:
    """Active pointers and version counters in PostgreSQL, changes pushed by NOTIFY."""

    shared = True

    def __init__(self, db):
        self.db = db
        self._subscribers: list[threading.Event] = []
        self._lock = threading.Lock()
        self._listening: threading.Thread | None = None
        self._stop = threading.Event()

    def get(self, model: str) -> str | None:
        with self.db.connect() as conn:
            row = conn.execute("SELECT version FROM active_versions WHERE model = ?", (model,)).fetchone()
        return None if row is None else row["version"]

    def set(self, model: str, version: str) -> None:
        with self.db.write() as conn:
            conn.execute(
                """INSERT INTO active_versions (model, version, activated_at) VALUES (?, ?, ?)
                   ON CONFLICT (model) DO UPDATE SET version = EXCLUDED.version,
                   activated_at = EXCLUDED.activated_at""",
                (model, version, now()),
            )
            self.db.notify(conn, CHANNEL, model)

    def models(self) -> list[str]:
        with self.db.connect() as conn:
            return [row["model"] for row in conn.execute("SELECT model FROM active_versions ORDER BY model")]

    def allocate(self, model: str, at_least: int) -> int:
        """The next version number of ``model``: never handed out before, by any instance,
        and at least ``at_least`` (versions stored before the counter existed)."""
        with self.db.write() as conn:
            row = conn.execute(
                """INSERT INTO version_numbers (model, last) VALUES (?, ?)
                   ON CONFLICT (model) DO UPDATE SET last = GREATEST(version_numbers.last + 1, EXCLUDED.last)
                   RETURNING last""",
                (model, at_least),
            ).fetchone()
        return int(row["last"])

    def changes(self) -> threading.Event:
        """An event set whenever any pointer changes (and after the notification connection
        comes back, when a change may have been missed). The caller clears it."""
        event = threading.Event()
        with self._lock:
            self._subscribers.append(event)
            if self._listening is None:
                self._listening = self.db.listen(CHANNEL, self._fire, self._stop)
        return event

    def _fire(self, payload: str | None) -> None:
        with self._lock:
            for event in self._subscribers:
                event.set()

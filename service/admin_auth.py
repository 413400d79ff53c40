"""The admin API's bearer token: one parse of the ``Authorization`` header, and the audit
actor that names who used it.

The header is read once, here. A request with more than one ``Authorization`` header is
refused (which one would count?). ``Bearer`` is matched in any case, and spaces around
the token are ignored, so one token is always one actor. The actor is ``token:`` and a
keyed hash of the token (HMAC-SHA256, 64 bits shown): the key is random, made once per
audit trail and shared by everything that writes to it, so the fingerprint is stable and
cannot be checked against a guessed token without it. With SQLite that is once per
``LETHE_HOME`` (``audit.key``, mode 0600: every worker and replica on it); with
PostgreSQL, where instances on several nodes each have a home of their own, the database
holds it (``shared_secrets``).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import threading
from collections.abc import Callable
from pathlib import Path

import anyio

from unlearning.errors import LetheError

AUDIT_KEY_FILE = "audit.key"
AUDIT_SECRET = "audit-key"  # its name in PostgreSQL's shared_secrets
ACTOR_SCOPE_KEY = "lethe.actor"  # where an authorised request carries its actor


def _reply(status: int, message: str, *, challenge: bool = False):
    body = json.dumps({"error": message}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if challenge:
        headers.append((b"www-authenticate", b"Bearer"))
    return status, headers, body


def audit_key(home: Path) -> bytes:
    """The home's audit key: read, or made once (racing processes agree on the first one written)."""
    path = Path(home) / AUDIT_KEY_FILE
    if not path.is_file():
        tmp = path.with_name(f".{AUDIT_KEY_FILE}-{os.getpid()}-{secrets.token_hex(4)}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, secrets.token_bytes(32))
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(tmp, path)  # fails if another process got there first: theirs is the key
        except FileExistsError:
            pass
        finally:
            tmp.unlink(missing_ok=True)
    return path.read_bytes()


def actor_key(home: Path, store) -> Callable[[], bytes]:
    """How to get the audit trail's key: from the database with PostgreSQL (asked once, at
    the first authorised request: the database may be away when the service starts), else
    ``home``'s ``audit.key`` (made now)."""
    if getattr(store, "backend", None) != "postgresql":
        key = audit_key(home)
        return lambda: key
    found: list[bytes] = []
    lock = threading.Lock()

    def from_database() -> bytes:
        with lock:
            if not found:
                found.append(store.shared_secret(AUDIT_SECRET))
            return found[0]

    return from_database


def fingerprint(token: bytes, key: bytes) -> str:
    return "token:" + hmac.new(key, token, hashlib.sha256).hexdigest()[:16]


def presented_token(headers: list[tuple[bytes, bytes]]) -> tuple[bytes | None, str | None]:
    """(token, None) from the one ``Authorization: Bearer <token>`` header, else (None, why)."""
    values = [value for name, value in headers if name.lower() == b"authorization"]
    if len(values) > 1:
        return None, f"send the admin token in one Authorization header, not {len(values)}"
    if not values:
        return None, "missing admin token (send 'Authorization: Bearer <token>')"
    scheme, _, token = values[0].strip().partition(b" ")
    token = token.strip()
    if scheme.lower() != b"bearer" or not token:
        return None, "wrong admin token (send 'Authorization: Bearer <token>')"
    return token, None


class BearerAuth:
    """401 for every admin path unless the bearer token matches (constant-time); an
    authorised request carries its actor in ``scope["lethe.actor"]``. ``key`` gives the
    audit trail's key (``actor_key``); while it cannot be read, 503."""

    def __init__(self, app, token: str | None, key: Callable[[], bytes]):
        self.app = app
        self.token = token.encode() if token else None
        self._load_key = key
        self._key: bytes | None = None

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        if self.token is None:
            return await _send(send, *_reply(
                401, "the admin API is disabled: no LETHE_ADMIN_TOKEN is configured on the server"))
        token, why = presented_token(scope.get("headers") or [])
        if token is None or not hmac.compare_digest(token, self.token):
            return await _send(send, *_reply(401, why or "wrong admin token (send 'Authorization: Bearer <token>')",
                                             challenge=True))
        if self._key is None:
            try:
                self._key = await anyio.to_thread.run_sync(self._load_key)
            except LetheError as exc:  # the database holding it is away: the request can be retried
                return await _send(send, *_reply(503, f"the admin API cannot name who is asking now: {exc}"))
        scope[ACTOR_SCOPE_KEY] = fingerprint(token, self._key)
        return await self.app(scope, receive, send)


async def _send(send, status, headers, body) -> None:
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})

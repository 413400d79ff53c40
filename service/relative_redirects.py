"""ASGI middleware: a redirect never sends a client to the host its own request named.

Starlette redirects ``/admin`` to ``/admin/`` with an absolute URL built from the request's
``Host`` header, so ``Host: evil.example`` gets ``Location: http://evil.example/admin/``
(a cache or a proxy in front may hand that to others). The service only ever redirects to
itself, so every ``Location`` is cut down to its path and query: a relative reference,
which clients resolve against the URL they asked for (RFC 9110, 10.2.2).
"""

from __future__ import annotations

from urllib.parse import urlsplit


def _relative(location: bytes) -> bytes:
    parts = urlsplit(location.decode("latin-1"))
    path = parts.path if parts.path.startswith("/") else "/" + parts.path
    path = "/" + path.lstrip("/")  # '//host/x' would be another host again
    return (path + (f"?{parts.query}" if parts.query else "")).encode("latin-1")


class RelativeRedirects:
    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def rewriting_send(message):
            if message["type"] == "http.response.start" and 300 <= message["status"] < 400:
                message = {**message, "headers": [
                    (name, _relative(value) if name.lower() == b"location" else value)
                    for name, value in message.get("headers") or []]}
            await send(message)

        await self.app(scope, receive, rewriting_send)

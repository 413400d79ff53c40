"""ASGI middleware: request-size limits (413) before a byte is parsed."""

from __future__ import annotations

import json


def _reply(status: int, message: str):
    body = json.dumps({"error": message}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    return status, headers, body


class RequestTooLarge(Exception):
    """Raised from ``receive`` once a streamed body passes the limit (apps may turn it into 413)."""

    def __init__(self, limit: int):
        super().__init__(f"request body exceeds the limit of {limit} bytes")
        self.limit = limit


class BodySizeLimit:
    """413 when a request declares, or streams, more than its route's limit: ``admin_limit``
    for ``/admin`` (uploads), ``limit`` for everything else (sampling bodies are tiny).

    A body sent without a length (chunked) is counted as it arrives. Outside ``/admin`` it
    is read here, up to ``limit``, before the route sees it: BentoML reads bodies itself
    and turns an error raised while reading into a 500. The admin API streams uploads to
    disk, and answers ``RequestTooLarge`` with 413 itself."""

    def __init__(self, app, limit: int, admin_limit: int, admin_prefix: str = "/admin"):
        self.app = app
        self.limit = limit
        self.admin_limit = admin_limit
        self.admin_prefix = admin_prefix

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope.get("path", "")
        limit = self.admin_limit if path.startswith(self.admin_prefix) else self.limit
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None:
            try:
                size = int(declared)
            except ValueError:
                return await self._send(send, *_reply(400, "Content-Length is not a number"))
            if size > limit:
                return await self._send(send, *_reply(413, f"request body of {size} bytes exceeds the limit of {limit} bytes"))
        if not path.startswith(self.admin_prefix):
            return await self._buffered(scope, receive, send, limit)
        received = 0
        started = False

        async def counted_receive():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise RequestTooLarge(limit)
            return message

        async def tracking_send(message):
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counted_receive, tracking_send)
        except RequestTooLarge:
            if not started:
                await self._send(send, *_reply(413, f"request body exceeds the limit of {limit} bytes"))

    async def _buffered(self, scope, receive, send, limit: int):
        """Read the whole body (at most ``limit`` bytes), then hand it to the app in one message."""
        parts, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away
            part = message.get("body", b"")
            size += len(part)
            if size > limit:
                return await self._send(send, *_reply(413, f"request body exceeds the limit of {limit} bytes"))
            parts.append(part)
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(parts), "more_body": False}
            return await receive()  # after the body: the disconnect, when it comes

        await self.app(scope, replay, send)

    @staticmethod
    async def _send(send, status, headers, body):
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

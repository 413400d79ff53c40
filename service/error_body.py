"""ASGI middleware: every refusal has the same body, ``{"error": "..."}``.

BentoML 1.4.39 wraps the 4xx of its ``@bentoml.api`` routes in a one-element list
(``[{"error": "..."}]``, a stray tuple in its error handler), while the admin API and our
size limits answer ``{"error": "..."}``. This unwraps the list so clients parse one shape.
"""

from __future__ import annotations

import json


def _unwrapped(body: bytes) -> bytes | None:
    try:
        payload = json.loads(body)
    except ValueError:
        return None
    if isinstance(payload, list) and len(payload) == 1 and isinstance(payload[0], dict) and "error" in payload[0]:
        return json.dumps(payload[0]).encode()
    return None


class ErrorBodyShape:
    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start: dict | None = None
        chunks: list[bytes] = []

        async def reshaping_send(message):
            nonlocal start
            if message["type"] == "http.response.start":
                headers = dict(message.get("headers") or [])
                is_json = headers.get(b"content-type", b"").startswith(b"application/json")
                if 400 <= message["status"] < 500 and is_json:
                    start = message  # hold it until the body is known
                    return
                return await send(message)
            if start is None or message["type"] != "http.response.body":
                return await send(message)
            chunks.append(message.get("body", b""))
            if message.get("more_body", False):
                return
            body = b"".join(chunks)
            body = _unwrapped(body) or body
            headers = [(k, v) for k, v in start.get("headers") or [] if k.lower() != b"content-length"]
            headers.append((b"content-length", str(len(body)).encode()))
            await send({**start, "headers": headers})
            await send({"type": "http.response.body", "body": body})

        await self.app(scope, receive, reshaping_send)

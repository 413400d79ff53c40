"""BentoML's request timeout (its TimeoutMiddleware, with Lethe's fix in
``service.request_timer``): a finished request leaves nothing of itself behind for the
timeout's 120 s, and a request that overruns the timeout still gets a 504."""

from __future__ import annotations

import asyncio
import contextvars
import gc
import weakref

from bentoml._internal.server.http.traffic import TimeoutMiddleware

from service.request_timer import install

REQUEST_SPAN = contextvars.ContextVar("request_span")  # what BentoML's tracing sets outside


class Span:
    """Stands for a request's OpenTelemetry span."""


def app_answering_after(delay_s: float):
    async def app(scope, receive, send):
        await asyncio.sleep(delay_s)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})
    return app


async def _request(middleware) -> list[dict]:
    sent = []

    async def receive():
        return {"type": "http.request", "body": b""}

    async def send(message):
        sent.append(message)

    await middleware({"type": "http", "path": "/generate"}, receive, send)
    return sent


def test_a_finished_request_is_not_kept_alive_by_its_timer():
    install()
    middleware = TimeoutMiddleware(app_answering_after(0.0), timeout=120)

    async def serve(n: int) -> tuple[int, list[int]]:
        spans, statuses = [], []
        for _ in range(n):
            span = Span()
            spans.append(weakref.ref(span))
            token = REQUEST_SPAN.set(span)
            statuses.append((await _request(middleware))[0]["status"])
            REQUEST_SPAN.reset(token)
            del span
        gc.collect()
        return sum(ref() is not None for ref in spans), statuses  # while the loop still runs

    alive, statuses = asyncio.run(serve(300))
    assert statuses == [200] * 300
    assert alive == 0, f"{alive} of 300 finished requests are still held by their timers"


def test_a_request_over_the_timeout_still_gets_a_504():
    install()
    middleware = TimeoutMiddleware(app_answering_after(5.0), timeout=0.05)
    sent = asyncio.run(_request(middleware))
    assert sent[0]["status"] == 504
    assert b"Not able to process the request in 0.05 seconds" in sent[1]["body"]

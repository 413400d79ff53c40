"""BentoML's per-request timeout timer, without keeping each request alive for 120 s.

BentoML 1.4.39's ``TimeoutMiddleware`` schedules ``loop.call_later(timeout, ...)`` for every
request and never cancels it. The timer holds the request's context (its OpenTelemetry
span, futures, locks) for the whole traffic timeout (120 s) after the answer: at a few
hundred requests a second, several hundred thousand live objects per worker, and full
garbage collections that stopped the worker for 120-370 ms, longer the longer it ran
(``bench/soak.py`` saw the pauses; a census of ``gc.get_objects()`` in a serving worker
named the spans and timer handles). This replaces the middleware's ``__call__`` with the
same logic, except that the timer runs in an empty context and is cancelled when the
request ends. Remove it once BentoML does the same.
"""

from __future__ import annotations

import asyncio
import contextvars

from bentoml._internal.server.http.traffic import TimeoutMiddleware
from starlette.responses import JSONResponse


async def _call_with_cancelled_timer(self, scope, receive, send) -> None:
    if scope["type"] not in ("http", "websocket"):
        return await self.app(scope, receive, send)
    loop = asyncio.get_running_loop()
    waiter = loop.create_future()
    # an empty context: a cancelled timer stays in the loop's queue a while, and must not
    # hold the request's context (its span) there
    timer = loop.call_later(self.timeout, self._set_timer_out, waiter, context=contextvars.Context())

    async def _send(message) -> None:
        if not waiter.done():
            waiter.set_result(None)
        await send(message)

    fut = asyncio.ensure_future(self.app(scope, receive, _send), loop=loop)
    try:
        try:
            await waiter
        except asyncio.TimeoutError:
            if fut.cancel():
                resp = JSONResponse({"error": f"Not able to process the request in {self.timeout} seconds"},
                                    status_code=504)
                await resp(scope, receive, send)
        else:
            await fut
    finally:
        timer.cancel()  # and let go of the waiter now, not in 120 s


def install() -> None:
    """Idempotent; called when the service module is imported (in every serving worker)."""
    TimeoutMiddleware.__call__ = _call_with_cancelled_timer

"""BentoML's request metrics, labelled by route, never by the path a client sent.

BentoML 1.4.39's ``RunnerTrafficMetricsMiddleware`` labels ``bentoml_service_request_*``
with ``endpoint=scope["path"]``: every distinct path, a 404 or a 401 included, becomes
new series in every worker's memory and in the multiprocess folder, for good. A thousand
requests to ``/nope-<i>-<8,000 x "x">`` grew ``/metrics`` to 164 MB (4.5 s to scrape), and
raw CR/LF reached label values. No setting changes the label, and the middleware runs
before any middleware a service can add, so its ``__call__`` is wrapped here: it sees
the template of the route that serves the request (``/generate``,
``/admin/redactions/{job_id}``, ``/static_content/{path}``), found by Starlette's own
matching, or ``other`` for a path no route serves; the app behind it still sees the real
path. Remove this once BentoML labels by route.
"""

from __future__ import annotations

from bentoml._internal.server.http.instruments import RunnerTrafficMetricsMiddleware
from starlette.routing import Match, Mount

OTHER = "other"
_REAL_PATH = "lethe.real_path"
_bentoml_call = RunnerTrafficMetricsMiddleware.__call__


def _routes_of(app) -> list | None:
    """The routes of a Starlette app, also behind wrappers such as the admin API's auth."""
    for _ in range(8):
        if app is None:
            return None
        routes = getattr(app, "routes", None)
        if routes is not None:
            return routes
        app = getattr(app, "app", None)
    return None


def _label(routes: list, scope: dict, prefix: str) -> str | None:
    for route in routes:
        match, child = route.matches(scope)
        if match == Match.NONE:
            continue
        if isinstance(route, Mount):
            inner = _routes_of(route.app)
            if inner is None:  # static files and the like: one label for the mount
                return f"{prefix}{route.path}/{{path}}"
            found = _label(inner, {**scope, **child}, prefix + route.path)
            if found is not None:
                return found
            continue
        return prefix + route.path
    return None


def route_label(scope: dict) -> str:
    """The template of the route of ``scope``'s Starlette app that serves it, or ``other``."""
    routes = _routes_of(scope.get("app"))
    try:
        return (_label(routes, scope, "") if routes else None) or OTHER
    except Exception:  # a path no route can even parse is no route's
        return OTHER


class _RealPath:
    """Behind the metrics middleware: give the app the path the client sent."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if _REAL_PATH in scope:
            scope = {**scope, "path": scope[_REAL_PATH]}
            del scope[_REAL_PATH]
        return await self.app(scope, receive, send)


async def _call_labelled_by_route(self, scope, receive, send) -> None:
    if not isinstance(self.app, _RealPath):
        self.app = _RealPath(self.app)
    if scope["type"] == "http" and scope.get("path") != "/metrics":
        label = route_label(scope)
        if label != scope["path"]:
            scope = {**scope, "path": label, _REAL_PATH: scope["path"]}
    return await _bentoml_call(self, scope, receive, send)


def install() -> None:
    """Idempotent; called when the service module is imported (in every serving worker)."""
    RunnerTrafficMetricsMiddleware.__call__ = _call_labelled_by_route

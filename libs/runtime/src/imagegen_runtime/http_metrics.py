"""HTTP RED metrics (rate, errors, duration) for every service's HTTP app.

:func:`install_http_metrics` wraps a FastAPI app in :class:`HttpMetrics`, a plain ASGI
middleware; :func:`imagegen_runtime.health.add_health_routes` installs it, so every service that
serves ``/healthz`` (all six) counts its requests:

- ``imagegen_http_requests_total{service,method,route,status}``: one per response;
- ``imagegen_http_request_seconds{service,method,route}``: time to the end of the response body.

``route`` is the matched route's *template* (``/v1/jobs/{job_id}``; a mounted app's prefix and
``/{path}``, e.g. ``/ops/static/{path}``), never the raw path, so a client cannot grow the label
set by asking for new paths: a request no route matched is counted under ``route="unmatched"``.
``method`` is the request's method, any method outside the standard ones counted as ``other``
for the same reason. A request that raises before answering counts as
status 500.
"""

from __future__ import annotations

import time
from typing import Any

from prometheus_client import Counter, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

HTTP_REQUESTS = Counter(
    "imagegen_http_requests_total",
    "HTTP responses, by service, method, route template and status code.",
    ["service", "method", "route", "status"],
)
HTTP_REQUEST_SECONDS = Histogram(
    "imagegen_http_request_seconds",
    "Time from a request's arrival to the end of its response body.",
    ["service", "method", "route"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
)
UNMATCHED = "unmatched"  # the route label of a request no route matched (404)
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def route_template(scope: Scope, root_path: str = "") -> str:
    """The path template of the route the router matched, read from ``scope`` after routing:
    ``scope["route"]`` for a route; for a mounted app (static files), which FastAPI's router
    does not record there, the mount's path, found as what routing added to ``root_path`` (its
    value before routing), followed by ``/{path}``."""
    route: Any = scope.get("route")
    path = getattr(route, "path", None)
    if isinstance(path, str) and path:
        return path
    mounted = str(scope.get("root_path", ""))
    if mounted != root_path and mounted.startswith(root_path):
        return mounted[len(root_path) :] + "/{path}"
    return UNMATCHED


class HttpMetrics:
    """ASGI middleware observing :data:`HTTP_REQUESTS` and :data:`HTTP_REQUEST_SECONDS`."""

    def __init__(self, app: ASGIApp, service: str) -> None:
        self.app = app
        self.service = service

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        method = scope.get("method", "")
        method = method if method in METHODS else "other"
        status = 500  # unless a response starts
        root_path = str(scope.get("root_path", ""))
        started = time.perf_counter()

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            route = route_template(scope, root_path)
            HTTP_REQUESTS.labels(self.service, method, route, str(status)).inc()
            HTTP_REQUEST_SECONDS.labels(self.service, method, route).observe(
                time.perf_counter() - started
            )


def install_http_metrics(app: Any, service: str) -> None:
    """Count ``app``'s requests under ``service`` (once per app; a second call does nothing)."""
    if getattr(app.state, "http_metrics_installed", False):
        return
    app.add_middleware(HttpMetrics, service=service)
    app.state.http_metrics_installed = True

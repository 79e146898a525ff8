"""Health, readiness and Prometheus metrics over HTTP, for every service.

``/healthz`` answers while the process runs; ``/readyz`` answers 200 only when every readiness
check passes (broker reachable, database reachable, consumers assigned ...), else 503 with the
failing checks; ``/metrics`` is the Prometheus text format.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from fastapi import FastAPI, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

ReadinessCheck = Callable[[], Awaitable[bool]]


class Readiness:
    """Named async checks; ready when all pass."""

    def __init__(self) -> None:
        self.checks: dict[str, ReadinessCheck] = {}

    def add(self, name: str, check: ReadinessCheck) -> None:
        self.checks[name] = check

    async def evaluate(self) -> dict[str, bool]:
        results = {}
        for name, check in self.checks.items():
            try:
                results[name] = bool(await check())
            except Exception:
                results[name] = False
        return results


def add_health_routes(app: FastAPI, service: str, readiness: Readiness) -> None:
    """Mount /healthz, /readyz and /metrics on ``app``."""

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> dict[str, str]:
        return {"status": "ok", "service": service}

    @app.get("/readyz", include_in_schema=False)
    async def readyz() -> JSONResponse:
        results = await readiness.evaluate()
        ok = all(results.values())
        return JSONResponse(
            {"ready": ok, "service": service, "checks": results}, status_code=200 if ok else 503
        )

    @app.get("/metrics", include_in_schema=False)
    async def metrics() -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)


def health_app(service: str, readiness: Readiness) -> FastAPI:
    """A FastAPI app with only the health routes (services without their own HTTP API)."""
    app = FastAPI(title=f"imagegen-{service}", docs_url=None, redoc_url=None)
    add_health_routes(app, service, readiness)
    return app

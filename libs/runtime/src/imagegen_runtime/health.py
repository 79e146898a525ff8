"""Health, readiness and Prometheus metrics over HTTP, for every service.

``/healthz`` answers while the process runs; ``/readyz`` answers 200 only when every readiness
check passes (broker reachable, database reachable, consumers assigned ...), else 503 with the
failing checks and, for each, the reason (a consumer retrying a transient fault names it);
``/metrics`` is the Prometheus text format, for operator keys only (:mod:`.operator_auth`);
``/healthz`` and ``/readyz`` stay open for orchestrators.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from fastapi import Depends, FastAPI, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from .http_metrics import install_http_metrics
from .operator_auth import OperatorAuth
from .tracing import FASTAPI_TELEMETRY


@dataclass(frozen=True)
class CheckResult:
    """The outcome of one readiness check, with why it failed."""

    ok: bool
    reason: str = ""  # empty when ok; e.g. "retrying OperationalError: ... since 12 s"


# A check answers a bare bool, or a CheckResult when it can say why it is not ready.
ReadinessCheck = Callable[[], Awaitable[bool | CheckResult]]


class Readiness:
    """Named async checks; ready when all pass."""

    def __init__(self) -> None:
        self.checks: dict[str, ReadinessCheck] = {}

    def add(self, name: str, check: ReadinessCheck) -> None:
        self.checks[name] = check

    async def report(self) -> dict[str, CheckResult]:
        """Every check's result; a check that raises fails with the error as its reason."""
        results: dict[str, CheckResult] = {}
        for name, check in self.checks.items():
            try:
                got = await check()
            except Exception as exc:
                got = CheckResult(False, f"{type(exc).__name__}: {exc}"[:300])
            results[name] = got if isinstance(got, CheckResult) else CheckResult(bool(got))
        return results

    async def evaluate(self) -> dict[str, bool]:
        """Pass/fail per check (the ``checks`` object of ``/readyz``)."""
        return {name: r.ok for name, r in (await self.report()).items()}


def add_health_routes(
    app: FastAPI, service: str, readiness: Readiness, operator: OperatorAuth | None = None
) -> None:
    """Mount /healthz, /readyz and /metrics on ``app``; /metrics admits ``operator`` keys
    only (without a guard it answers 503: never served unchecked). Installs the HTTP RED
    metrics (:mod:`.http_metrics`) on ``app``, labelled ``service``."""
    guard = operator or OperatorAuth(None)
    install_http_metrics(app, service)

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> dict[str, str]:
        return {"status": "ok", "service": service}

    @app.get("/readyz", include_in_schema=False)
    async def readyz() -> JSONResponse:
        results = await readiness.report()
        ok = all(r.ok for r in results.values())
        body = {
            "ready": ok,
            "service": service,
            "checks": {name: r.ok for name, r in results.items()},
            "reasons": {name: r.reason or "not ready" for name, r in results.items() if not r.ok},
        }
        return JSONResponse(body, status_code=200 if ok else 503)

    @app.get("/metrics", include_in_schema=False, dependencies=[Depends(guard)])
    async def metrics() -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)


def health_app(service: str, readiness: Readiness, operator: OperatorAuth | None = None) -> FastAPI:
    """A FastAPI app with only the health routes (services without their own HTTP API)."""
    app = FastAPI(
        title=f"imagegen-{service}",
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
        telemetry=FASTAPI_TELEMETRY,
    )
    add_health_routes(app, service, readiness, operator)
    return app

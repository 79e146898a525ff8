"""How failures reach a client: 422 naming the field, 503 naming the dependency, never a 500 for
something the client or the infrastructure did (ADR 0601)."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Mapping
from typing import Any, TypeVar, cast

import asyncpg
from confluent_kafka import KafkaException
from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy import exc as sa

from ...service_layer.submit import LimitExceeded

POSTGRESQL, KAFKA = "postgresql", "kafka"
RETRY_AFTER_S = 2  # what a 503 tells the client to wait before retrying
OPENAI_PATHS = "/v1/images/"  # answered in OpenAI's error shape

# PostgreSQL error classes that mean "cannot serve now", not "this request is wrong":
# 08 connection exception, 53 insufficient resources, 57P operator intervention (shutdown).
_DOWN_SQLSTATES = ("08", "53", "57P")


class DependencyDown(Exception):
    """A dependency (``postgresql`` or ``kafka``) cannot be reached; the cause is chained."""

    def __init__(self, dependency: str, cause: BaseException) -> None:
        super().__init__(f"{dependency} unavailable: {type(cause).__name__}: {cause}".strip())
        self.dependency = dependency


def _causes(exc: BaseException) -> list[BaseException]:
    """``exc`` and what it wraps (SQLAlchemy's ``orig``, ``__cause__``, ``__context__``)."""
    seen: list[BaseException] = []
    todo: list[BaseException | None] = [exc]
    while todo and len(seen) < 8:
        e = todo.pop()
        if e is None or any(e is s for s in seen):
            continue
        seen.append(e)
        todo += [getattr(e, "orig", None), e.__cause__, e.__context__]
    return seen


def postgresql_down(exc: BaseException) -> bool:
    """True when ``exc`` means the database cannot be reached or cannot serve now."""
    for e in _causes(exc):
        if isinstance(e, OSError | TimeoutError | sa.TimeoutError | sa.DisconnectionError):
            return True
        if isinstance(e, sa.OperationalError | sa.InterfaceError):
            return True
        if isinstance(e, sa.DBAPIError) and e.connection_invalidated:
            return True
        # asyncpg's InterfaceError is mostly "connection is closed" (a restart cut it).
        if isinstance(e, asyncpg.PostgresConnectionError | asyncpg.InterfaceError):
            return True
        state = getattr(e, "sqlstate", None)
        if isinstance(state, str) and state.startswith(_DOWN_SQLSTATES):
            return True
    return False


def kafka_down(exc: BaseException) -> bool:
    """True when publishing failed for the broker's sake (unreachable, timed out, queue full)."""
    return any(
        isinstance(e, KafkaException | BufferError | OSError | TimeoutError) for e in _causes(exc)
    )


_DOWN = {POSTGRESQL: postgresql_down, KAFKA: kafka_down}
T = TypeVar("T")


class _Guarded:
    def __init__(self, port: Any, dependency: str) -> None:
        self._port = port
        self._dependency = dependency

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._port, name)
        if not inspect.iscoroutinefunction(attr):
            return attr

        @functools.wraps(attr)
        async def call(*args: Any, **kwargs: Any) -> Any:
            try:
                return await attr(*args, **kwargs)
            except Exception as exc:
                if _DOWN[self._dependency](exc):
                    raise DependencyDown(self._dependency, exc) from exc
                raise

        return call


def guarded(port: T, dependency: str) -> T:
    """``port`` whose calls raise :class:`DependencyDown` when ``dependency`` is down, so the
    answer can name it; any other error passes through untouched (a bug stays a 500)."""
    return cast(T, _Guarded(port, dependency))


def _openai(request: Request) -> bool:
    return request.url.path.startswith(OPENAI_PATHS)


def openai_error(
    status: int,
    message: str,
    param: str | None = None,
    code: str | None = None,
    kind: str = "invalid_request_error",
    headers: Mapping[str, str] | None = None,
) -> JSONResponse:
    """An OpenAI-style error body: ``{"error": {"message", "type", "param", "code"}}``."""
    body = {"error": {"message": message, "type": kind, "param": param, "code": code}}
    return JSONResponse(status_code=status, content=body, headers=dict(headers or {}))


async def dependency_down(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, DependencyDown)
    headers = {"Retry-After": str(RETRY_AFTER_S)}
    message = f"{exc}; nothing was accepted, retry in {RETRY_AFTER_S} s"
    if _openai(request):
        return openai_error(503, message, None, "service_unavailable", "server_error", headers)
    return JSONResponse(
        status_code=503,
        content={"detail": message, "dependency": exc.dependency},
        headers=headers,
    )


async def invalid_request(request: Request, exc: Exception) -> JSONResponse:
    """422 naming each field and reason; the offending input is never echoed (it may be NaN or
    a lone surrogate, which no JSON encoder writes)."""
    assert isinstance(exc, RequestValidationError)
    detail = [{"type": e["type"], "loc": list(e["loc"]), "msg": e["msg"]} for e in exc.errors()]
    if _openai(request):
        first = detail[0] if detail else {"loc": [], "msg": "invalid request"}
        param = str(first["loc"][-1]) if first["loc"] else None
        return openai_error(400, f"{param}: {first['msg']}", param)
    return JSONResponse(status_code=422, content={"detail": detail})


async def http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HTTPException)
    if _openai(request):
        code = "invalid_api_key" if exc.status_code == 401 else None
        return openai_error(exc.status_code, str(exc.detail), None, code, headers=exc.headers)
    return JSONResponse(
        status_code=exc.status_code, content={"detail": exc.detail}, headers=exc.headers
    )


async def limit_exceeded(request: Request, exc: Exception) -> JSONResponse:
    """429 naming the limit, with ``Retry-After`` (ADR 0640); nothing was accepted."""
    assert isinstance(exc, LimitExceeded)
    refusal = exc.refusal
    headers = {"Retry-After": str(refusal.retry_after_s)}
    if _openai(request):
        return openai_error(429, refusal.message, None, "rate_limit_exceeded", "requests", headers)
    return JSONResponse(
        status_code=429,
        content={
            "detail": refusal.message,
            "limit": refusal.limit,
            "limit_value": refusal.allowed,
            "current": refusal.current,
            "retry_after_s": refusal.retry_after_s,
        },
        headers=headers,
    )


def install(app: FastAPI) -> None:
    app.add_exception_handler(LimitExceeded, limit_exceeded)
    app.add_exception_handler(DependencyDown, dependency_down)
    app.add_exception_handler(RequestValidationError, invalid_request)
    app.add_exception_handler(HTTPException, http_error)

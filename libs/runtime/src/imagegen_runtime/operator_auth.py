"""Operator-only HTTP endpoints: a FastAPI dependency that admits operator API keys only.

Every service shares the one PostgreSQL database that holds the api service's ``api_keys``
table, so every service checks ``Authorization: Bearer <key>`` the same way (ADR 0610):

- no ``Authorization: Bearer`` header, or a key that is unknown or revoked: **401**;
- a valid key whose role is not ``operator``: **403**;
- no key store configured (``auth_database_url`` unset and no ``database_url``), or the
  database cannot be read: **503** (fail closed: the endpoint is never served unchecked).

Lookups (found, unknown and revoked alike) are cached for :data:`CACHE_TTL_S` seconds per key
hash, so a burst of scrapes costs one query; a revoked key or a changed role therefore takes
effect within that time. Failures to reach the database are never cached.

Used for ``/metrics`` (:mod:`.health`), the api's ``/docs``, ``/redoc`` and ``/openapi.json``
(:func:`mount_operator_docs`), the scheduler's ``/v1/queues`` and the pool-manager's
``/v1/workers``. ``/healthz`` and ``/readyz`` stay open for orchestrators.
"""

from __future__ import annotations

import hashlib
import html
import json
import time
from collections.abc import Callable
from typing import Annotated, Any, Protocol

from fastapi import FastAPI, Header, HTTPException
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

ROLES = ("user", "operator")
OPERATOR = "operator"
CACHE_TTL_S = 5.0  # how long a lookup is reused: the revocation latency of an operator key
CACHE_MAX = 4096  # cached key hashes before the cache is emptied (bounds memory under a flood)
BEARER = {"WWW-Authenticate": "Bearer"}


def hash_key(key: str) -> str:
    """How API keys are stored and looked up: hex SHA-256 of the whole key (ADR 0610)."""
    return hashlib.sha256(key.encode()).hexdigest()


class KeyRoles(Protocol):
    """Where the role of a key is found."""

    async def role(self, key_hash: str) -> str | None:
        """The role of the key with this hash, or None when it is unknown or revoked."""
        ...


class PgKeyRoles:
    """Roles read from the ``api_keys`` table (created and migrated by the api service)."""

    def __init__(self, engine: AsyncEngine, *, owned: bool = False) -> None:
        self.engine = engine
        self.owned = owned  # built here (from a URL): disposed by close()

    @classmethod
    def from_url(cls, url: str) -> PgKeyRoles:
        from .db import make_engine

        return cls(make_engine(url, pool_size=1), owned=True)

    async def role(self, key_hash: str) -> str | None:
        async with self.engine.connect() as conn:
            row = (
                await conn.execute(
                    text("select role from api_keys where key_hash = :h and revoked is false"),
                    {"h": key_hash},
                )
            ).first()
        return str(row[0]) if row else None

    async def close(self) -> None:
        if self.owned:
            await self.engine.dispose()


class OperatorAuth:
    """A FastAPI dependency (``Depends(guard)``) that admits operator keys only."""

    def __init__(
        self,
        roles: KeyRoles | None,
        *,
        ttl_s: float = CACHE_TTL_S,
        clock: Callable[[], float] = time.monotonic,
        unconfigured: str = "operator endpoints are off: no key store is configured",
    ) -> None:
        self.roles = roles
        self.ttl_s = ttl_s
        self.clock = clock
        self.unconfigured = unconfigured
        self._cache: dict[str, tuple[float, str | None]] = {}  # key hash -> (expires, role)

    @classmethod
    def from_settings(cls, settings: Any, service: str) -> OperatorAuth:
        """From a service's settings: ``auth_database_url``, else its ``database_url``."""
        url = getattr(settings, "auth_database_url", None) or getattr(
            settings, "database_url", None
        )
        if not url:
            var = "IMAGEGEN_" + service.upper().replace("-", "_") + "_AUTH_DATABASE_URL"
            return cls(None, unconfigured=f"operator endpoints are off: set {var}")
        return cls(PgKeyRoles.from_url(url))

    async def role_of(self, key: str) -> str | None:
        """The key's role (cached for ``ttl_s``), None when unknown or revoked."""
        assert self.roles is not None
        h = hash_key(key)
        now = self.clock()
        hit = self._cache.get(h)
        if hit is not None and hit[0] > now:
            return hit[1]
        role = await self.roles.role(h)  # raises when the database cannot answer: not cached
        if len(self._cache) >= CACHE_MAX:
            self._cache.clear()
        self._cache[h] = (now + self.ttl_s, role)
        return role

    async def __call__(self, authorization: Annotated[str | None, Header()] = None) -> None:
        if self.roles is None:
            raise HTTPException(503, self.unconfigured)
        if not authorization or not authorization.startswith("Bearer "):
            raise HTTPException(
                401,
                "operator endpoint: send 'Authorization: Bearer <operator key>'",
                headers=BEARER,
            )
        key = authorization.removeprefix("Bearer ").strip()
        try:
            role = await self.role_of(key)
        except Exception as exc:
            raise HTTPException(503, f"could not check the API key: {type(exc).__name__}") from None
        if role is None:
            raise HTTPException(401, "unknown or revoked API key", headers=BEARER)
        if role != OPERATOR:
            raise HTTPException(
                403, f"operator endpoint: this API key has role '{role}', not 'operator'"
            )

    async def close(self) -> None:
        close = getattr(self.roles, "close", None)
        if close is not None:
            await close()


def mount_operator_docs(app: FastAPI, guard: OperatorAuth) -> None:
    """``/openapi.json``, ``/docs`` and ``/redoc`` behind ``guard``.

    Build ``app`` with ``docs_url=None, redoc_url=None, openapi_url=None``. The two HTML pages
    carry the schema inline: a browser's script could not send the operator key to fetch it.
    """
    from fastapi import Depends

    guarded = [Depends(guard)]
    title = html.escape(app.title)

    @app.get("/openapi.json", include_in_schema=False, dependencies=guarded)
    async def openapi() -> JSONResponse:
        return JSONResponse(app.openapi())

    @app.get("/docs", include_in_schema=False, dependencies=guarded)
    async def swagger() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url="/openapi.json",
            title=f"{app.title} - Swagger UI",
            swagger_ui_parameters={"spec": app.openapi()},
        )

    @app.get("/redoc", include_in_schema=False, dependencies=guarded)
    async def redoc() -> HTMLResponse:
        spec = json.dumps(app.openapi()).replace("</", "<\\/")
        return HTMLResponse(
            f"<!DOCTYPE html><html><head><title>{title} - ReDoc</title>"
            '<meta charset="utf-8"/></head><body><div id="redoc"></div>'
            '<script src="https://cdn.jsdelivr.net/npm/redoc@2/bundles/redoc.standalone.js">'
            "</script><script>Redoc.init("
            f'{spec}, {{}}, document.getElementById("redoc"));</script></body></html>'
        )

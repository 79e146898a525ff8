"""The public HTTP API (FastAPI), one module per resource.

- ``generations``: submit, read, cancel (``/v1/generations``);
- ``events``: the job's Server-Sent Events stream (``/v1/generations/{id}/events``);
- ``openai``: the OpenAI-compatible Images endpoint (``/v1/images/generations``);
- ``models``: the registered models, OpenAI-compatible (``/v1/models``);
- ``files``: control image uploads, OpenAI-style (``/v1/files``);
- ``deps``: what the routes depend on, as typed aliases (``DepsDep``, ``CallerDep``, ...);
- ``bodies``: the request bodies and the edge rules for every field (ADR 0601);
- ``errors``: 422 naming the field, 503 naming the dependency that is down;
- ``ops``: the operator page (``/ops``, ADR 0820), mounted by bootstrap with ``ops.mount``.

``mount(app, deps)`` adds every route to an app; bootstrap and the tests both use it.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from fastapi import FastAPI

from . import errors, events, files, generations, models, openai
from .deps import RATELIMIT_STATE, Deps

__all__ = ["Deps", "mount"]


def mount(app: FastAPI, deps: Deps) -> None:
    """Serve the API on ``app`` with ``deps`` (read by the routes from ``app.state``)."""
    app.state.deps = replace(
        deps,
        accounts=errors.guarded(deps.accounts, errors.POSTGRESQL),
        jobs=errors.guarded(deps.jobs, errors.POSTGRESQL),
        publisher=errors.guarded(deps.publisher, errors.KAFKA),
        # the limits live in PostgreSQL too: an outage is a 503 naming it, not a 500
        limiter=None if deps.limiter is None else errors.guarded(deps.limiter, errors.POSTGRESQL),
    )
    errors.install(app)
    app.add_middleware(RateLimitHeaders)
    app.include_router(generations.router)
    app.include_router(events.router)
    app.include_router(openai.router)
    app.include_router(models.router)
    app.include_router(files.router)


class RateLimitHeaders:
    """Adds the caller's ``RateLimit-*`` headers (set by ``deps.limited_caller``) to the answer,
    whatever it is: the route's, a 4xx, a 429 (pure ASGI: no copy of the body)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def sending(message: Any) -> None:
            if message["type"] == "http.response.start":
                found = scope.get("state", {}).get(RATELIMIT_STATE)
                if found:
                    extra = [(k.lower().encode(), v.encode()) for k, v in found.items()]
                    message["headers"] = [*message.get("headers", ()), *extra]
            await send(message)

        await self.app(scope, receive, sending)

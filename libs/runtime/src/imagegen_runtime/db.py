"""PostgreSQL access (SQLAlchemy 2 async + asyncpg)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from .tracing import instrument_engine

R = TypeVar("R")


def make_engine(
    url: str,
    pool_size: int = 5,
    *,
    async_commit: bool = False,
    pre_ping: bool = True,
    autocommit: bool = False,
) -> AsyncEngine:
    """An async engine; nothing connects until first use.

    ``pre_ping``: every checkout of a pooled connection first checks it (SQLAlchemy's
    "pessimistic" disconnect handling), so work after a database restart never meets a dead
    connection. With the asyncpg dialect the check is three round trips (begin, ``;``,
    rollback). ``pre_ping=False`` is for an engine on a hot path whose every use goes through
    :func:`retry_if_disconnected` ("optimistic" handling: the first use of a dead connection
    fails, the pool drops its connections, the work runs once more on a new one).

    ``async_commit``: its sessions run with ``synchronous_commit = off`` (a commit returns before
    its WAL is flushed; a database crash may forget the last few hundred milliseconds of them,
    a process crash nothing). Only for state that is cheap to lose (ADR 0640).

    ``autocommit``: every statement is its own transaction, with no ``begin`` and ``commit``
    round trips around it (the asyncpg dialect sends each as a statement). Only for an engine
    whose every use is one statement, or statements that need no common transaction.

    Its statements are traced as client spans inside traced work (a request, a consumed record;
    ADR 0800); a query run by no traced work (a readiness ping) starts no trace.
    """
    options: dict[str, Any] = {"pool_size": pool_size, "pool_pre_ping": pre_ping}
    if async_commit:
        options["connect_args"] = {"server_settings": {"synchronous_commit": "off"}}
    if autocommit:
        options["isolation_level"] = "AUTOCOMMIT"
    engine = create_async_engine(url, **options)
    instrument_engine(engine)
    return engine


async def ping(engine: AsyncEngine) -> bool:
    """True when a round trip to the database succeeds."""
    async with engine.connect() as conn:
        return (await conn.execute(text("select 1"))).scalar() == 1


async def retry_if_disconnected(work: Callable[[bool], Awaitable[R]]) -> R:
    """``work(False)``, then ``work(True)`` once when the first run failed on a connection the
    database had dropped (a restart since the connection was pooled): the engine has then
    discarded its pooled connections, so the second run connects afresh. Any other failure, or
    a second one, propagates.

    ``work`` is one transaction. A dropped pooled connection fails at its first statement,
    before anything ran; but a connection lost while the commit was in flight leaves unknown
    whether the first run landed, so ``work(True)`` must give the right answer either way
    (its argument says it is the second run)."""
    try:
        return await work(False)
    except DBAPIError as exc:
        if not exc.connection_invalidated:
            raise
    return await work(True)

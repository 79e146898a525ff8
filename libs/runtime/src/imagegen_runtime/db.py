"""PostgreSQL access (SQLAlchemy 2 async + asyncpg)."""

from __future__ import annotations

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from .tracing import instrument_engine


def make_engine(url: str, pool_size: int = 5, *, async_commit: bool = False) -> AsyncEngine:
    """An async engine; nothing connects until first use.

    ``async_commit``: its sessions run with ``synchronous_commit = off`` (a commit returns before
    its WAL is flushed; a database crash may forget the last few hundred milliseconds of them,
    a process crash nothing). Only for state that is cheap to lose (ADR 0640).

    Its statements are traced as client spans inside traced work (a request, a consumed record;
    ADR 0800); a query run by no traced work (a readiness ping) starts no trace.
    """
    if async_commit:
        engine = create_async_engine(
            url,
            pool_size=pool_size,
            pool_pre_ping=True,
            connect_args={"server_settings": {"synchronous_commit": "off"}},
        )
    else:
        engine = create_async_engine(url, pool_size=pool_size, pool_pre_ping=True)
    instrument_engine(engine)
    return engine


async def ping(engine: AsyncEngine) -> bool:
    """True when a round trip to the database succeeds."""
    async with engine.connect() as conn:
        return (await conn.execute(text("select 1"))).scalar() == 1

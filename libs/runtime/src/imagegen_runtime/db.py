"""PostgreSQL access (SQLAlchemy 2 async + asyncpg)."""

from __future__ import annotations

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine


def make_engine(url: str, pool_size: int = 5) -> AsyncEngine:
    """An async engine; nothing connects until first use."""
    return create_async_engine(url, pool_size=pool_size, pool_pre_ping=True)


async def ping(engine: AsyncEngine) -> bool:
    """True when a round trip to the database succeeds."""
    async with engine.connect() as conn:
        return (await conn.execute(text("select 1"))).scalar() == 1

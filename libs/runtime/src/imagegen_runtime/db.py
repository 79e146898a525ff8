"""PostgreSQL access (SQLAlchemy 2 async + asyncpg)."""

from __future__ import annotations

import asyncio
import time

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine


def make_engine(url: str, pool_size: int = 5) -> AsyncEngine:
    """An async engine; nothing connects until first use."""
    return create_async_engine(url, pool_size=pool_size, pool_pre_ping=True)


async def ping(engine: AsyncEngine) -> bool:
    """True when a round trip to the database succeeds."""
    async with engine.connect() as conn:
        return (await conn.execute(text("select 1"))).scalar() == 1


async def wait_for_db(engine: AsyncEngine, timeout_s: float = 30.0) -> None:
    """Block until the database answers, or raise the last error after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            await ping(engine)
            return
        except Exception:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)

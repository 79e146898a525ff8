"""A database of its own for a test, on the real PostgreSQL the tests use.

async with fresh_database(infra.database_url, "t_keys") as url:
    ...  # url: postgresql+asyncpg://.../t_keys_<8 hex>, empty; dropped afterwards
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from sqlalchemy import text

from imagegen_runtime.db import make_engine


@asynccontextmanager
async def fresh_database(server_url: str, prefix: str) -> AsyncIterator[str]:
    """A new empty database on ``server_url``'s server, named ``<prefix>_<8 hex>``; its URL.
    Dropped on the way out, with any connection still open to it."""
    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    admin = make_engine(server_url, pool_size=1).execution_options(isolation_level="AUTOCOMMIT")
    try:
        async with admin.connect() as conn:
            await conn.execute(text(f"create database {name}"))
        try:
            yield server_url.rsplit("/", 1)[0] + "/" + name
        finally:
            async with admin.connect() as conn:
                await conn.execute(text(f"drop database {name} with (force)"))
    finally:
        await admin.dispose()

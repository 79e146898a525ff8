"""API keys (stored hashed) and idempotency keys, in PostgreSQL."""

from __future__ import annotations

import asyncio
import hashlib
import secrets
import time
from datetime import UTC, datetime

from sqlalchemy import delete, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncEngine

from imagegen_schemas import Plan

from ..domain.plans import Caller
from .tables import api_keys, idempotency, metadata


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def new_key() -> str:
    """A fresh API key (printed once; only its hash is stored)."""
    return "igk_" + secrets.token_urlsafe(24)


class PgAccounts:
    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    async def create_tables(self) -> None:
        async with self.engine.begin() as conn:
            await conn.run_sync(metadata.create_all)

    async def create_key(self, user_id: str, plan: Plan) -> str:
        """A new API key for ``user_id``; only its hash is stored, so print it now."""
        key = new_key()
        async with self.engine.begin() as conn:
            await conn.execute(
                api_keys.insert().values(
                    key_hash=hash_key(key),
                    user_id=user_id,
                    plan=plan.value,
                    created_at=datetime.now(UTC),
                    revoked=False,
                )
            )
        return key

    async def caller(self, key: str) -> Caller | None:
        async with self.engine.connect() as conn:
            row = (
                await conn.execute(
                    select(api_keys.c.user_id, api_keys.c.plan).where(
                        api_keys.c.key_hash == hash_key(key), api_keys.c.revoked.is_(False)
                    )
                )
            ).first()
        return Caller(row.user_id, Plan(row.plan)) if row else None

    async def claim(
        self, user_id: str, key: str, job_id: str, request_hash: str
    ) -> tuple[bool, str, str]:
        """Claim an idempotency key. Returns (won, job_id, request_hash of the holder)."""
        async with self.engine.begin() as conn:
            won = (
                await conn.execute(
                    pg_insert(idempotency)
                    .values(
                        user_id=user_id,
                        key=key,
                        job_id=job_id,
                        request_hash=request_hash,
                        published=False,
                        created_at=datetime.now(UTC),
                    )
                    .on_conflict_do_nothing()
                    .returning(idempotency.c.job_id)
                )
            ).first()
            if won is not None:
                return True, job_id, request_hash
            row = (
                await conn.execute(
                    select(idempotency.c.job_id, idempotency.c.request_hash).where(
                        idempotency.c.user_id == user_id, idempotency.c.key == key
                    )
                )
            ).first()
        if row is None:  # the holder gave up between our insert and select: try again
            return await self.claim(user_id, key, job_id, request_hash)
        return False, row.job_id, row.request_hash

    async def mark_published(self, user_id: str, key: str) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(
                update(idempotency)
                .where(idempotency.c.user_id == user_id, idempotency.c.key == key)
                .values(published=True)
            )

    async def release(self, user_id: str, key: str) -> None:
        """The holder could not publish: free the key so a retry can succeed."""
        async with self.engine.begin() as conn:
            await conn.execute(
                delete(idempotency).where(
                    idempotency.c.user_id == user_id, idempotency.c.key == key
                )
            )

    async def wait_published(self, user_id: str, key: str, timeout_s: float = 30.0) -> bool | None:
        """Wait for the holder of a key to publish: True published, None released, False timeout."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            async with self.engine.connect() as conn:
                row = (
                    await conn.execute(
                        select(idempotency.c.published).where(
                            idempotency.c.user_id == user_id, idempotency.c.key == key
                        )
                    )
                ).first()
            if row is None:
                return None
            if row.published:
                return True
            await asyncio.sleep(0.02)  # between polls of the holder's row
        return False

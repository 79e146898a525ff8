"""API keys (stored hashed) and idempotency keys (ADR 0600), in PostgreSQL."""

from __future__ import annotations

import hashlib
import secrets
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import delete, select, text, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncEngine

from imagegen_schemas import Plan

from ..domain.idempotency import Claim, HeldKey, take_over
from ..domain.plans import Caller
from .tables import IDEMPOTENCY_MIGRATION, api_keys, idempotency, metadata


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
            await conn.execute(text(IDEMPOTENCY_MIGRATION))

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

    async def claim(self, user_id: str, key: str, proposal: HeldKey) -> Claim:
        where = (idempotency.c.user_id == user_id, idempotency.c.key == key)
        while True:
            async with self.engine.begin() as conn:
                inserted = (
                    await conn.execute(
                        pg_insert(idempotency)
                        .values(user_id=user_id, key=key, **_row(proposal))
                        .on_conflict_do_nothing()
                        .returning(idempotency.c.key)
                    )
                ).first()
                if inserted is not None:
                    return Claim(True, proposal)
                row = (
                    await conn.execute(select(idempotency).where(*where).with_for_update())
                ).first()
                if row is None:  # released between our insert and select: try again
                    continue
                held = _held(row)
                taken = take_over(held, proposal)
                if taken is None:
                    return Claim(False, held)
                await conn.execute(update(idempotency).where(*where).values(**_row(taken)))
                return Claim(True, taken)

    async def mark_published(self, user_id: str, key: str, job_id: str) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(
                update(idempotency)
                .where(
                    idempotency.c.user_id == user_id,
                    idempotency.c.key == key,
                    idempotency.c.job_id == job_id,
                )
                .values(published=True)
            )

    async def release(self, user_id: str, key: str, claimed_at: datetime) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(
                delete(idempotency).where(
                    idempotency.c.user_id == user_id,
                    idempotency.c.key == key,
                    idempotency.c.claimed_at == claimed_at,
                    idempotency.c.published.is_(False),
                )
            )


def _row(held: HeldKey) -> dict[str, Any]:
    return {
        "job_id": held.answer["id"],
        "request_hash": held.request_hash,
        "published": held.published,
        "created_at": held.created_at,
        "answer": held.answer,
        "claimed_at": held.claimed_at,
    }


def _held(row: Any) -> HeldKey:
    if row.answer is None:  # kept from before ADR 0600 (no answer): read as long expired
        never = datetime.min.replace(tzinfo=UTC)
        return HeldKey(row.request_hash, {"id": row.job_id}, row.published, never, never)
    return HeldKey(
        row.request_hash, dict(row.answer), row.published, row.created_at, row.claimed_at
    )

"""API keys (stored hashed, ADR 0610) and idempotency keys (ADR 0600), in PostgreSQL."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import delete, select, text, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from imagegen_runtime.operator_auth import ROLES, hash_key
from imagegen_schemas import Plan

from ..domain.idempotency import Claim, HeldKey, take_over
from ..domain.plans import Caller
from .tables import API_KEYS_MIGRATION, IDEMPOTENCY_MIGRATION, api_keys, idempotency, metadata

__all__ = ["KeyInfo", "KeyRevokedError", "PgAccounts", "hash_key", "key_id_of", "new_key"]

KEY_ID_CHARS = 12  # "igk_" + 8 random characters: shown in clear, names the key


def new_key() -> str:
    """A fresh API key (printed once; only its hash is stored): ``igk_`` and 40 url-safe
    characters (240 random bits; the 8 in the public id leave 192 secret bits, ADR 0610)."""
    return "igk_" + secrets.token_urlsafe(30)


def key_id_of(key: str) -> str:
    """The public id of a key made by :func:`new_key` (its first 12 characters)."""
    return key[:KEY_ID_CHARS]


@dataclass(frozen=True)
class KeyInfo:
    """What may be shown about a key: never the key itself nor its hash."""

    key_id: str
    user_id: str
    plan: str
    role: str
    created_at: datetime
    revoked: bool
    revoked_at: datetime | None


class KeyRevokedError(Exception):
    """Rotate was asked for a key that is already revoked."""


_INFO = (
    api_keys.c.key_id,
    api_keys.c.user_id,
    api_keys.c.plan,
    api_keys.c.role,
    api_keys.c.created_at,
    api_keys.c.revoked,
    api_keys.c.revoked_at,
)


def _info(row: Any) -> KeyInfo:
    return KeyInfo(
        row.key_id,
        row.user_id,
        row.plan,
        row.role,
        row.created_at,
        row.revoked,
        row.revoked_at,
    )


def _check(user_id: str, role: str) -> None:
    if not 1 <= len(user_id) <= 128:
        raise ValueError(f"user: 1 to 128 characters, got {len(user_id)}")
    if role not in ROLES:
        raise ValueError(f"role: one of {', '.join(ROLES)}, got {role!r}")


class PgAccounts:
    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    async def create_tables(self) -> None:
        async with self.engine.begin() as conn:
            await conn.run_sync(metadata.create_all)
            await conn.execute(text(IDEMPOTENCY_MIGRATION))
            for statement in API_KEYS_MIGRATION:
                await conn.execute(text(statement))

    async def create_key(self, user_id: str, plan: Plan, role: str = "user") -> str:
        """A new API key for ``user_id``; only its hash is stored, so print it now."""
        _check(user_id, role)
        for _ in range(3):  # a public id already taken (48 random bits): draw again
            try:
                async with self.engine.begin() as conn:
                    return await self._insert(conn, user_id, plan.value, role)
            except IntegrityError:
                continue
        raise RuntimeError("could not draw an unused key id in 3 tries")

    async def _insert(self, conn: AsyncConnection, user_id: str, plan: str, role: str) -> str:
        key = new_key()
        await conn.execute(
            api_keys.insert().values(
                key_hash=hash_key(key),
                key_id=key_id_of(key),
                user_id=user_id,
                plan=plan,
                role=role,
                created_at=datetime.now(UTC),
                revoked=False,
            )
        )
        return key

    async def keys(self, user_id: str | None = None) -> list[KeyInfo]:
        """Every key (of ``user_id``, when given), oldest first."""
        query = select(*_INFO).order_by(api_keys.c.created_at, api_keys.c.key_id)
        if user_id is not None:
            query = query.where(api_keys.c.user_id == user_id)
        async with self.engine.connect() as conn:
            return [_info(row) for row in await conn.execute(query)]

    async def revoke(self, key_id: str) -> tuple[KeyInfo, bool] | None:
        """Revoke the key; None when no key has this id, else (the key now, whether this call
        revoked it: False when it already was)."""
        async with self.engine.begin() as conn:
            row = (
                await conn.execute(
                    select(*_INFO).where(api_keys.c.key_id == key_id).with_for_update()
                )
            ).first()
            if row is None:
                return None
            if row.revoked:
                return _info(row), False
            done = (
                await conn.execute(
                    update(api_keys)
                    .where(api_keys.c.key_id == key_id)
                    .values(revoked=True, revoked_at=datetime.now(UTC))
                    .returning(*_INFO)
                )
            ).one()
            return _info(done), True

    async def rotate(self, key_id: str) -> tuple[str, KeyInfo] | None:
        """A new key for the same user, plan and role, and the old one revoked, in one
        transaction; None when no key has this id. Raises KeyRevokedError for a revoked key."""
        for _ in range(3):
            try:
                async with self.engine.begin() as conn:
                    row = (
                        await conn.execute(
                            select(*_INFO).where(api_keys.c.key_id == key_id).with_for_update()
                        )
                    ).first()
                    if row is None:
                        return None
                    if row.revoked:
                        raise KeyRevokedError(f"key {key_id} is already revoked")
                    key = await self._insert(conn, row.user_id, row.plan, row.role)
                    await conn.execute(
                        update(api_keys)
                        .where(api_keys.c.key_id == key_id)
                        .values(revoked=True, revoked_at=datetime.now(UTC))
                    )
                    return key, _info(row)
            except IntegrityError:
                continue
        raise RuntimeError("could not draw an unused key id in 3 tries")

    async def caller(self, key: str) -> Caller | None:
        async with self.engine.connect() as conn:
            row = (
                await conn.execute(
                    select(api_keys.c.user_id, api_keys.c.plan, api_keys.c.role).where(
                        api_keys.c.key_hash == hash_key(key), api_keys.c.revoked.is_(False)
                    )
                )
            ).first()
        return Caller(row.user_id, Plan(row.plan), row.role) if row else None

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

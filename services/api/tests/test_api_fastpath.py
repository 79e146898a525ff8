"""The admission fast path on the real PostgreSQL (ADR 0640): concurrent claims of one key, one
winner; claims and marks group-committed; key lookups cached for the TTL only."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest

from imagegen_api.adapters.accounts import PgAccounts
from imagegen_api.adapters.fastpath import FastAccounts
from imagegen_api.domain.idempotency import HeldKey
from imagegen_runtime.db import make_engine
from imagegen_schemas import Plan

pytestmark = pytest.mark.integration


@pytest.fixture
async def fast(infra) -> AsyncIterator[FastAccounts]:  # type: ignore[no-untyped-def]
    engine = make_engine(infra.database_url, pool_size=5)
    pg = PgAccounts(engine)
    await pg.create_tables()
    yield FastAccounts(pg, engine, ttl_s=60.0)
    await engine.dispose()


def proposal(job_id: str, digest: str = "h1") -> HeldKey:
    now = datetime.now(UTC)
    return HeldKey(digest, {"id": job_id, "seed": 7}, False, now, now)


async def test_concurrent_claims_of_one_key_have_one_winner(fast: FastAccounts) -> None:
    user, key = f"u-{uuid.uuid4().hex[:8]}", "same-key"
    claims = await asyncio.gather(*(fast.claim(user, key, proposal(f"j{i}")) for i in range(20)))
    winners = [c for c in claims if c.won]
    assert len(winners) == 1
    assert {c.held.answer["id"] for c in claims} == {winners[0].held.answer["id"]}


async def test_many_keys_go_in_few_transactions_and_marks_are_seen(fast: FastAccounts) -> None:
    user = f"u-{uuid.uuid4().hex[:8]}"
    before = fast._claims.flushes
    claims = await asyncio.gather(
        *(fast.claim(user, f"k{i}", proposal(f"j{i}")) for i in range(50))
    )
    assert all(c.won for c in claims)
    assert fast._claims.flushes - before < 50  # group-committed
    await asyncio.gather(*(fast.mark_published(user, f"k{i}", f"j{i}") for i in range(50)))
    again = await fast.claim(user, "k7", proposal("other"))
    assert not again.won and again.held.published and again.held.answer["id"] == "j7"


async def test_a_revoked_key_is_served_from_cache_until_the_ttl(fast: FastAccounts) -> None:
    user = f"u-{uuid.uuid4().hex[:8]}"
    key = await fast.inner.create_key(user, Plan.FREE)
    assert (await fast.caller(key)) is not None
    async with fast.engine.begin() as conn:
        from sqlalchemy import text

        await conn.execute(
            text("update api_keys set revoked = true where user_id = :u"), {"u": user}
        )
    assert (await fast.caller(key)) is not None  # cached: within ttl_s
    fast.ttl_s = 0.0
    fast._callers.clear()
    assert (await fast.caller(key)) is None

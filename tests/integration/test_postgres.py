"""Against the real local PostgreSQL: the projection pattern (effect + processed event, atomic)."""

from __future__ import annotations

import uuid

import pytest
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError

from imagegen_runtime.db import make_engine, ping

pytestmark = pytest.mark.integration


async def test_connects_and_answers(infra) -> None:
    engine = make_engine(infra.database_url)
    assert await ping(engine)
    async with engine.connect() as conn:
        version = (await conn.execute(text("show server_version_num"))).scalar()
    assert int(version) >= 150000
    await engine.dispose()


async def test_effect_and_processed_record_commit_or_roll_back_together(infra) -> None:
    engine = make_engine(infra.database_url)
    schema = f"t_{uuid.uuid4().hex[:8]}"
    async with engine.begin() as conn:
        await conn.execute(text(f"create schema {schema}"))
        await conn.execute(text(f"create table {schema}.jobs (id text primary key, n int)"))
        await conn.execute(text(f"create table {schema}.processed (event_id text primary key)"))

    async def apply(event_id: str, job: str) -> None:
        async with engine.begin() as conn:
            await conn.execute(text(f"insert into {schema}.processed values (:e)"), {"e": event_id})
            await conn.execute(
                text(
                    f"insert into {schema}.jobs values (:j, 1) on conflict (id) "
                    f"do update set n = {schema}.jobs.n + 1"
                ),
                {"j": job},
            )

    await apply("e1", "job-a")
    with pytest.raises(IntegrityError):  # redelivery of e1: the whole transaction is refused
        await apply("e1", "job-a")
    await apply("e2", "job-a")
    async with engine.connect() as conn:
        n = (await conn.execute(text(f"select n from {schema}.jobs where id='job-a'"))).scalar()
        await conn.execute(text(f"drop schema {schema} cascade"))
        await conn.commit()
    assert n == 2, "a redelivered event applied its effect twice"
    await engine.dispose()

"""The admission path's engines skip SQLAlchemy's per-checkout ping (ADR 0641): a pooled
connection the database dropped (a restart, a terminated backend) must cost a second run of
the batch, never an answer. On the real PostgreSQL of ``make infra-up``.

Each test first shows the failure it guards against: with no retry, the first use of the
dropped connection raises.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine

from imagegen_api.adapters import fastpath, limiter
from imagegen_api.adapters.accounts import PgAccounts
from imagegen_api.adapters.fastpath import FastAccounts
from imagegen_api.adapters.jobstore import PgJobStore
from imagegen_api.adapters.limiter import PgLimiter
from imagegen_api.domain.idempotency import HeldKey
from imagegen_api.domain.limits import IMAGES, JobRequest, Limits
from imagegen_runtime.db import make_engine

pytestmark = pytest.mark.integration
R = TypeVar("R")
LIMITS = Limits(60, burst=5, active_jobs=3, images_per_day=10)


@dataclass
class Engines:
    """Ping-less engines as the API's admission path has them (the limiter's runs
    transactions, the claims' and marks' autocommit), and an ordinary one to kill with."""

    tx: AsyncEngine
    auto: AsyncEngine
    admin: AsyncEngine


@pytest.fixture
async def engines(infra: Any) -> AsyncIterator[Engines]:
    url = infra.database_url
    made = Engines(
        make_engine(url, pool_size=1, pre_ping=False),
        make_engine(url, pool_size=1, pre_ping=False, autocommit=True),
        make_engine(url, pool_size=1),
    )
    yield made
    for engine in (made.tx, made.auto, made.admin):
        await engine.dispose()


async def drop_pooled_connection(hot: AsyncEngine, admin: AsyncEngine) -> None:
    """Pool one connection of ``hot``, then end its server process."""
    async with hot.connect() as conn:
        pid = (await conn.execute(text("select pg_backend_pid()"))).scalar()
    async with admin.connect() as conn:
        assert (await conn.execute(text("select pg_terminate_backend(:p)"), {"p": pid})).scalar()


@pytest.mark.parametrize("kind", ["tx", "auto"])
async def test_without_a_ping_the_first_use_of_a_dropped_connection_fails(
    engines: Engines, kind: str
) -> None:
    hot = getattr(engines, kind)
    await drop_pooled_connection(hot, engines.admin)
    with pytest.raises(DBAPIError) as failed:
        async with hot.begin() as conn:
            await conn.execute(text("select 1"))
    assert failed.value.connection_invalidated
    async with hot.begin() as conn:  # the pool dropped it: the next use connects afresh
        assert (await conn.execute(text("select 1"))).scalar() == 1


def proposal(job_id: str) -> HeldKey:
    now = datetime.now(UTC)
    return HeldKey("h", {"id": job_id, "seed": 7}, False, now, now)


@pytest.fixture
async def accounts(engines: Engines) -> AsyncIterator[FastAccounts]:
    pg = PgAccounts(engines.admin)
    await pg.create_tables()
    yield FastAccounts(pg, engines.auto, marks_engine=engines.auto)


async def test_a_claim_and_its_mark_on_a_dropped_connection_still_win(
    engines: Engines, accounts: FastAccounts
) -> None:
    hot, admin = engines.auto, engines.admin
    user = f"u-{uuid.uuid4().hex[:8]}"
    await drop_pooled_connection(hot, admin)
    claim = await accounts.claim(user, "k1", proposal("j1"))
    assert claim.won
    await drop_pooled_connection(hot, admin)
    await accounts.mark_published(user, "k1", "j1")
    await accounts._settled(user, "k1")
    again = await accounts.claim(user, "k1", proposal("other"))
    assert not again.won and again.held.published and again.held.answer["id"] == "j1"


async def run_twice(work: Callable[[bool], Awaitable[R]]) -> R:
    """As if the first run's commit landed and its answer was lost with the connection."""
    await work(False)
    return await work(True)


async def test_a_second_run_after_a_landed_commit_still_wins_the_claim(
    accounts: FastAccounts, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(fastpath, "retry_if_disconnected", run_twice)
    user = f"u-{uuid.uuid4().hex[:8]}"
    claim = await accounts.claim(user, "k1", proposal("j1"))
    assert claim.won and claim.held.answer["id"] == "j1"
    other = await accounts.claim(user, "k1", proposal("j2"))  # someone else's is not ours
    assert not other.won and other.held.answer["id"] == "j1"


@pytest.fixture
async def pg_limiter(engines: Engines) -> AsyncIterator[PgLimiter]:
    jobs = PgJobStore(engines.admin, prefix=f"t{uuid.uuid4().hex[:8]}_")
    await jobs.create()
    subject = PgLimiter(engines.tx, jobs.jobs.name)
    await subject.create_tables()
    yield subject
    await jobs.drop()


async def test_admission_and_release_on_a_dropped_connection_still_count(
    engines: Engines, pg_limiter: PgLimiter
) -> None:
    hot, admin = engines.tx, engines.admin
    user, now = f"u-{uuid.uuid4().hex[:8]}", datetime.now(UTC)
    await drop_pooled_connection(hot, admin)
    assert (await pg_limiter.take(user, LIMITS, now)).granted == 1
    await drop_pooled_connection(hot, admin)
    assert await pg_limiter.admit(JobRequest(user, "j1", 4, LIMITS), now) is None
    await drop_pooled_connection(hot, admin)
    await pg_limiter.release(user, "j1")
    assert await pg_limiter.admit(JobRequest(user, "j2", 10, LIMITS), now) is None  # all 10 back


async def test_a_second_admission_run_after_a_landed_commit_counts_the_job_once(
    pg_limiter: PgLimiter, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(limiter, "retry_if_disconnected", run_twice)
    user, now = f"u-{uuid.uuid4().hex[:8]}", datetime.now(UTC)
    assert await pg_limiter.admit(JobRequest(user, "j1", 4, LIMITS), now) is None
    # counted once: 6 of the day's 10 images are left, and 2 of the 3 active slots
    assert await pg_limiter.admit(JobRequest(user, "j2", 6, LIMITS), now) is None
    refusal = await pg_limiter.admit(JobRequest(user, "j3", 1, LIMITS), now)
    assert refusal is not None and refusal.limit == IMAGES

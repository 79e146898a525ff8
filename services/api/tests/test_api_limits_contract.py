"""The limiter's contract: the PostgreSQL adapter and the in-memory fake decide alike (ADR 0640).

The PostgreSQL runs are integration tests (the real database of ``make infra-up``); they also
show that two API instances (two engines, two limiters) share one bucket and one quota.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from imagegen_api.adapters.jobstore import PgJobStore
from imagegen_api.adapters.limiter import STALE_AFTER, InMemoryLimiter, PgLimiter
from imagegen_api.domain.limits import ACTIVE, IMAGES, JobRequest, Limits
from imagegen_runtime.db import make_engine

LIMITS = Limits(60, burst=5, active_jobs=3, images_per_day=10)
T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


@dataclass
class Subject:
    limiter: Any  # PgLimiter | InMemoryLimiter
    end: Callable[[str, str], Any]  # (job_id, status): the projection shows the job so
    second: Any | None = None  # another instance over the same state (PostgreSQL only)


@pytest.fixture(params=["memory", pytest.param("postgres", marks=pytest.mark.integration)])
async def subject(request: pytest.FixtureRequest) -> AsyncIterator[Subject]:
    if request.param == "memory":
        statuses: dict[str, str] = {}

        async def end_memory(job_id: str, status: str) -> None:
            statuses[job_id] = status

        yield Subject(InMemoryLimiter(statuses.get), end_memory)
        return
    infra = request.getfixturevalue("infra")
    engines = [make_engine(infra.database_url, pool_size=5) for _ in range(2)]
    jobs = PgJobStore(engines[0], prefix=f"t{uuid.uuid4().hex[:8]}_")
    await jobs.create()
    first, second = (PgLimiter(e, jobs.jobs.name) for e in engines)
    await first.create_tables()

    async def end_pg(job_id: str, status: str) -> None:
        async with engines[0].begin() as conn:
            await conn.execute(
                jobs.jobs.insert().values(
                    job_id=job_id, user_id="x", tier="relax", status=status, state={}
                )
            )

    yield Subject(first, end_pg, second)
    await jobs.drop()
    for e in engines:
        await e.dispose()


def user() -> str:
    return f"u-{uuid.uuid4().hex[:10]}"


def job(u: str, images: int = 1) -> JobRequest:
    return JobRequest(u, f"j-{uuid.uuid4().hex}", images, LIMITS)


async def test_a_new_bucket_is_full_and_refuses_once_empty(subject: Subject) -> None:
    u = user()
    takes = [await subject.limiter.take(u, LIMITS, T0) for _ in range(LIMITS.burst + 1)]
    assert [t.allowed for t in takes] == [True] * LIMITS.burst + [False]
    assert [t.remaining for t in takes[:3]] == [4, 3, 2]
    assert takes[-1].retry_after_s == 1  # one token per second at 60 per minute


async def test_the_bucket_refills_with_time(subject: Subject) -> None:
    u = user()
    for _ in range(LIMITS.burst):
        assert (await subject.limiter.take(u, LIMITS, T0)).allowed
    assert not (await subject.limiter.take(u, LIMITS, T0)).allowed
    later = await subject.limiter.take(u, LIMITS, T0 + timedelta(seconds=2))
    assert later.allowed and later.remaining == 1


async def test_concurrent_requests_never_share_a_token(subject: Subject) -> None:
    u = user()
    limiters = [subject.limiter, subject.second or subject.limiter]
    takes = await asyncio.gather(
        *(limiters[i % 2].take(u, LIMITS, T0) for i in range(4 * LIMITS.burst))
    )
    assert sum(t.allowed for t in takes) == LIMITS.burst


async def test_active_jobs_are_capped_until_one_ends(subject: Subject) -> None:
    u = user()
    jobs = [job(u) for _ in range(LIMITS.active_jobs)]
    assert [await subject.limiter.admit(j, T0) for j in jobs] == [None] * LIMITS.active_jobs
    refused = await subject.limiter.admit(job(u), T0)
    assert refused is not None and refused.limit == ACTIVE
    assert (refused.allowed, refused.current) == (LIMITS.active_jobs, LIMITS.active_jobs)
    assert refused.retry_after_s > 0
    await subject.end(jobs[0].job_id, "delivered")
    assert await subject.limiter.admit(job(u), T0) is None
    # another user is not affected
    assert await subject.limiter.admit(job(user()), T0) is None


async def test_a_running_job_still_counts(subject: Subject) -> None:
    u = user()
    first = job(u)
    await subject.limiter.admit(first, T0)
    await subject.end(first.job_id, "running")
    for _ in range(LIMITS.active_jobs - 1):
        assert await subject.limiter.admit(job(u), T0) is None
    assert (await subject.limiter.admit(job(u), T0)) is not None


async def test_concurrent_admissions_on_two_instances_share_the_cap(subject: Subject) -> None:
    u = user()
    limiters = [subject.limiter, subject.second or subject.limiter]
    results = await asyncio.gather(*(limiters[i % 2].admit(job(u), T0) for i in range(12)))
    assert sum(r is None for r in results) == LIMITS.active_jobs


async def test_images_per_day_count_until_midnight_utc(subject: Subject) -> None:
    u = user()
    for _ in range(2):
        j = job(u, images=4)
        assert await subject.limiter.admit(j, T0) is None
        await subject.end(j.job_id, "delivered")
    refused = await subject.limiter.admit(job(u, images=4), T0)
    assert refused is not None and refused.limit == IMAGES
    assert refused.current == 8 and refused.allowed == 10
    assert refused.retry_after_s == 12 * 3600  # T0 is noon UTC
    assert await subject.limiter.admit(job(u, images=2), T0) is None  # 10 fits exactly
    tomorrow = T0 + timedelta(days=1)
    assert await subject.limiter.admit(job(u, images=4), tomorrow) is None


async def test_release_gives_back_the_slot_and_the_images(subject: Subject) -> None:
    u = user()
    held = [job(u, images=3) for _ in range(3)]
    for j in held:
        assert await subject.limiter.admit(j, T0) is None
    assert await subject.limiter.admit(job(u), T0) is not None
    await subject.limiter.release(u, held[0].job_id)
    assert await subject.limiter.admit(job(u, images=3), T0) is None  # 9 of 10 images again


async def test_an_admission_never_projected_stops_counting_after_a_while(
    subject: Subject,
) -> None:
    u = user()
    for _ in range(LIMITS.active_jobs):
        await subject.limiter.admit(job(u), T0)
    assert await subject.limiter.admit(job(u), T0 + timedelta(seconds=10)) is not None
    late = T0 + STALE_AFTER + timedelta(seconds=1)
    assert await subject.limiter.admit(job(u), late) is None


async def test_leased_tokens_never_exceed_the_shared_bucket(subject: Subject) -> None:
    """With a bucket of 100 an instance takes 10 tokens at a time (a lease); across two
    instances a busy user still gets exactly the bucket, and the headers count down."""
    slow = Limits(0.001, burst=100, active_jobs=3, images_per_day=10)  # no refill meanwhile
    u = user()
    limiters = [subject.limiter, subject.second or subject.limiter]
    first = [await limiters[0].take(u, slow, T0) for _ in range(15)]
    assert all(t.allowed for t in first)
    assert [t.remaining for t in first[:3]] == [99, 98, 97]
    rest = await asyncio.gather(*(limiters[i % 2].take(u, slow, T0) for i in range(200)))
    assert sum(t.allowed for t in rest) == 100 - 15
    assert not (await limiters[0].take(u, slow, T0)).allowed

"""The ports' contract: each test body runs on the in-memory fake and on PostgreSQL.

A fake that fails here is a bug in the fake; the PostgreSQL runs are integration tests (they need
``make infra-up``: the shared local PostgreSQL).
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest

from imagegen_api.adapters.accounts import PgAccounts
from imagegen_api.adapters.fastpath import FastAccounts
from imagegen_api.adapters.jobstore import PgJobStore
from imagegen_api.adapters.memory import InMemoryAccounts, InMemoryJobStore
from imagegen_api.domain.idempotency import CLAIM_LEASE, KEY_TTL, Claim, HeldKey
from imagegen_api.service_layer.ports import Accounts, JobStore
from imagegen_runtime.db import make_engine
from imagegen_schemas import Envelope, GenerationParams, Plan, Tier
from imagegen_schemas import jobs as ev

BACKENDS = [
    pytest.param("memory", marks=pytest.mark.unit),
    pytest.param("postgres", marks=pytest.mark.integration),
]
T0 = datetime(2026, 1, 1, tzinfo=UTC)
ACCOUNTS = [
    *BACKENDS,
    # the admission fast path (ADR 0640): cached lookups, group-committed claims and marks
    pytest.param("postgres-fast", marks=pytest.mark.integration),
]


@pytest.fixture(params=ACCOUNTS)
async def accounts(request: pytest.FixtureRequest) -> AsyncIterator[Accounts]:
    if request.param == "memory":
        yield InMemoryAccounts()
        return
    engine = make_engine(request.getfixturevalue("infra").database_url)
    pg = PgAccounts(engine)
    await pg.create_tables()
    yield FastAccounts(pg, engine, ttl_s=0.0) if request.param == "postgres-fast" else pg
    await engine.dispose()


@pytest.fixture(params=BACKENDS)
async def jobs(request: pytest.FixtureRequest) -> AsyncIterator[JobStore]:
    if request.param == "memory":
        yield InMemoryJobStore()
        return
    engine = make_engine(request.getfixturevalue("infra").database_url)
    pg = PgJobStore(engine, prefix=f"t{uuid.uuid4().hex[:8]}_")
    await pg.create()
    yield pg
    await pg.drop()
    await engine.dispose()


def user() -> str:
    return f"u-{uuid.uuid4().hex[:10]}"  # PostgreSQL's tables are shared: one user per test


def envelope(payload: ev.Payload, at: datetime, event_id: str | None = None) -> Envelope:
    return Envelope.wrap(
        payload,
        correlation_id=payload.job_id,  # type: ignore[attr-defined]
        producer="test",
        event_id=event_id,
        occurred_at=at,
    )


def requested(job_id: str, owner: str = "alice", tier: Tier = Tier.FAST) -> ev.GenerationRequested:
    params = GenerationParams(
        prompt="a red circle", model="m", width=64, height=64, steps=2, guidance_scale=5, seed=1
    )
    return ev.GenerationRequested(
        job_id=job_id, user_id=owner, plan=Plan.PRO, tier=tier, params=params
    )


# ---- accounts -----------------------------------------------------------------------------------
async def test_a_created_key_names_its_caller(accounts: Accounts) -> None:
    who = user()
    key = await accounts.create_key(who, Plan.PRO)
    found = await accounts.caller(key)
    assert found is not None and (found.user_id, found.plan) == (who, Plan.PRO)
    assert await accounts.caller(key + "x") is None


def entry(
    request_hash: str = "h1", job_id: str = "job-1", at: datetime = T0, seed: int = 7
) -> HeldKey:
    return HeldKey(request_hash, {"id": job_id, "seed": seed}, False, at, at)


async def test_the_first_claim_of_a_key_wins_and_later_ones_see_the_holder(
    accounts: Accounts,
) -> None:
    who = user()
    first = entry()
    assert await accounts.claim(who, "k", first) == Claim(True, first)
    assert await accounts.claim(who, "k", entry("h2", "job-2")) == Claim(False, first)
    other = entry(job_id="job-3")
    assert await accounts.claim(user(), "k", other) == Claim(True, other)


async def test_a_published_key_reads_as_published(accounts: Accounts) -> None:
    who = user()
    await accounts.claim(who, "k", entry())
    await accounts.mark_published(who, "k", "job-1")
    later = await accounts.claim(who, "k", entry(job_id="job-2", at=T0 + timedelta(hours=1)))
    assert later.won is False
    assert later.held.published is True and later.held.answer == {"id": "job-1", "seed": 7}


async def test_a_released_key_can_be_claimed_again(accounts: Accounts) -> None:
    who = user()
    await accounts.claim(who, "k", entry())
    await accounts.release(who, "k", T0)
    again = entry("h2", "job-2", T0 + timedelta(seconds=1))
    assert await accounts.claim(who, "k", again) == Claim(True, again)


async def test_release_leaves_a_published_or_taken_over_key(accounts: Accounts) -> None:
    who = user()
    await accounts.claim(who, "k", entry())
    await accounts.mark_published(who, "k", "job-1")
    await accounts.release(who, "k", T0)
    assert (await accounts.claim(who, "k", entry(job_id="job-2"))).held.answer["id"] == "job-1"


async def test_a_key_expires_24_hours_after_its_first_use(accounts: Accounts) -> None:
    who = user()
    await accounts.claim(who, "k", entry())
    await accounts.mark_published(who, "k", "job-1")
    just_before = entry("h2", "job-2", T0 + KEY_TTL - timedelta(seconds=1))
    assert (await accounts.claim(who, "k", just_before)).won is False
    after = entry("h2", "job-3", T0 + KEY_TTL)
    assert await accounts.claim(who, "k", after) == Claim(True, after)


async def test_a_dead_holders_claim_is_taken_over_with_its_answer(accounts: Accounts) -> None:
    who = user()
    await accounts.claim(who, "k", entry())  # never published: the holder died
    soon = T0 + CLAIM_LEASE - timedelta(seconds=1)
    assert (await accounts.claim(who, "k", entry(job_id="job-2", at=soon))).won is False
    late = T0 + CLAIM_LEASE
    other_body = await accounts.claim(who, "k", entry("h2", "job-3", late))
    assert other_body.won is False
    same = await accounts.claim(who, "k", entry(job_id="job-4", at=late, seed=9))
    assert same.won is True
    assert same.held.answer == {"id": "job-1", "seed": 7} and same.held.claimed_at == late
    assert same.held.created_at == T0


# ---- job store ----------------------------------------------------------------------------------
async def test_apply_folds_the_event_into_the_job_and_its_timeline(jobs: JobStore) -> None:
    env = envelope(requested("job-1"), T0)
    assert await jobs.apply(env, requested("job-1"), "t", 0, 0) is True
    job = await jobs.get("job-1")
    assert job is not None
    assert (job.status, job.user_id, job.tier, job.created_at) == (
        "moderating",
        "alice",
        "fast",
        T0,
    )
    assert job.params["prompt"] == "a red circle"
    [row] = await jobs.timeline("job-1")
    assert (row["type"], row["event_id"], row["occurred_at"]) == (env.type, env.event_id, T0)
    assert row["data"]["params"]["prompt"] == "a red circle"
    assert await jobs.get("job-2") is None
    assert await jobs.timeline("job-2") == []


async def test_a_redelivered_event_is_applied_once(jobs: JobStore) -> None:
    env = envelope(requested("job-1"), T0)
    assert await jobs.apply(env, requested("job-1"), "t", 0, 0) is True
    assert await jobs.apply(env, requested("job-1"), "t", 0, 0) is False
    assert len(await jobs.timeline("job-1")) == 1


async def test_the_timeline_is_ordered_and_resumes_after_a_sequence_number(jobs: JobStore) -> None:
    payloads: list[ev.Payload] = [
        requested("job-1"),
        ev.PromptModerated(job_id="job-1", verdict=ev.Verdict.ALLOWED),
        ev.JobScheduled(job_id="job-1", worker_id="w1", attempt=1, fencing_token=1, tier=Tier.FAST),
    ]
    for i, p in enumerate(payloads):
        await jobs.apply(envelope(p, T0 + timedelta(seconds=i)), p, "t", 0, i)
    rows = await jobs.timeline("job-1")
    assert [r["type"] for r in rows] == [
        "imagegen.generation.requested",
        "imagegen.prompt.moderated",
        "imagegen.job.scheduled",
    ]
    assert [r["seq"] for r in rows] == sorted(r["seq"] for r in rows)
    later = await jobs.timeline("job-1", after_seq=rows[0]["seq"])
    assert [r["event_id"] for r in later] == [r["event_id"] for r in rows[1:]]
    job = await jobs.get("job-1")
    assert job is not None and (job.status, job.worker_id) == ("scheduled", "w1")


async def test_queue_position_counts_earlier_waiting_jobs_of_the_same_tier(jobs: JobStore) -> None:
    for i, (job_id, tier) in enumerate(
        [("a", Tier.FAST), ("b", Tier.RELAX), ("c", Tier.FAST), ("d", Tier.FAST)]
    ):
        p = requested(job_id, tier=tier)
        await jobs.apply(envelope(p, T0 + timedelta(seconds=i)), p, "t", 0, i)
    d = await jobs.get("d")
    b = await jobs.get("b")
    assert d is not None and b is not None
    assert await jobs.queue_position(d) == 2
    assert await jobs.queue_position(b) == 0


async def test_all_states_holds_every_job(jobs: JobStore) -> None:
    for i, job_id in enumerate(("a", "b")):
        p = requested(job_id)
        await jobs.apply(envelope(p, T0), p, "t", 0, i)
    states = await jobs.all_states()
    assert set(states) == {"a", "b"}
    assert states["a"]["status"] == "moderating"


async def test_strings_postgresql_cannot_hold_are_stored_replaced(jobs: JobStore) -> None:
    """NUL (and a lone surrogate) cannot be stored in PostgreSQL: U+FFFD stands in, so one such
    event already in the log never blocks the projection."""
    p = requested("job-1")
    p = p.model_copy(update={"params": p.params.model_copy(update={"prompt": "a\x00b\ud800c"})})
    assert await jobs.apply(envelope(p, T0), p, "t", 0, 0) is True
    job = await jobs.get("job-1")
    assert job is not None and job.params["prompt"] == "a\ufffdb\ufffdc"
    [row] = await jobs.timeline("job-1")
    assert row["data"]["params"]["prompt"] == "a\ufffdb\ufffdc"

"""The webhook store's contract, run against the in-memory fake and the real PostgreSQL store
(the latter needs ``make infra-up``; it is skipped by ``-m unit``)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest

from imagegen_delivery.adapters.webhook_store import InMemoryWebhookStore, PgWebhookStore, Ready
from imagegen_delivery.adapters.webhook_store import WebhookStore as Store
from imagegen_delivery.domain.webhook import Outcome
from imagegen_runtime.db import make_engine
from imagegen_schemas.webhooks import WebhookScheduled

T0 = datetime(2026, 12, 1, tzinfo=UTC)


@pytest.fixture(
    params=[
        pytest.param("memory", marks=pytest.mark.unit),
        pytest.param("postgres", marks=pytest.mark.integration),
    ]
)
async def store(request: pytest.FixtureRequest) -> AsyncIterator[Store]:
    if request.param == "memory":
        yield InMemoryWebhookStore()
        return
    infra = request.getfixturevalue("infra")
    engine = make_engine(infra.database_url, pool_size=2)
    pg = PgWebhookStore(engine, prefix=f"t{uuid.uuid4().hex[:8]}_")
    await pg.create()
    yield pg
    await pg.drop()
    await engine.dispose()


def msg(attempt: int, round: int = 0, **kw: object) -> WebhookScheduled:
    return WebhookScheduled(
        message_id="m1",
        job_id="j1",
        user_id="u1",
        url="https://hooks.example.com/h",
        webhook_type="generation.failed",
        body="{}",
        attempt=attempt,
        round=round,
        due_at=T0,
        **kw,  # type: ignore[arg-type]
    )


async def test_request_and_outcome_join_in_either_order_and_the_first_outcome_wins(
    store: Store,
) -> None:
    first, second = Outcome("e1", "generation.failed", "{1}"), Outcome("e2", "x", "{2}")
    assert await store.note_outcome("j1", first) is None
    assert await store.note_outcome("j1", second) is None
    ready = await store.note_request("j1", "u1", "https://h/1")
    assert ready == Ready("j1", "u1", "https://h/1", first)
    assert await store.note_request("j2", "u1", None) is None
    assert await store.note_outcome("j2", second) == Ready("j2", "u1", None, second)
    await store.mark_scheduled("j1")
    assert await store.note_request("j1", "u1", "https://h/1") is None
    assert await store.note_outcome("j1", first) is None


async def test_messages_keep_the_newest_attempt_and_results_of_older_ones_are_ignored(
    store: Store,
) -> None:
    assert await store.upsert_message(msg(1))
    assert not await store.upsert_message(msg(1))  # a redelivered record
    assert await store.upsert_message(msg(2, last_error="answered 503"))
    assert not await store.upsert_message(msg(1))
    await store.record_result(msg(1), "delivered", 200, "")  # stale: attempt 2 is current
    assert await store.status_of("m1") == ("pending", 0, 2, "answered 503")
    assert [m.attempt for m in await store.pending()] == [2]
    await store.record_result(msg(2), "dead", 503, "answered 503")
    assert await store.pending() == []
    assert await store.upsert_message(msg(1, round=1))  # a redelivery starts a new round
    assert await store.status_of("m1") == ("pending", 1, 1, "")


async def test_secrets_are_made_once_and_overlap_after_a_rotation(store: Store) -> None:
    [s1] = await store.secrets("u1", T0)
    assert s1.startswith("whsec_") and await store.secrets("u1", T0) == [s1]
    s2 = await store.rotate("u1", T0 + timedelta(seconds=1), timedelta(hours=1))
    assert await store.secrets("u1", T0 + timedelta(minutes=30)) == [s2, s1]
    assert await store.secrets("u1", T0 + timedelta(hours=2)) == [s2]
    assert await store.secrets("u2", T0) != [s2]

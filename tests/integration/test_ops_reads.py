"""What /ops reads (ADR 0820) on the real broker and database: the dead-letter topic (the page's
own minimal read and the DLQ tools' list), waiting jobs and recent failures in PostgreSQL."""

from __future__ import annotations

import base64
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from confluent_kafka.admin import AdminClient, NewTopic

from imagegen_api.adapters.jobstore import PgJobStore
from imagegen_api.adapters.opsreads import KafkaDlq, PgOpsReads
from imagegen_runtime.db import make_engine
from imagegen_runtime.kafka import DEADLETTER_TOPIC, KafkaPublisher
from imagegen_schemas import TOPIC_BY_NAME, Envelope, Plan, Tier
from imagegen_schemas import jobs as ev
from imagegen_schemas.common import GenerationParams
from imagegen_schemas.workers import DeadLettered

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def prefix(infra: Any) -> str:
    """Topics of this module's own (the session's dead-letter topic gets other tests' letters)."""
    mine = f"{infra.topic_prefix}ops{uuid.uuid4().hex[:6]}."
    admin = AdminClient({"bootstrap.servers": infra.kafka_bootstrap})
    spec = TOPIC_BY_NAME[DEADLETTER_TOPIC]
    made = admin.create_topics([NewTopic(mine + DEADLETTER_TOPIC, spec.partitions, 1)])
    for done in made.values():
        done.result(timeout=30)
    return mine


async def dead_letter(infra: Any, prefix: str, n: int) -> list[str]:
    """``n`` DeadLettered records, one second apart; their ids, oldest first."""
    pub = KafkaPublisher(infra.kafka_bootstrap, "test-ops", prefix)
    start = datetime.now(UTC) - timedelta(minutes=5)

    def at(i: int) -> datetime:
        return start + timedelta(seconds=i)

    ids = []
    try:
        for i in range(n):
            letter = DeadLettered(
                source_topic=prefix + "imagegen.jobs.requested",
                source_partition=i % 3,
                source_offset=100 + i,
                consumer_group="imagegen-scheduler",
                error=f"ValueError: bad record {i}\nTraceback ...",
                original_key_b64=base64.b64encode(f"job-{i}".encode()).decode(),
                original_value_b64=base64.b64encode(b'{"truncated').decode(),
            )
            env = Envelope.wrap(
                letter, correlation_id=f"source/{i % 3}", producer="test-ops", occurred_at=at(i)
            )
            await pub.send_raw(
                prefix + DEADLETTER_TOPIC, f"source/{i % 3}".encode(), env.to_json(), []
            )
            ids.append(env.event_id)
    finally:
        await pub.close()
    return ids


async def test_the_dead_letter_topic_read_by_the_page_itself_and_by_the_dlq_tools(
    infra: Any, prefix: str
) -> None:
    ids = await dead_letter(infra, prefix, 5)
    own = KafkaDlq(infra.kafka_bootstrap, prefix, tools=lambda: None, cache_s=0)
    found = await own.list(3)
    assert found["total"] == 5
    assert [x["id"] for x in found["letters"]] == ids[::-1][:3]  # newest first
    newest = found["letters"][0]
    assert newest["source_topic"] == prefix + "imagegen.jobs.requested"
    assert (newest["source_offset"], newest["consumer_group"]) == (104, "imagegen-scheduler")
    assert newest["error"] == "ValueError: bad record 4"  # the first line
    assert newest["where"].startswith(DEADLETTER_TOPIC + "[")
    # the DLQ tools' list (the default when they are installed): the same letters, with state
    tools = KafkaDlq(infra.kafka_bootstrap, prefix, cache_s=0)
    listed = await tools.list(3)
    assert listed["total"] == 5
    assert [x["id"] for x in listed["letters"]] == ids[::-1][:3]
    assert listed["letters"][0]["redriven"] is False
    assert listed["letters"][0]["error"] == "ValueError: bad record 4"


async def test_a_missing_dead_letter_topic_is_named(infra: Any) -> None:
    missing = f"{infra.topic_prefix}none{uuid.uuid4().hex[:6]}."
    own = KafkaDlq(infra.kafka_bootstrap, missing, tools=lambda: None)
    with pytest.raises(LookupError, match=f"no topic {missing}{DEADLETTER_TOPIC}"):
        await own.list(10)


@pytest.fixture
async def store(infra: Any) -> AsyncIterator[PgJobStore]:
    engine = make_engine(infra.database_url, pool_size=2)
    jobs = PgJobStore(engine, prefix=f"t_ops_{uuid.uuid4().hex[:6]}_")
    await jobs.create()
    try:
        yield jobs
    finally:
        await jobs.drop()
        await engine.dispose()


async def test_waiting_jobs_and_recent_failures_from_postgresql(store: PgJobStore) -> None:
    params = GenerationParams(
        prompt="a", model="m", width=64, height=64, steps=2, guidance_scale=5, seed=1
    )
    start = datetime(2026, 1, 1, tzinfo=UTC)
    offset = 0

    async def put(job_id: str, at: datetime, *payloads: Any) -> None:
        nonlocal offset
        for p in payloads:
            env = Envelope.wrap(p, correlation_id=job_id, producer="t", occurred_at=at)
            await store.apply(env, p, "t", 0, offset)
            offset += 1

    for i, job_id in enumerate(("w1", "w2", "f1", "f2", "done")):
        at = start + timedelta(seconds=i)
        await put(
            job_id,
            at,
            ev.GenerationRequested(
                job_id=job_id, user_id="u", plan=Plan.PRO, tier=Tier.FAST, params=params
            ),
        )
    await put("w2", start, ev.PromptModerated(job_id="w2", verdict=ev.Verdict.ALLOWED))
    await put(
        "f1",
        start + timedelta(seconds=10),
        ev.PromptModerated(job_id="f1", verdict=ev.Verdict.REJECTED, categories=("violence",)),
    )
    await put(
        "f2",
        start + timedelta(seconds=20),
        ev.GenerationFailed(job_id="f2", reason=ev.FailureReason.TIMEOUT, message="too slow"),
    )
    await put("done", start, ev.GenerationCancelled(job_id="done"))
    reads = PgOpsReads(store)
    waiting = await reads.waiting(10)
    assert [(j.job_id, j.status) for j in waiting] == [("w1", "moderating"), ("w2", "queued")]
    assert [j.job_id for j in await reads.waiting(1)] == ["w1"]
    failed = await reads.failures(10)
    assert [(j.job_id, j.failure_reason, j.failure_message) for j in failed] == [
        ("f2", "timeout", "too slow"),
        ("f1", "prompt_rejected", "prompt rejected: violence"),
    ]

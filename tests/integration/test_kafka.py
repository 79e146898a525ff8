"""Against the real local broker: publish with acks, consume in a group, commit, resume, DLQ."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from confluent_kafka import Consumer

from imagegen_runtime.faststream_consumer import FastStreamConsumer
from imagegen_runtime.kafka import KafkaPublisher, RecordMeta
from imagegen_schemas import Envelope, Payload, header_map
from imagegen_schemas.jobs import CancellationRequested
from imagegen_schemas.workers import DeadLettered

pytestmark = pytest.mark.integration

REQUESTED = "imagegen.jobs.requested"
DLQ = "imagegen.deadletter"


async def consume_until(loop: FastStreamConsumer, done: asyncio.Event, timeout: float = 60) -> None:
    """Run ``loop`` until ``done`` is set by its handler (or fail after ``timeout``)."""
    stop = asyncio.Event()
    task = asyncio.create_task(loop.run(stop))
    try:
        await asyncio.wait_for(done.wait(), timeout)
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)


def read_all(bootstrap: str, topic: str, expect: int, timeout: float = 60) -> list[Envelope]:
    """Every record of ``topic`` from offset 0 with a fresh group (stops at ``expect``)."""
    c = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"reader-{uuid.uuid4()}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    c.subscribe([topic])
    out: list[Envelope] = []
    import time

    deadline = time.monotonic() + timeout
    while len(out) < expect and time.monotonic() < deadline:
        msg = c.poll(0.5)
        if msg is not None and not msg.error():
            out.append(Envelope.from_json(msg.value()))
    c.close()
    return out


async def test_publish_consume_commit_and_resume_from_committed_offset(infra, topics) -> None:
    pub = KafkaPublisher(infra.kafka_bootstrap, "test", topics)
    job = str(uuid.uuid4())
    sent = [
        await pub.publish(CancellationRequested(job_id=job, requested_by=f"u{i}"), key=job)
        for i in range(20)
    ]
    group = f"{topics}g-{uuid.uuid4().hex[:6]}"
    seen: list[str] = []

    def handler_stopping_at(n: int, done: asyncio.Event):
        async def handle(env: Envelope, payload: Payload, meta: RecordMeta) -> None:
            if env.correlation_id != job:  # other tests of the session share the topic
                return
            seen.append(env.event_id)
            assert meta.headers["ce_id"] == env.event_id
            if len(seen) >= n:
                done.set()

        return handle

    first_done = asyncio.Event()
    first = FastStreamConsumer(
        infra.kafka_bootstrap, group, [topics + REQUESTED], handler_stopping_at(8, first_done), pub
    )
    await consume_until(first, first_done)
    assert seen == [e.event_id for e in sent[:8]]

    # A new member of the same group resumes right after the last committed offset.
    second_done = asyncio.Event()
    second = FastStreamConsumer(
        infra.kafka_bootstrap,
        group,
        [topics + REQUESTED],
        handler_stopping_at(20, second_done),
        pub,
    )
    await consume_until(second, second_done)
    assert seen == [e.event_id for e in sent], "records lost or repeated across the restart"
    await pub.close()


async def test_malformed_record_is_dead_lettered_and_consumer_goes_on(infra, topics) -> None:
    pub = KafkaPublisher(infra.kafka_bootstrap, "test", topics)
    job = str(uuid.uuid4())
    topic = topics + "imagegen.jobs.moderated"
    await pub.send_raw(topic, job.encode(), b"{not json", [])
    await pub.send_raw(topic, job.encode(), b'{"type": "imagegen.prompt.moderated"}', [])
    good = await pub.publish(
        __import__("imagegen_schemas.jobs", fromlist=["PromptModerated"]).PromptModerated(
            job_id=job, verdict="allowed"
        ),
        key=job,
    )
    handled: list[str] = []
    done = asyncio.Event()

    async def handle(env: Envelope, payload: Payload, meta: RecordMeta) -> None:
        handled.append(env.event_id)
        done.set()

    loop = FastStreamConsumer(infra.kafka_bootstrap, f"{topics}dlq-{job[:6]}", [topic], handle, pub)
    await consume_until(loop, done)
    assert handled == [good.event_id]
    assert loop.dead_lettered == 2
    letters = [
        e
        for e in read_all(infra.kafka_bootstrap, topics + DLQ, 100, timeout=10)
        if e.data.get("source_topic") == topic
    ]
    assert len(letters) == 2
    first = DeadLettered.model_validate(letters[0].data)
    assert "unparseable" in first.error and first.source_offset == 0
    await pub.close()


async def test_failing_handler_is_retried_then_dead_lettered(infra, topics) -> None:
    pub = KafkaPublisher(infra.kafka_bootstrap, "test", topics)
    job = str(uuid.uuid4())
    topic = topics + "imagegen.jobs.delivered"
    from imagegen_schemas.jobs import ImageDelivered

    poison = await pub.publish(ImageDelivered(job_id=job, images=()), key=job)
    after = await pub.publish(ImageDelivered(job_id=job, images=(), webhook_status=200), key=job)
    attempts: list[str] = []
    done = asyncio.Event()

    async def handle(env: Envelope, payload: Payload, meta: RecordMeta) -> None:
        if env.correlation_id != job:  # other tests of the session share the topic
            return
        attempts.append(env.event_id)
        if env.event_id == poison.event_id:
            raise RuntimeError("effect failed")
        done.set()

    loop = FastStreamConsumer(
        infra.kafka_bootstrap,
        f"{topics}retry-{job[:6]}",
        [topic],
        handle,
        pub,
        max_attempts=3,
        backoff_s=0.01,
    )
    await consume_until(loop, done)
    assert attempts == [poison.event_id] * 3 + [after.event_id]
    assert loop.dead_lettered == 1
    letters = [
        e
        for e in read_all(infra.kafka_bootstrap, topics + DLQ, 100, timeout=10)
        if e.data.get("source_topic") == topic
    ]
    assert "handler failed 3 times" in letters[0].data["error"]
    await pub.close()


async def test_records_carry_cloudevents_headers_and_key(infra, topics) -> None:
    pub = KafkaPublisher(infra.kafka_bootstrap, "test", topics)
    job = str(uuid.uuid4())
    env = await pub.publish(CancellationRequested(job_id=job, requested_by="h"), key=job)
    await pub.close()
    c = Consumer(
        {
            "bootstrap.servers": infra.kafka_bootstrap,
            "group.id": f"h-{job}",
            "auto.offset.reset": "earliest",
        }
    )
    c.subscribe([topics + REQUESTED])
    import time

    deadline = time.monotonic() + 30
    found = None
    while found is None and time.monotonic() < deadline:
        msg = c.poll(0.5)
        if msg is not None and not msg.error() and msg.key() == job.encode():
            found = msg
    c.close()
    assert found is not None
    h = header_map(found.headers())
    assert (h["ce_id"], h["ce_type"], h["ce_specversion"]) == (
        env.event_id,
        "imagegen.generation.cancellation_requested",
        "1.0",
    )
    assert h["ce_source"] == "/imagegen/test"

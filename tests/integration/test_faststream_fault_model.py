"""Trial (issue 10 item 3): a consumer on FastStream 0.7.8 with the fault model as middleware.

Against the real broker, the guarantees our loop gives (ADR 0003, 0008):
- the offset is committed per record, after the effect (a new member resumes after it);
- order is kept per key (a record retried after a fault is not overtaken);
- a transient fault is nacked with backoff and retried, never dead-lettered;
- a poison record is dead-lettered (and its job failed), then acked.
ADR 0008 records the outcome and what stays on our loop.
"""

from __future__ import annotations

import asyncio
import uuid

import pytest
from faststream.confluent import KafkaBroker
from faststream.middlewares import AckPolicy
from sqlalchemy import exc as sa

from imagegen_runtime.faststream_faults import fault_model_middleware
from imagegen_runtime.faults import Backoff
from imagegen_runtime.kafka import KafkaConsumerLoop, KafkaPublisher, RecordMeta
from imagegen_schemas import Envelope, Payload, parse
from imagegen_schemas.jobs import CancellationRequested, FailureReason

from .test_kafka import read_all

pytestmark = pytest.mark.integration


def broker_with_fault_model(bootstrap: str, pub: KafkaPublisher, group: str) -> KafkaBroker:
    middleware = fault_model_middleware(pub, group, backoff=Backoff(initial_s=0.05, cap_s=0.5))
    return KafkaBroker(bootstrap, middlewares=[middleware], logger=None)


async def wait(event: asyncio.Event, timeout: float, what: str) -> None:
    try:
        await asyncio.wait_for(event.wait(), timeout)
    except TimeoutError:
        pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")


async def test_faststream_keeps_order_waits_out_transient_faults_and_commits_after_effect(
    infra, topics
) -> None:
    pub = KafkaPublisher(infra.kafka_bootstrap, "test", topics)
    job = str(uuid.uuid4())
    topic = topics + "imagegen.jobs.requested"
    group = f"{topics}fs-{job[:6]}"
    for name in ("r1", "r2", "r3"):
        await pub.publish(CancellationRequested(job_id=job, requested_by=name), key=job)
    seen: list[str] = []
    outage = 3  # the first three attempts at r1 meet a database outage
    done = asyncio.Event()

    broker = broker_with_fault_model(infra.kafka_bootstrap, pub, group)

    @broker.subscriber(
        topic, group_id=group, auto_offset_reset="earliest", ack_policy=AckPolicy.MANUAL
    )
    async def project(envelope: Envelope) -> None:
        nonlocal outage
        if envelope.correlation_id != job:
            return
        payload = parse(envelope)
        assert isinstance(payload, CancellationRequested)
        seen.append(payload.requested_by)
        if payload.requested_by == "r1" and outage > 0:
            outage -= 1
            raise sa.OperationalError("UPDATE", {}, ConnectionRefusedError(111, "refused"))
        if payload.requested_by == "r3":
            done.set()

    async with broker:
        await broker.start()
        await wait(done, 90, "r3 through FastStream")
    assert seen == ["r1", "r1", "r1", "r1", "r2", "r3"], "order per key or retries broken"

    # A member of the same group (our loop) resumes after r3: every offset was committed.
    await pub.publish(CancellationRequested(job_id=job, requested_by="r4"), key=job)
    after: list[str] = []
    resumed = asyncio.Event()

    async def handle(env: Envelope, payload: Payload, meta: RecordMeta) -> None:
        if env.correlation_id == job and isinstance(payload, CancellationRequested):
            after.append(payload.requested_by)
            if payload.requested_by == "r4":
                resumed.set()

    loop = KafkaConsumerLoop(infra.kafka_bootstrap, group, [topic], handle, pub)
    stop = asyncio.Event()
    task = asyncio.create_task(loop.run(stop))
    try:
        await wait(resumed, 60, "r4 in the same group")
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)
        await pub.close()
    assert after == ["r4"], "records handled through FastStream were not committed"
    letters = [
        e
        for e in read_all(infra.kafka_bootstrap, topics + "imagegen.deadletter", 10_000, timeout=5)
        if e.data.get("consumer_group") == group
    ]
    assert letters == [], "a transient fault was dead-lettered"


async def test_faststream_dead_letters_poison_fails_its_job_then_acks(infra, topics) -> None:
    pub = KafkaPublisher(infra.kafka_bootstrap, "safety", topics)
    job = str(uuid.uuid4())
    topic = topics + "imagegen.jobs.requested"
    group = f"{topics}fs-poison-{job[:6]}"
    poison = await pub.publish(CancellationRequested(job_id=job, requested_by="bad"), key=job)
    await pub.publish(CancellationRequested(job_id=job, requested_by="good"), key=job)
    attempts: list[str] = []
    done = asyncio.Event()
    broker = broker_with_fault_model(infra.kafka_bootstrap, pub, group)

    @broker.subscriber(
        topic, group_id=group, auto_offset_reset="earliest", ack_policy=AckPolicy.MANUAL
    )
    async def handle(envelope: Envelope) -> None:
        if envelope.correlation_id != job:
            return
        attempts.append(envelope.data["requested_by"])
        if envelope.event_id == poison.event_id:
            raise ValueError("a bug this record hits every time")
        done.set()

    async with broker:
        await broker.start()
        await wait(done, 90, "the record after the poison one")
    await pub.close()
    assert attempts == ["bad", "bad", "bad", "good"]
    letters = [
        e
        for e in read_all(infra.kafka_bootstrap, topics + "imagegen.deadletter", 10_000, timeout=5)
        if e.data.get("consumer_group") == group
    ]
    assert len(letters) == 1 and "ValueError" in letters[0].data["error"]
    ended = [
        parse(e)
        for e in read_all(infra.kafka_bootstrap, topics + "imagegen.jobs.ended", 10_000, timeout=5)
        if e.correlation_id == job
    ]
    assert [(f.reason, f.terminal) for f in ended] == [(FailureReason.POISON_EVENT, True)]

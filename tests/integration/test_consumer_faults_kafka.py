"""The fault model (ADR 0008) against the real local broker.

- a database outage in a handler is waited out (never dead-lettered), with ``/readyz`` 503
  naming the fault meanwhile;
- a record whose handler fails the same way every time is dead-lettered and its job gets a
  terminal ``GenerationFailed(poison_event)``;
- a member that lost its group membership while handling a record (the commit is refused)
  keeps running and the record is handled again by the partition's new owner.
"""

from __future__ import annotations

import asyncio
import time
import uuid

import httpx
import pytest
from sqlalchemy import exc as sa

from imagegen_runtime.faststream_consumer import FastStreamConsumer
from imagegen_runtime.health import Readiness, health_app
from imagegen_runtime.kafka import KafkaPublisher, RecordMeta
from imagegen_runtime.standard import consumer_assigned_check
from imagegen_schemas import Envelope, Payload, parse
from imagegen_schemas.jobs import CancellationRequested, FailureReason, ImageDelivered

from .test_kafka import read_all

pytestmark = pytest.mark.integration

DLQ = "imagegen.deadletter"
ENDED = "imagegen.jobs.ended"


async def wait_for(condition: asyncio.Event, timeout: float, what: str) -> None:
    try:
        await asyncio.wait_for(condition.wait(), timeout)
    except TimeoutError:
        pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")


async def readyz(readiness: Readiness) -> httpx.Response:
    app = health_app("api", readiness)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://api"
    ) as client:
        return await client.get("/readyz")


def db_down() -> sa.OperationalError:
    """What SQLAlchemy raises when PostgreSQL's postmaster is gone (kill -9)."""
    return sa.OperationalError(
        "UPDATE jobs SET ...",
        {},
        ConnectionRefusedError(111, "Connect call failed ('127.0.0.1', 25432)"),
        connection_invalidated=True,
    )


async def test_database_outage_in_the_projector_is_waited_out_never_dead_lettered(
    infra, topics
) -> None:
    """Regression (issue 10, database outage): the API projector retried ``ImageDelivered``
    three times within a second, then dead-lettered it, so the job showed ``moderated``
    forever. Failed before ADR 0008: the sixth attempt never came (dead-lettered after 3)."""
    pub = KafkaPublisher(infra.kafka_bootstrap, "test", topics)
    job = str(uuid.uuid4())
    topic = topics + "imagegen.jobs.delivered"
    group = f"{topics}projector-{job[:6]}"
    delivered = await pub.publish(ImageDelivered(job_id=job, images=()), key=job)
    database_up = False
    attempts = 0
    outage_seen, projected = asyncio.Event(), asyncio.Event()

    async def project(env: Envelope, payload: Payload, meta: RecordMeta) -> None:
        nonlocal attempts
        if env.correlation_id != job:
            return
        attempts += 1
        if not database_up:
            if attempts >= 6:
                outage_seen.set()
            raise db_down()
        projected.set()

    loop = FastStreamConsumer(infra.kafka_bootstrap, group, [topic], project, pub, backoff_s=0.05)
    readiness = Readiness()
    readiness.add("consumer", consumer_assigned_check(loop))
    stop = asyncio.Event()
    task = asyncio.create_task(loop.run(stop))
    try:
        await wait_for(outage_seen, 60, "six attempts during the outage")
        during = await readyz(readiness)
        assert during.status_code == 503, during.json()
        reason = during.json()["reasons"]["consumer"]
        assert "OperationalError" in reason and f"{topic}[" in reason, reason

        database_up = True  # PostgreSQL is back
        await wait_for(projected, 60, "the projection after the outage")
        deadline = time.monotonic() + 10
        while (after := await readyz(readiness)).status_code != 200:
            assert time.monotonic() < deadline, after.json()
            await asyncio.sleep(0.05)
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)
        await pub.close()
    letters = [
        e
        for e in read_all(infra.kafka_bootstrap, topics + DLQ, 10_000, timeout=5)
        if e.data.get("consumer_group") == group
    ]
    assert letters == [], "a transient fault was dead-lettered"
    failures = [
        e
        for e in read_all(infra.kafka_bootstrap, topics + ENDED, 10_000, timeout=5)
        if e.correlation_id == job
    ]
    assert failures == [] and delivered.correlation_id == job


async def test_poison_record_is_dead_lettered_and_its_job_fails_terminally(infra, topics) -> None:
    pub = KafkaPublisher(infra.kafka_bootstrap, "safety", topics)
    job = str(uuid.uuid4())
    topic = topics + "imagegen.jobs.requested"
    group = f"{topics}poison-{job[:6]}"
    poison = await pub.publish(CancellationRequested(job_id=job, requested_by="u"), key=job)
    marker = await pub.publish(CancellationRequested(job_id=job, requested_by="after"), key=job)
    done = asyncio.Event()

    async def handle(env: Envelope, payload: Payload, meta: RecordMeta) -> None:
        if env.event_id == poison.event_id:
            raise ValueError("a bug this record hits every time")
        if env.event_id == marker.event_id:
            done.set()

    loop = FastStreamConsumer(
        infra.kafka_bootstrap, group, [topic], handle, pub, max_attempts=3, backoff_s=0.01
    )
    stop = asyncio.Event()
    task = asyncio.create_task(loop.run(stop))
    try:
        await wait_for(done, 60, "the record after the poison one")
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)
        await pub.close()
    letters = [
        e
        for e in read_all(infra.kafka_bootstrap, topics + DLQ, 10_000, timeout=5)
        if e.data.get("consumer_group") == group
    ]
    assert len(letters) == 1 and "ValueError" in letters[0].data["error"]
    ended = [
        e
        for e in read_all(infra.kafka_bootstrap, topics + ENDED, 10_000, timeout=5)
        if e.correlation_id == job
    ]
    assert len(ended) == 1
    failed = parse(ended[0])
    assert (failed.reason, failed.terminal) == (FailureReason.POISON_EVENT, True)
    assert ended[0].causation_id == poison.event_id and ended[0].producer == "safety"


async def test_member_that_lost_its_group_keeps_running_and_the_record_is_redelivered(
    infra, topics
) -> None:
    """Regression (issue 10, broker restart): the gpu-worker crashed on a commit refused with
    UNKNOWN_MEMBER_ID. Here member A handles a record for longer than ``max.poll.interval.ms``
    while member B joins: the group moves on without A, A's commit is refused, and the record is
    handled again by whichever member owns its partition after the rebalance (B, or A once it
    re-joined). Failed before ADR 0008: A's ``run`` raised the KafkaException (the service
    would exit)."""
    pub = KafkaPublisher(infra.kafka_bootstrap, "test", topics)
    job = str(uuid.uuid4())
    topic = topics + "imagegen.jobs.requested"
    group = f"{topics}worker-{job[:6]}"
    sent = await pub.publish(CancellationRequested(job_id=job, requested_by="u"), key=job)
    a_has_it, again = asyncio.Event(), asyncio.Event()
    b_loop: list[FastStreamConsumer] = []
    deliveries: list[str] = []  # which member got the record, in order

    async def slow_a(env: Envelope, payload: Payload, meta: RecordMeta) -> None:
        if env.event_id != sent.event_id:
            return
        deliveries.append("A")
        if len(deliveries) > 1:  # A re-joined and got the partition back
            again.set()
            return
        a_has_it.set()
        # Busy past max.poll.interval.ms: the group rebalances B in and A out meanwhile.
        await wait_for(b_loop[0].assigned, 90, "B's assignment")

    async def b(env: Envelope, payload: Payload, meta: RecordMeta) -> None:
        if env.event_id == sent.event_id:
            deliveries.append("B")
            again.set()

    short = {"session.timeout.ms": 6000, "max.poll.interval.ms": 7000}
    loop_a = FastStreamConsumer(infra.kafka_bootstrap, group, [topic], slow_a, pub, **short)
    loop_b = FastStreamConsumer(infra.kafka_bootstrap, group, [topic], b, pub, **short)
    b_loop.append(loop_b)
    stop_a, stop_b = asyncio.Event(), asyncio.Event()
    task_a = asyncio.create_task(loop_a.run(stop_a))
    task_b: asyncio.Task[None] | None = None
    try:
        await wait_for(a_has_it, 60, "A to take the record")
        task_b = asyncio.create_task(loop_b.run(stop_b))
        await wait_for(again, 120, "the record's redelivery to its partition's owner")
        assert not task_a.done(), f"member A stopped: {task_a.exception()!r}"
        assert deliveries[0] == "A" and len(deliveries) >= 2, deliveries
    finally:
        stop_a.set()
        stop_b.set()
        await asyncio.wait_for(task_a, 30)  # raises if A's loop crashed
        if task_b is not None:
            await asyncio.wait_for(task_b, 30)
        await pub.close()

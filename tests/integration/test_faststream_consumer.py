"""The services' consumer on FastStream (issue 10 item 3), against the real broker.

The guarantees ADR 0003 and 0008 ask of every consumer, on FastStream 0.7.8 with the fault model
as middleware (the dead-letter and lost-membership cases are in
``test_consumer_faults_kafka.py``, the broker restart in ``test_broker_crash.py``):
- the offset is committed per record, after the effect: a new member of the group resumes after
  the last record handled;
- order is kept per key: a record retried after a transient fault is not overtaken;
- a transient fault is nacked with backoff and retried, never dead-lettered;
- a stop during a transient fault commits nothing: the record comes again.
"""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest
from sqlalchemy import exc as sa

from imagegen_runtime.faststream_consumer import FastStreamConsumer
from imagegen_runtime.kafka import KafkaPublisher, RecordMeta
from imagegen_schemas import Envelope, Payload
from imagegen_schemas.jobs import CancellationRequested

from .test_kafka import consume_until, read_all

pytestmark = pytest.mark.integration


async def wait(event: asyncio.Event, timeout: float, what: str) -> None:
    try:
        await asyncio.wait_for(event.wait(), timeout)
    except TimeoutError:
        pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")


def mine(job: str, into: list[str], done: dict[str, asyncio.Event]):  # type: ignore[no-untyped-def]
    """A handler that records ``requested_by`` of ``job``'s cancellations, in order."""

    async def handle(env: Envelope, payload: Payload, meta: RecordMeta) -> None:
        if env.correlation_id == job and isinstance(payload, CancellationRequested):
            into.append(payload.requested_by)
            done.setdefault(payload.requested_by, asyncio.Event()).set()

    return handle


async def test_order_per_key_across_transient_retries_and_commit_after_the_effect(
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

    async def project(env: Envelope, payload: Payload, meta: RecordMeta) -> None:
        nonlocal outage
        if env.correlation_id != job or not isinstance(payload, CancellationRequested):
            return
        seen.append(payload.requested_by)
        if payload.requested_by == "r1" and outage > 0:
            outage -= 1
            raise sa.OperationalError("UPDATE", {}, ConnectionRefusedError(111, "refused"))
        if payload.requested_by == "r3":
            done.set()

    first = FastStreamConsumer(infra.kafka_bootstrap, group, [topic], project, pub, backoff_s=0.05)
    stop = asyncio.Event()
    task = asyncio.create_task(first.run(stop))
    try:
        await wait(done, 90, "r3 through FastStream")
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)
    assert seen == ["r1", "r1", "r1", "r1", "r2", "r3"], "order per key or retries broken"
    assert first.handled >= 3 and first.dead_lettered == 0

    # A new member of the same group resumes after r3: every offset was committed.
    await pub.publish(CancellationRequested(job_id=job, requested_by="r4"), key=job)
    after: list[str] = []
    got: dict[str, asyncio.Event] = {"r4": asyncio.Event()}
    second = FastStreamConsumer(infra.kafka_bootstrap, group, [topic], mine(job, after, got), pub)
    try:
        await consume_until(second, got["r4"])
    finally:
        await pub.close()
    assert after == ["r4"], "records handled through FastStream were not committed"
    letters = [
        e
        for e in read_all(infra.kafka_bootstrap, topics + "imagegen.deadletter", 10_000, timeout=5)
        if e.data.get("consumer_group") == group
    ]
    assert letters == [], "a transient fault was dead-lettered"


async def test_a_stop_during_a_transient_fault_commits_nothing(infra, topics) -> None:
    pub = KafkaPublisher(infra.kafka_bootstrap, "test", topics)
    job = str(uuid.uuid4())
    topic = topics + "imagegen.jobs.requested"
    group = f"{topics}fs-stop-{job[:6]}"
    await pub.publish(CancellationRequested(job_id=job, requested_by="held"), key=job)
    held = asyncio.Event()

    async def blob_store_away(env: Envelope, payload: Payload, meta: RecordMeta) -> None:
        if env.correlation_id == job:
            held.set()
            raise PermissionError(13, "Permission denied", "/var/blobs/x.png")

    first = FastStreamConsumer(infra.kafka_bootstrap, group, [topic], blob_store_away, pub)
    stop = asyncio.Event()
    task = asyncio.create_task(first.run(stop))
    try:
        await wait(held, 60, "the first attempt")
        deadline = time.monotonic() + 10
        while "PermissionError" not in first.health().reason:  # the hold is reported
            assert time.monotonic() < deadline, first.health()
            await asyncio.sleep(0.01)
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)

    again: list[str] = []
    got: dict[str, asyncio.Event] = {"held": asyncio.Event()}
    second = FastStreamConsumer(infra.kafka_bootstrap, group, [topic], mine(job, again, got), pub)
    try:
        await consume_until(second, got["held"])
    finally:
        await pub.close()
    assert again == ["held"]

"""The consumer's fault model (ADR 0008): the FastStream middleware over an in-memory stand-in.

:func:`drive` plays FastStream's part (one record at a time; ``nack`` seeks back to the record)
and the confluent consumer's (``commit``), and runs each record through the middleware of a real
:class:`FastStreamConsumer`. What a client of the log sees is asserted: which offsets were
committed, what reached the dead-letter and ``imagegen.jobs.ended`` topics, and what readiness
said. The same behaviours run against the real broker through FastStream in
``tests/integration/test_consumer_faults_kafka.py``.
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from collections.abc import Callable
from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException, Message
from faststream import ContextRepo
from sqlalchemy import exc as sa

from imagegen_runtime.faststream_consumer import (
    FastStreamConsumer,
    SettleFailed,
    fault_model_middleware,
)
from imagegen_runtime.kafka import RecordMeta
from imagegen_runtime.publishing import InMemoryPublisher, build_record
from imagegen_schemas import Envelope, Payload, parse
from imagegen_schemas.jobs import (
    CancellationRequested,
    FailureReason,
    GenerationCancelled,
    GenerationFailed,
)
from imagegen_schemas.workers import DeadLettered

pytestmark = pytest.mark.unit

REQUESTED = "imagegen.jobs.requested"


class FakeClient:
    """The confluent consumer's ``commit``, with refusals on demand."""

    def __init__(self, commit_errors: list[int] | None = None) -> None:
        self.commit_errors = list(commit_errors or [])
        self.committed: list[int] = []
        self.refused: list[int] = []
        self.lock = threading.Lock()

    def commit(self, message: Message, asynchronous: bool) -> None:
        assert asynchronous is False, "commits are synchronous, per record"
        with self.lock:
            if self.commit_errors:
                self.refused.append(message.offset() or 0)
                raise KafkaException(KafkaError(self.commit_errors.pop(0)))
            self.committed.append(message.offset() or 0)


class FakeSubscription:
    """FastStream's part: records one at a time; a ``nack`` puts the record back in front."""

    def __init__(self, records: list[Message], client: FakeClient) -> None:
        self.queue = deque(records)
        self.consumer = self  # the message's ``consumer`` (FastStream's async consumer) ...
        self.client = client  # ... wraps the confluent one
        self.nacks: list[int] = []

    def message(self, raw: Message) -> FakeMessage:
        return FakeMessage(raw, self)


class FakeMessage:
    def __init__(self, raw: Message, sub: FakeSubscription) -> None:
        self.raw_message = raw
        self.consumer = _Wrapper(sub.client)
        self.sub = sub

    async def nack(self) -> None:
        self.sub.nacks.append(self.raw_message.offset() or 0)
        self.sub.queue.appendleft(self.raw_message)


class _Wrapper:
    def __init__(self, client: FakeClient) -> None:
        self.consumer = client


async def drive(
    consumer: FastStreamConsumer, records: list[Message], client: FakeClient | None = None
) -> FakeSubscription:
    """Run every record through ``consumer``'s middleware until all are settled."""
    sub = FakeSubscription(records, client or FakeClient())
    middleware = fault_model_middleware(consumer)
    while sub.queue:
        msg = sub.message(sub.queue.popleft())
        await middleware(msg, context=ContextRepo()).consume_scope(consumer.on_record, msg)
        if consumer._failed is not None:
            raise consumer._failed
    return sub


def record(payload: Payload, key: str, offset: int, topic: str = REQUESTED) -> Message:
    rec = build_record(payload, key=key, producer="test", topic_prefix="", causation_id=None)
    return Message(
        topic=topic,
        partition=0,
        offset=offset,
        key=key.encode(),
        value=rec.envelope.to_json(),
        headers=rec.headers,
    )


def raw(value: bytes, key: str | None, offset: int, topic: str = REQUESTED) -> Message:
    return Message(
        topic=topic, partition=0, offset=offset, key=key.encode() if key else None, value=value
    )


Handle = Callable[[Envelope, Payload, RecordMeta], Any]


def consumer_of(
    handler: Handle, pub: InMemoryPublisher | None = None, **kw: Any
) -> FastStreamConsumer:
    kw.setdefault("backoff_s", 0.001)
    return FastStreamConsumer(
        "unused:9092", "g", [REQUESTED], handler, pub or InMemoryPublisher("test"), **kw
    )


async def run_until_settled(
    records: list[Message], handler: Handle, **kw: Any
) -> tuple[FakeClient, InMemoryPublisher, FastStreamConsumer]:
    client = FakeClient(kw.pop("commit_errors", None))
    pub = InMemoryPublisher("test")
    consumer = consumer_of(handler, pub, **kw)
    await asyncio.wait_for(drive(consumer, records, client), 10)
    return client, pub, consumer


def cancel(job: str) -> CancellationRequested:
    return CancellationRequested(job_id=job, requested_by="u")


async def test_commit_refused_for_lost_membership_does_not_stop_the_consumer() -> None:
    """Regression: the gpu-worker crashed on a commit refused with UNKNOWN_MEMBER_ID after a
    broker restart. Before ADR 0008 the KafkaException escaped ``run`` (the service exited)."""
    seen: list[str] = []

    async def handle(env: Envelope, payload: Payload, meta: RecordMeta) -> None:
        seen.append(env.event_id)

    recs = [record(cancel(f"j{i}"), f"j{i}", i) for i in range(4)]
    codes = [
        KafkaError.UNKNOWN_MEMBER_ID,
        KafkaError.ILLEGAL_GENERATION,
        KafkaError.REBALANCE_IN_PROGRESS,
    ]
    client, pub, consumer = await run_until_settled(recs, handle, commit_errors=codes)
    assert client.refused == [0, 1, 2] and client.committed == [3]
    assert len(seen) == 4 and not pub.records
    assert consumer.commits_refused == 3


async def test_other_commit_errors_stop_the_consumer_without_passing_the_record() -> None:
    async def handle(env: Envelope, payload: Payload, meta: RecordMeta) -> None:
        pass

    client = FakeClient([KafkaError.TOPIC_AUTHORIZATION_FAILED])
    consumer = consumer_of(handle)
    records = [record(cancel("j"), "j", 0), record(cancel("k"), "k", 1)]
    with pytest.raises(SettleFailed, match="TOPIC_AUTHORIZATION_FAILED"):
        await asyncio.wait_for(drive(consumer, records, client), 10)
    assert client.committed == [], "a later record's commit passed the one that failed"
    assert consumer._failed_event.is_set()


async def test_transient_fault_is_retried_past_max_attempts_with_readiness_down() -> None:
    """A database outage: the handler fails with a connection error many times, then works.
    The record is nacked after each backoff (FastStream seeks back to it), then handled and
    committed, never dead-lettered; meanwhile the consumer's health names the fault."""
    calls = 0
    reasons: list[str] = []
    ref: list[FastStreamConsumer] = []

    async def handle(env: Envelope, payload: Payload, meta: RecordMeta) -> None:
        nonlocal calls
        calls += 1
        if calls <= 8:
            if calls > 1:
                reasons.append(ref[0].health().reason)
            raise sa.OperationalError("select 1", {}, ConnectionRefusedError(111, "refused"))

    pub = InMemoryPublisher("test")
    consumer = consumer_of(handle, pub)
    consumer.assigned.set()
    ref.append(consumer)
    client = FakeClient()
    sub = await drive(
        consumer, [record(cancel("j1"), "j1", 0), record(cancel("j2"), "j2", 1)], client
    )
    assert client.committed == [0, 1]
    assert calls == 9 + 1
    assert sub.nacks == [0] * 8, "each transient failure seeks back to the record"
    assert not pub.records, "a transient fault was dead-lettered"
    assert reasons and all("OperationalError" in r for r in reasons), reasons
    assert "imagegen.jobs.requested[0]@0" in reasons[-1]
    assert consumer.health().ok


async def test_stop_during_a_transient_fault_commits_nothing() -> None:
    """FastStream cancels the consume task on stop; the backoff ends there, with no commit."""

    async def handle(env: Envelope, payload: Payload, meta: RecordMeta) -> None:
        raise ConnectionResetError("blob store away")

    consumer = consumer_of(handle, backoff_s=30.0)
    consumer.assigned.set()
    client = FakeClient()
    task = asyncio.create_task(drive(consumer, [record(cancel("j"), "j", 0)], client))

    async def held() -> None:
        while "ConnectionResetError" not in consumer.health().reason:
            await asyncio.sleep(0)

    await asyncio.wait_for(held(), timeout=10)  # the hold has begun
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert client.committed == []


def ended(pub: InMemoryPublisher) -> list[GenerationFailed]:
    return [parse(e) for e in pub.on("imagegen.jobs.ended")]  # type: ignore[misc]


def letters(pub: InMemoryPublisher) -> list[DeadLettered]:
    return [DeadLettered.model_validate(e.data) for e in pub.on("imagegen.deadletter")]


async def test_a_bug_hit_by_one_record_is_poison_after_n_attempts_and_fails_its_job() -> None:
    attempts: list[str] = []

    async def handle(env: Envelope, payload: Payload, meta: RecordMeta) -> None:
        attempts.append(env.correlation_id)
        if env.correlation_id == "bad":
            raise ValueError("cannot handle this one")

    recs = [record(cancel("bad"), "bad", 0), record(cancel("good"), "good", 1)]
    fake, pub, _ = await run_until_settled(recs, handle, max_attempts=3)
    assert attempts == ["bad"] * 3 + ["good"]
    assert fake.committed == [0, 1]
    (letter,) = letters(pub)
    assert "handler failed 3 times" in letter.error and "ValueError" in letter.error
    (failed,) = ended(pub)
    assert (failed.job_id, failed.reason, failed.terminal) == (
        "bad",
        FailureReason.POISON_EVENT,
        True,
    )
    env = pub.on("imagegen.jobs.ended")[0]
    source = Envelope.from_json(recs[0].value())
    assert env.correlation_id == "bad" and env.causation_id == source.event_id


async def test_unparseable_record_on_a_job_topic_fails_the_job_named_by_its_key() -> None:
    async def handle(env: Envelope, payload: Payload, meta: RecordMeta) -> None:
        pass

    recs = [raw(b"{not json", "j-key", 0), raw(b"{nor this", None, 1)]
    fake, pub, _ = await run_until_settled(recs, handle)
    assert len(letters(pub)) == 2
    assert [(f.job_id, f.reason) for f in ended(pub)] == [("j-key", FailureReason.POISON_EVENT)]


async def test_poison_terminal_event_is_dead_lettered_without_failing_the_job_again() -> None:
    async def handle(env: Envelope, payload: Payload, meta: RecordMeta) -> None:
        raise ValueError("bug")

    topic = "imagegen.jobs.ended"
    recs = [
        record(GenerationCancelled(job_id="c"), "c", 0, topic),
        record(GenerationFailed(job_id="f", reason=FailureReason.POISON_EVENT), "f", 1, topic),
    ]
    pub = InMemoryPublisher("test")
    await drive(consumer_of(handle, pub), recs)
    assert len(letters(pub)) == 2 and ended(pub) == []


async def test_poison_on_a_worker_topic_fails_no_job() -> None:
    async def handle(env: Envelope, payload: Payload, meta: RecordMeta) -> None:
        pass

    recs = [raw(b"garbage", "worker-1", 0, "imagegen.workers.heartbeats")]
    pub = InMemoryPublisher("test")
    await drive(consumer_of(handle, pub), recs)
    assert len(letters(pub)) == 1 and ended(pub) == []


async def test_every_group_that_finds_one_record_poison_publishes_the_same_failure_id() -> None:
    async def handle(env: Envelope, payload: Payload, meta: RecordMeta) -> None:
        raise KeyError("missing")

    rec = record(cancel("j"), "j", 7)
    ids = []
    for _ in range(2):
        _, pub, _ = await run_until_settled([rec], handle, max_attempts=1)
        ids.append(pub.on("imagegen.jobs.ended")[0].event_id)
    assert ids[0] == ids[1]

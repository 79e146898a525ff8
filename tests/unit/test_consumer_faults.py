"""The consumer loop's fault model (ADR 0008) over an in-memory stand-in for the confluent consumer.

What a client of the log sees is asserted: which offsets were committed, what reached the
dead-letter and ``imagegen.jobs.ended`` topics, and what readiness said. The same behaviours run
against the real broker in ``tests/integration/test_consumer_faults_kafka.py``.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException, Message, TopicPartition
from sqlalchemy import exc as sa

from imagegen_runtime.kafka import KafkaConsumerLoop, RecordMeta
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


class FakeConsumer:
    """Enough of ``confluent_kafka.Consumer`` for the loop: one partition per topic."""

    def __init__(self, records: list[Message], commit_errors: list[int] | None = None) -> None:
        self.queue = deque(records)
        self.commit_errors = list(commit_errors or [])
        self.committed: list[int] = []
        self.refused: list[int] = []
        self.paused: set[tuple[str, int]] = set()
        self.paused_ever = False
        self.closed = False
        self.progress = threading.Condition()
        self.topics: list[str] = []

    def subscribe(self, topics: list[str], on_assign: Callable[..., None]) -> None:
        self.topics = topics
        on_assign(self, self.assignment())

    def assignment(self) -> list[TopicPartition]:
        return [TopicPartition(t, 0) for t in self.topics]

    def poll(self, timeout: float) -> Message | None:
        if self.queue and (self.queue[0].topic(), self.queue[0].partition()) not in self.paused:
            return self.queue.popleft()
        time.sleep(min(timeout, 0.005))
        return None

    def commit(self, message: Message, asynchronous: bool) -> None:
        with self.progress:
            if self.commit_errors:
                self.refused.append(message.offset())
                self.progress.notify_all()
                raise KafkaException(KafkaError(self.commit_errors.pop(0)))
            self.committed.append(message.offset())
            self.progress.notify_all()

    def pause(self, partitions: list[TopicPartition]) -> None:
        self.paused |= {(p.topic, p.partition) for p in partitions}
        self.paused_ever = True

    def resume(self, partitions: list[TopicPartition]) -> None:
        self.paused -= {(p.topic, p.partition) for p in partitions}

    def seek(self, tp: TopicPartition) -> None:
        pass

    def close(self) -> None:
        self.closed = True

    def wait_settled(self, n: int, timeout: float = 10) -> None:
        with self.progress:
            ok = self.progress.wait_for(
                lambda: len(self.committed) + len(self.refused) >= n, timeout
            )
        assert ok, f"settled {self.committed + self.refused}, wanted {n}"


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


async def run_until_settled(
    records: list[Message], handler: Handle, n: int, **kw: Any
) -> tuple[FakeConsumer, InMemoryPublisher, KafkaConsumerLoop]:
    fake = FakeConsumer(records, kw.pop("commit_errors", None))
    pub = InMemoryPublisher("test")
    loop = KafkaConsumerLoop(
        "unused:9092", "g", [REQUESTED], handler, pub, client=fake, backoff_s=0.001, **kw
    )
    stop = asyncio.Event()
    task = asyncio.create_task(loop.run(stop))
    try:
        await asyncio.to_thread(fake.wait_settled, n)
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)  # raises if the loop crashed
    return fake, pub, loop


def cancel(job: str) -> CancellationRequested:
    return CancellationRequested(job_id=job, requested_by="u")


async def test_commit_refused_for_lost_membership_does_not_stop_the_loop() -> None:
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
    fake, pub, loop = await run_until_settled(recs, handle, 4, commit_errors=codes)
    assert fake.refused == [0, 1, 2] and fake.committed == [3]
    assert len(seen) == 4 and not pub.records
    assert loop.commits_refused == 3


async def test_other_commit_errors_still_stop_the_loop() -> None:
    async def handle(env: Envelope, payload: Payload, meta: RecordMeta) -> None:
        pass

    fake = FakeConsumer([record(cancel("j"), "j", 0)], [KafkaError.TOPIC_AUTHORIZATION_FAILED])
    loop = KafkaConsumerLoop(
        "unused:9092", "g", [REQUESTED], handle, InMemoryPublisher(), client=fake
    )
    with pytest.raises(KafkaException):
        await asyncio.wait_for(loop.run(asyncio.Event()), 10)
    assert fake.closed


async def test_transient_fault_is_retried_past_max_attempts_with_readiness_down() -> None:
    """A database outage: the handler fails with a connection error many times, then works.
    The record is handled and committed, never dead-lettered; meanwhile the partition is
    paused and the loop's health names the fault."""
    calls = 0
    reasons: list[str] = []
    loop_ref: list[KafkaConsumerLoop] = []

    async def handle(env: Envelope, payload: Payload, meta: RecordMeta) -> None:
        nonlocal calls
        calls += 1
        if calls <= 8:
            health = loop_ref[0].health() if calls > 1 else None
            if health is not None:
                reasons.append(health.reason)
            raise sa.OperationalError("select 1", {}, ConnectionRefusedError(111, "refused"))

    fake = FakeConsumer([record(cancel("j1"), "j1", 0), record(cancel("j2"), "j2", 1)])
    pub = InMemoryPublisher("test")
    loop = KafkaConsumerLoop(
        "unused:9092", "g", [REQUESTED], handle, pub, client=fake, backoff_s=0.001
    )
    loop_ref.append(loop)
    stop = asyncio.Event()
    task = asyncio.create_task(loop.run(stop))
    await asyncio.to_thread(fake.wait_settled, 2)
    stop.set()
    await asyncio.wait_for(task, 10)
    assert fake.committed == [0, 1]
    assert calls == 9 + 1
    assert not pub.records, "a transient fault was dead-lettered"
    assert fake.paused_ever and not fake.paused
    assert reasons and all("OperationalError" in r for r in reasons), reasons
    assert "imagegen.jobs.requested[0]@0" in reasons[-1]
    assert loop.health().ok


async def test_stop_during_a_transient_fault_commits_nothing() -> None:
    async def handle(env: Envelope, payload: Payload, meta: RecordMeta) -> None:
        raise ConnectionResetError("blob store away")

    fake = FakeConsumer([record(cancel("j"), "j", 0)])
    loop = KafkaConsumerLoop(
        "unused:9092", "g", [REQUESTED], handle, InMemoryPublisher(), client=fake, backoff_s=0.001
    )
    stop = asyncio.Event()
    task = asyncio.create_task(loop.run(stop))
    deadline = time.monotonic() + 10
    while "ConnectionResetError" not in loop.health().reason:  # the hold has begun
        assert time.monotonic() < deadline, loop.health()
        await asyncio.sleep(0.005)
    stop.set()
    await asyncio.wait_for(task, 10)
    assert fake.committed == [] and fake.closed


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
    fake, pub, loop = await run_until_settled(recs, handle, 2, max_attempts=3)
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
    fake, pub, loop = await run_until_settled(recs, handle, 2)
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
    fake = FakeConsumer(recs)
    pub = InMemoryPublisher("test")
    loop = KafkaConsumerLoop("x:1", "g", [topic], handle, pub, client=fake, backoff_s=0.001)
    stop = asyncio.Event()
    task = asyncio.create_task(loop.run(stop))
    await asyncio.to_thread(fake.wait_settled, 2)
    stop.set()
    await asyncio.wait_for(task, 10)
    assert len(letters(pub)) == 2 and ended(pub) == []


async def test_poison_on_a_worker_topic_fails_no_job() -> None:
    async def handle(env: Envelope, payload: Payload, meta: RecordMeta) -> None:
        pass

    recs = [raw(b"garbage", "worker-1", 0, "imagegen.workers.heartbeats")]
    fake = FakeConsumer(recs)
    pub = InMemoryPublisher("test")
    loop = KafkaConsumerLoop("x:1", "g", ["imagegen.workers.heartbeats"], handle, pub, client=fake)
    stop = asyncio.Event()
    task = asyncio.create_task(loop.run(stop))
    await asyncio.to_thread(fake.wait_settled, 1)
    stop.set()
    await asyncio.wait_for(task, 10)
    assert len(letters(pub)) == 1 and ended(pub) == []


async def test_every_group_that_finds_one_record_poison_publishes_the_same_failure_id() -> None:
    async def handle(env: Envelope, payload: Payload, meta: RecordMeta) -> None:
        raise KeyError("missing")

    rec = record(cancel("j"), "j", 7)
    ids = []
    for _ in range(2):
        _, pub, _ = await run_until_settled([rec], handle, 1, max_attempts=1)
        ids.append(pub.on("imagegen.jobs.ended")[0].event_id)
    assert ids[0] == ids[1]

"""The Kafka publisher during a broker outage (ADR 0008), over a stand-in for librdkafka.

The publisher runs on FastStream's confluent producer; the stand-in replaces the confluent
``Producer`` that FastStream builds, so FastStream's produce-and-await path runs as in production.

Regression: with the broker away, a delivery report of ``_MSG_TIMED_OUT`` made ``publish``
raise at once, so the consuming handler failed and its record was dead-lettered. The real-broker
version of this test is in ``tests/integration/test_broker_crash.py``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException, Message
from faststream.confluent.helpers import client as faststream_client

from imagegen_runtime.faults import Backoff
from imagegen_runtime.kafka import KafkaPublisher
from imagegen_runtime.publishing import InMemoryPublisher, derived_event_id, publish_derived
from imagegen_schemas import Envelope
from imagegen_schemas.jobs import CancellationRequested, GenerationCancelled

pytestmark = pytest.mark.unit


class FakeProducer:
    """Fails the first deliveries with the given codes, then acknowledges."""

    def __init__(self, failures: list[int]) -> None:
        self.failures = list(failures)
        self.pending: list[tuple[Callable[..., None], Message]] = []
        self.produced = 0
        self.lock = threading.Lock()

    def produce(self, topic: str, value: bytes, key: bytes, headers: Any, on_delivery: Any) -> None:
        with self.lock:
            self.produced += 1
            msg = Message(topic=topic, partition=0, offset=self.produced, key=key, value=value)
            self.pending.append((on_delivery, msg))

    def poll(self, timeout: float) -> int:
        with self.lock:
            pending, self.pending = self.pending, []
        for cb, msg in pending:
            err = KafkaError(self.failures.pop(0)) if self.failures else None
            cb(err, msg)
        threading.Event().wait(0.001)
        return len(pending)

    def flush(self, timeout: float = -1) -> int:
        return 0


@pytest.fixture
def publisher(
    monkeypatch: pytest.MonkeyPatch,
) -> Callable[..., tuple[KafkaPublisher, FakeProducer]]:
    def make(failures: list[int], retry_for_s: float = 30.0) -> tuple[KafkaPublisher, FakeProducer]:
        fake = FakeProducer(failures)
        monkeypatch.setattr(faststream_client, "Producer", lambda config, logger=None: fake)
        pub = KafkaPublisher(
            "unused:9092",
            "test",
            retry_for_s=retry_for_s,
            backoff=Backoff(initial_s=0.001, cap_s=0.01),
        )
        return pub, fake

    return make


async def test_publish_retries_message_timeouts_until_the_broker_acknowledges(publisher) -> None:
    pub, fake = publisher([KafkaError._MSG_TIMED_OUT, KafkaError._TRANSPORT] * 2)
    env = await pub.publish(CancellationRequested(job_id="j", requested_by="u"), key="j")
    await pub.close()
    assert env.correlation_id == "j"
    assert fake.produced == 5 and pub.retries == 4


async def test_publish_gives_up_after_retry_for_s_with_the_transient_error(publisher) -> None:
    pub, fake = publisher([KafkaError._MSG_TIMED_OUT] * 10_000, retry_for_s=0.05)
    with pytest.raises(KafkaException) as got:
        await pub.publish(CancellationRequested(job_id="j", requested_by="u"), key="j")
    await pub.close()
    assert got.value.args[0].code() == KafkaError._MSG_TIMED_OUT
    assert fake.produced > 1


async def test_publish_does_not_retry_a_permanent_error(publisher) -> None:
    pub, fake = publisher([KafkaError.MSG_SIZE_TOO_LARGE])
    with pytest.raises(KafkaException):
        await pub.publish(CancellationRequested(job_id="j", requested_by="u"), key="j")
    await pub.close()
    assert fake.produced == 1


async def test_publish_derived_names_cause_and_derives_a_stable_event_id() -> None:
    pub = InMemoryPublisher("test")
    cause = Envelope.wrap(
        CancellationRequested(job_id="j", requested_by="u"), correlation_id="j", producer="api"
    )
    first = await publish_derived(pub, GenerationCancelled(job_id="j"), key="j", cause=cause)
    again = await publish_derived(pub, GenerationCancelled(job_id="j"), key="j", cause=cause)
    other = await publish_derived(
        pub, GenerationCancelled(job_id="j"), key="j", cause=cause.event_id, parts=("token", 2)
    )
    assert first.causation_id == cause.event_id == other.causation_id
    assert first.event_id == again.event_id, "a re-run must publish the same event id"
    assert first.event_id == derived_event_id(cause.event_id, GenerationCancelled.event_type)
    assert other.event_id == derived_event_id(
        cause.event_id, GenerationCancelled.event_type, "token", 2
    )
    assert [e.event_id for e in pub.on("imagegen.jobs.ended")] == [
        first.event_id,
        first.event_id,
        other.event_id,
    ]

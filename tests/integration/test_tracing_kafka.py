"""One trace across real Kafka hops (ADR 0800), exported over OTLP/HTTP to an in-process receiver.

- FastStreamConsumer: a record published inside a span is consumed in a ``consume <type>``
  CONSUMER span, child of the ``publish <type>`` PRODUCER span, in the same trace, with the job
  id attribute and the messaging attributes;
- ReplayingConsumer (the scheduler's and pool-manager's): a live record gets its consumer span,
  and what the decider publishes after the batch, outside any span, continues it (the break
  issue 15 names: JobScheduled carried no traceparent).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator

import pytest
from opentelemetry import trace

from imagegen_runtime.faststream_consumer import FastStreamConsumer
from imagegen_runtime.kafka import KafkaPublisher, RecordMeta, ReplayingConsumer
from imagegen_runtime.tracing import JOB_ID
from imagegen_schemas import Envelope, Payload
from imagegen_schemas.jobs import CancellationRequested
from tests.support.otlp import OtlpReceiver, ReceivedSpan, exporting_to

from .test_kafka import consume_until

pytestmark = pytest.mark.integration
EVENT = CancellationRequested.event_type


@pytest.fixture(scope="module")
def receiver() -> Iterator[OtlpReceiver]:
    with OtlpReceiver() as r:
        yield r


def spans_of(receiver: OtlpReceiver, trace_id: str, wanted: int) -> list[ReceivedSpan]:
    return receiver.wait_for(lambda r: len(r.trace(trace_id)) >= wanted and r.trace(trace_id), 20)


async def test_faststream_consumer_span_is_a_child_of_the_publish_in_one_trace(
    infra, topics, receiver: OtlpReceiver
) -> None:
    job = str(uuid.uuid4())
    topic = topics + "imagegen.jobs.requested"
    pub = KafkaPublisher(infra.kafka_bootstrap, "test", topics)
    got = asyncio.Event()
    seen_in: list[str] = []

    async def handle(env: Envelope, payload: Payload, meta: RecordMeta) -> None:
        if env.correlation_id == job:
            seen_in.append(f"{trace.get_current_span().get_span_context().trace_id:032x}")
            got.set()

    with exporting_to(receiver) as exported:
        with trace.get_tracer("test").start_as_current_span("submit") as root:
            await pub.publish(CancellationRequested(job_id=job, requested_by="t"), key=job)
        trace_id = f"{root.get_span_context().trace_id:032x}"
        consumer = FastStreamConsumer(
            infra.kafka_bootstrap, f"{topics}trace-{job[:6]}", [topic], handle, pub
        )
        try:
            await consume_until(consumer, got)
        finally:
            await pub.close()
        exported.flush()
        spans = spans_of(receiver, trace_id, 3)
    assert seen_in == [trace_id]  # the handler ran inside the job's trace
    [producer] = [s for s in spans if s.kind == "PRODUCER"]
    [consumer_span] = [s for s in spans if s.kind == "CONSUMER"]
    assert producer.parent_id == f"{root.get_span_context().span_id:016x}"
    assert consumer_span.parent_id == producer.span_id
    assert producer.name == f"publish {EVENT}" and consumer_span.name == f"consume {EVENT}"
    assert consumer_span.start_ns >= producer.start_ns
    for span in (producer, consumer_span):
        assert span.attributes[JOB_ID] == job
        assert span.attributes["messaging.system"] == "kafka"
        assert span.attributes["messaging.destination.name"] == topic
    assert consumer_span.attributes["messaging.consumer.group.name"] == f"{topics}trace-{job[:6]}"
    assert consumer_span.attributes["messaging.kafka.offset"] >= 0
    assert (
        producer.attributes["messaging.kafka.offset"]
        == consumer_span.attributes["messaging.kafka.offset"]
    )


async def test_a_deciders_publish_after_the_batch_continues_the_consumed_trace(
    infra, topics, receiver: OtlpReceiver
) -> None:
    job = str(uuid.uuid4())
    topic = topics + "imagegen.jobs.requested"
    pub = KafkaPublisher(infra.kafka_bootstrap, "test", topics)
    decided = asyncio.Event()
    live_seen: list[str] = []

    async def fold(env: Envelope, payload: Payload, meta: RecordMeta, live: bool) -> None:
        if env.correlation_id == job and live and isinstance(payload, CancellationRequested):
            live_seen.append(payload.requested_by)

    async def after_batch() -> None:
        # as the scheduler's ``_decide``: outside the record's span, for the job just folded
        if live_seen == ["api"] and not decided.is_set():
            assert not trace.get_current_span().get_span_context().is_valid
            await pub.publish(CancellationRequested(job_id=job, requested_by="decider"), key=job)
            decided.set()

    decider = ReplayingConsumer(
        infra.kafka_bootstrap, [topic], fold, pub, f"{topics}decider-{job[:6]}", after_batch
    )
    stop = asyncio.Event()
    with exporting_to(receiver) as exported:
        task = asyncio.create_task(decider.run(stop))
        try:
            await asyncio.wait_for(decider.caught_up.wait(), 60)
            with trace.get_tracer("test").start_as_current_span("POST") as root:
                await pub.publish(CancellationRequested(job_id=job, requested_by="api"), key=job)
            await asyncio.wait_for(decided.wait(), 60)
        finally:
            stop.set()
            await asyncio.wait_for(task, 30)
            await pub.close()
        exported.flush()
        trace_id = f"{root.get_span_context().trace_id:032x}"
        # root, publish(api), consume(api), publish(decider), consume(decider)
        spans = spans_of(receiver, trace_id, 5)
    producers = {s.span_id: s for s in spans if s.kind == "PRODUCER"}
    consumers = sorted((s for s in spans if s.kind == "CONSUMER"), key=lambda s: s.start_ns)
    first, second = consumers[0], consumers[1]
    decision = producers[second.parent_id or ""]
    assert producers[first.parent_id or ""].parent_id == f"{root.get_span_context().span_id:016x}"
    assert decision.parent_id == first.span_id  # the decision continues the consumed record
    assert {s.attributes[JOB_ID] for s in [first, second, decision]} == {job}
    assert first.attributes["messaging.consumer.group.name"] == f"{topics}decider-{job[:6]}"

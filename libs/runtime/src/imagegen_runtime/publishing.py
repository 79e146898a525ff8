"""The one way events leave a service: a publisher that adds the envelope, key and trace context.

``Publisher`` is the port; ``KafkaPublisher`` (in :mod:`imagegen_runtime.kafka`) is the real
adapter and :class:`InMemoryPublisher` the fake for unit tests. Both pass
``tests/contract/test_publisher_contract.py``.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Protocol

from opentelemetry import trace

from imagegen_schemas import Envelope, Payload, ce_headers, topic_for

from .tracing import current_traceparent, producer_span


@dataclass(frozen=True)
class Published:
    """What a publisher hands to the transport for one event."""

    topic: str  # full topic name, prefix included
    key: bytes  # aggregate id (job id or worker id)
    envelope: Envelope  # the record value
    headers: list[tuple[str, bytes]]  # CloudEvents-style headers + traceparent


_NAMESPACE = uuid.UUID("5d0b7c6e-2f1a-4c3b-9e8d-7a6b5c4d3e2f")


def derived_event_id(causation_id: str, event_type: str, *parts: object) -> str:
    """A deterministic event id for an event caused by another one.

    A handler that runs twice for one input (redelivery after a crash) publishes the same
    event id twice, so every consumer and projection can drop the duplicate by id.
    """
    name = "/".join([causation_id, event_type, *map(str, parts)])
    return str(uuid.uuid5(_NAMESPACE, name))


async def publish_derived(
    publisher: Publisher,
    payload: Payload,
    *,
    key: str,
    cause: Envelope | str,
    parts: tuple[object, ...] = (),
) -> Envelope:
    """Publish ``payload`` as caused by ``cause``, with an event id derived from it.

    The event id is ``derived_event_id(cause id, payload type, *parts)``: a handler that runs
    again for the same input publishes the same event id, which consumers drop as a duplicate.
    ``cause`` is the causing envelope or its event id; ``parts`` tell apart several events of
    one type caused by one input (e.g. a job id, a fencing token).
    """
    cause_id = cause if isinstance(cause, str) else cause.event_id
    return await publisher.publish(
        payload,
        key=key,
        causation_id=cause_id,
        event_id=derived_event_id(cause_id, payload.event_type, *parts),
    )


class Publisher(Protocol):
    async def publish(
        self,
        payload: Payload,
        *,
        key: str,
        causation_id: str | None = None,
        event_id: str | None = None,
    ) -> Envelope:
        """Publish and return once the transport has durably accepted the event.

        ``event_id`` defaults to a fresh UUID; handlers pass :func:`derived_event_id`.
        """
        ...

    async def close(self) -> None: ...


def build_record(
    payload: Payload,
    *,
    key: str,
    producer: str,
    topic_prefix: str,
    causation_id: str | None,
    event_id: str | None = None,
) -> Published:
    """Envelope, topic, key and headers for one payload (shared by every publisher)."""
    envelope = Envelope.wrap(
        payload, correlation_id=key, producer=producer, causation_id=causation_id, event_id=event_id
    )
    headers = ce_headers(envelope, traceparent=current_traceparent())
    topic = topic_prefix + topic_for(type(payload))
    return Published(topic=topic, key=key.encode(), envelope=envelope, headers=headers)


def job_of(payload: Payload) -> str | None:
    """The job a payload is about (its ``job_id``), or None (worker and pool facts)."""
    job_id = getattr(payload, "job_id", None)
    return job_id if isinstance(job_id, str) and job_id else None


@contextmanager
def traced_record(
    payload: Payload,
    *,
    key: str,
    producer: str,
    topic_prefix: str,
    causation_id: str | None,
    event_id: str | None = None,
) -> Iterator[Published]:
    """:func:`build_record` inside a ``publish <type>`` PRODUCER span (ADR 0800), which lasts
    until the block ends (the transport answered): the record's ``traceparent`` is that span.

    The span is a child of the active span, else of the job's latest consumed span, so every
    event a handler publishes, and a decision published later for a job, stays in its trace.
    An event of no job published outside any span (a heartbeat, a timer's command) gets no
    span and no ``traceparent``: each would start a trace of its own.
    """
    job_id = job_of(payload)

    def record() -> Published:
        return build_record(
            payload,
            key=key,
            producer=producer,
            topic_prefix=topic_prefix,
            causation_id=causation_id,
            event_id=event_id,
        )

    if job_id is None and not trace.get_current_span().get_span_context().is_valid:
        yield record()
        return
    topic = topic_prefix + topic_for(type(payload))
    with producer_span(topic, payload.event_type, key, job_id) as span:
        built = record()
        span.set_attribute("messaging.message.id", built.envelope.event_id)
        yield built


class InMemoryPublisher:
    """Fake publisher: keeps records in order, per topic, in memory."""

    def __init__(self, producer: str = "test", topic_prefix: str = "") -> None:
        self.producer = producer
        self.topic_prefix = topic_prefix
        self.records: list[Published] = []
        self.closed = False

    async def publish(
        self,
        payload: Payload,
        *,
        key: str,
        causation_id: str | None = None,
        event_id: str | None = None,
    ) -> Envelope:
        if self.closed:
            raise RuntimeError("publisher is closed")
        with traced_record(
            payload,
            key=key,
            producer=self.producer,
            topic_prefix=self.topic_prefix,
            causation_id=causation_id,
            event_id=event_id,
        ) as record:
            self.records.append(record)
        return record.envelope

    async def close(self) -> None:
        self.closed = True

    def on(self, topic: str) -> list[Envelope]:
        """Envelopes published to ``topic`` (full name), in order."""
        return [r.envelope for r in self.records if r.topic == topic]

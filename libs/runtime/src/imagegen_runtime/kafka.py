"""Kafka adapters over confluent-kafka: readiness, topic creation, publisher, replaying consumer.

Delivery guarantees (ADR 0003) and the fault model (ADR 0008, :mod:`imagegen_runtime.faults`):
- the publisher is idempotent with ``acks=all`` and ``publish`` returns only after the broker
  acknowledged the record; a transient failure (broker away, ``_MSG_TIMED_OUT``) is retried with
  backoff for ``retry_for_s`` before it is raised;
- the services' consumers run on FastStream (:mod:`imagegen_runtime.faststream_consumer`); the
  stateful deciders' :class:`ReplayingConsumer` replays every topic from offset 0 and applies
  the same fault model live;
- a poison record (unparseable, or a handler that keeps failing with a non-transient error) goes
  to the dead-letter topic with the error and the original bytes (:func:`dead_letter`), and its
  job gets a terminal ``GenerationFailed(poison_event)`` (:func:`fail_poisoned_job`);
- a dead letter redriven by hand (``imagegen dlq redrive``, :mod:`imagegen_runtime.dlq`) is
  handled only by the group that gave up on it (:func:`redrive_for_another_group`); if it fails
  again it is dead-lettered again with every error, and never redriven by itself.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any, cast

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]
from faststream.confluent import KafkaBroker
from faststream.confluent.helpers.config import ConfluentConfig
from opentelemetry import trace

from imagegen_schemas import TOPICS, Envelope, Payload, header_map, parse
from imagegen_schemas.catalog import TOPIC_BY_NAME
from imagegen_schemas.jobs import (
    FailureReason,
    GenerationCancelled,
    GenerationFailed,
    ImageDelivered,
)
from imagegen_schemas.workers import DeadLettered, RecordHeader

from .faults import Backoff, describe, is_transient
from .health import CheckResult
from .logs import job_id_var
from .metrics import DEAD_LETTERED, EVENTS_PUBLISHED
from .publishing import Publisher, derived_event_id, job_of, traced_record
from .tracing import consumer_span, messaging_attributes
from .waiting import sleep_or_stop

log = logging.getLogger(__name__)
tracer = trace.get_tracer("imagegen.kafka")

DEADLETTER_TOPIC = "imagegen.deadletter"


class KafkaUnavailable(RuntimeError):
    """The broker did not answer a metadata request in time."""


def wait_for_kafka(bootstrap: str, timeout_s: float = 60.0) -> int:
    """Block until the cluster answers a metadata request; returns the number of brokers."""
    admin = AdminClient(
        {"bootstrap.servers": bootstrap, "socket.connection.setup.timeout.ms": 2000}
    )
    deadline = time.monotonic() + timeout_s
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            md = admin.list_topics(timeout=min(2.0, max(0.1, deadline - time.monotonic())))
            if md.brokers:
                return len(md.brokers)
        except KafkaException as exc:
            last = exc
    raise KafkaUnavailable(f"no metadata from {bootstrap} within {timeout_s:.0f}s: {last}")


def ensure_topics(bootstrap: str, prefix: str = "", timeout_s: float = 30.0) -> list[str]:
    """Create the catalog's missing topics (explicit partitions and configs); returns those made."""
    admin = AdminClient({"bootstrap.servers": bootstrap})
    existing = set(admin.list_topics(timeout=timeout_s).topics)
    wanted = [
        NewTopic(
            prefix + t.name,
            num_partitions=t.partitions,
            replication_factor=1,
            config=t.kafka_configs(),
        )
        for t in TOPICS
        if prefix + t.name not in existing
    ]
    if not wanted:
        return []
    created = []
    for name, fut in admin.create_topics(wanted, operation_timeout=timeout_s).items():
        try:
            fut.result()
            created.append(name)
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise
    return created


def producer_config(**extra: Any) -> dict[str, Any]:
    """Idempotent producer, acks from every in-sync replica, ordered per key (librdkafka names)."""
    return {
        "enable.idempotence": True,
        "acks": "all",
        "linger.ms": 2,
        "compression.type": "lz4",
        "message.timeout.ms": 30000,
        **extra,
    }


class KafkaPublisher:
    """Publishes payloads in envelopes on FastStream; ``publish`` resolves once acknowledged.

    The transport is FastStream's confluent producer (a ``KafkaBroker`` used only to publish,
    connected on the first publish): it produces and awaits the broker's delivery report. Ours
    on top: the envelope, key and CloudEvents headers (:func:`build_record`, shared with the
    in-memory fake), and the fault model's retry (ADR 0008): a transient failure (the broker
    away: ``_MSG_TIMED_OUT``, ``_TRANSPORT`` ...) is retried with capped exponential backoff for
    up to ``retry_for_s`` seconds, then raised; the record keeps its event id, so a retry that
    duplicates it is dropped by consumers like any redelivery. ``extra`` holds librdkafka
    settings for the producer (``message.timeout.ms`` ...).
    """

    def __init__(
        self,
        bootstrap: str,
        producer: str,
        topic_prefix: str = "",
        *,
        retry_for_s: float = 120.0,
        backoff: Backoff | None = None,
        **extra: Any,
    ) -> None:
        self.producer_name = producer
        self.topic_prefix = topic_prefix
        self.retry_for_s = retry_for_s
        self.backoff = backoff or Backoff(initial_s=0.2, cap_s=5.0)
        self.retries = 0  # transient failures retried so far (exposed for operators' metrics)
        self._broker = KafkaBroker(
            bootstrap,
            config=cast(ConfluentConfig, producer_config(**extra)),
            allow_auto_create_topics=False,
            client_id=f"imagegen-{producer}",
            logger=logging.getLogger("imagegen.faststream"),
            log_level=logging.DEBUG,
        )
        self._connected: asyncio.Task[Any] | None = None
        self._closed = False

    async def publish(
        self,
        payload: Payload,
        *,
        key: str,
        causation_id: str | None = None,
        event_id: str | None = None,
    ) -> Envelope:
        with traced_record(
            payload,
            key=key,
            producer=self.producer_name,
            topic_prefix=self.topic_prefix,
            causation_id=causation_id,
            event_id=event_id,
        ) as record:
            partition, offset = await self.send_raw(
                record.topic, record.key, record.envelope.to_json(), record.headers
            )
            span = trace.get_current_span()
            span.set_attribute("messaging.destination.partition.id", str(partition))
            span.set_attribute("messaging.kafka.offset", offset)
        EVENTS_PUBLISHED.labels(record.topic, record.envelope.type).inc()
        return record.envelope

    async def send_raw(
        self, topic: str, key: bytes | None, value: bytes, headers: list[tuple[str, bytes]]
    ) -> tuple[int, int]:
        """Produce bytes as they are; returns (partition, offset) once acknowledged.

        Transient failures are retried (see the class docstring); others raise at once.
        """
        give_up = time.monotonic() + self.retry_for_s
        attempt = 0
        while True:
            attempt += 1
            try:
                return await self._send_once(topic, key, value, headers)
            except KafkaException as exc:
                if self._closed or not is_transient(exc) or time.monotonic() >= give_up:
                    raise
                delay = self.backoff.delay(attempt)
                self.retries += 1
                log.warning(
                    "publish failed; retrying",
                    extra={"topic": topic, "attempt": attempt, "error": describe(exc)},
                )
                await asyncio.sleep(min(delay, max(0.0, give_up - time.monotonic())))

    async def _send_once(
        self, topic: str, key: bytes | None, value: bytes, headers: list[tuple[str, bytes]]
    ) -> tuple[int, int]:
        if self._closed:
            raise RuntimeError("publisher is closed")
        if self._connected is None:  # one connect, however many publish at once
            self._connected = asyncio.ensure_future(self._broker.connect())
        await asyncio.shield(self._connected)
        text = header_map(list(headers))
        while True:
            try:
                msg = await self._broker.publish(
                    value,
                    topic,
                    key=key,
                    headers=text,
                    correlation_id=text.get("ce_subject"),
                )
                break
            except BufferError:  # local queue full: let deliveries drain, then retry
                await asyncio.sleep(0.01)
        if msg is None:
            raise RuntimeError(f"no delivery report for a record on {topic}")
        return _int(msg.partition()), _int(msg.offset())

    async def close(self) -> None:
        """Flush what is in flight (FastStream's producer stop) and stop publishing."""
        self._closed = True
        if self._connected is not None:
            await self._broker.stop()


@dataclass(frozen=True)
class RecordMeta:
    """Where a consumed record came from."""

    topic: str  # full topic name
    partition: int
    offset: int
    key: str | None
    headers: dict[str, str]


Handler = Callable[[Envelope, Payload, RecordMeta], Awaitable[None]]


def _int(value: int | None) -> int:
    """A partition or offset of a consumed or acknowledged record (never None there)."""
    return -1 if value is None else value


def record_meta(msg: Message) -> RecordMeta:
    key = msg.key()
    raw_headers = msg.headers()
    headers = [
        (k, v.encode() if isinstance(v, str) else v)
        for k, v in (raw_headers.items() if isinstance(raw_headers, dict) else raw_headers or [])
    ]
    return RecordMeta(
        msg.topic() or "",
        _int(msg.partition()),
        _int(msg.offset()),
        key.decode(errors="replace") if isinstance(key, bytes) and key else None,
        header_map(headers),
    )


def consumed_attributes(meta: RecordMeta, envelope: Envelope, group: str) -> dict[str, Any]:
    """The messaging attributes of a consumed record's span."""
    return messaging_attributes(
        meta.topic,
        event_type=envelope.type,
        event_id=envelope.event_id,
        key=meta.key,
        partition=meta.partition,
        offset=meta.offset,
        group=group,
    )


def decode(msg: Message) -> tuple[Envelope, Payload]:
    """The envelope and typed payload of a record; raises on a malformed one."""
    envelope = Envelope.from_json(msg.value() or b"")
    return envelope, parse(envelope)


class Hold:
    """A transient fault that holds a consumer: what, where, since when (for ``/readyz``)."""

    def __init__(self) -> None:
        self.error: str | None = None  # describe() of the last transient error; None = healthy
        self.where = ""  # topic[partition]@offset of the record being retried
        self.since = 0.0  # monotonic time the fault began
        self.attempts = 0

    def hit(self, exc: BaseException, meta: RecordMeta) -> None:
        if self.error is None:
            self.since = time.monotonic()
            self.attempts = 0
        self.error = describe(exc)
        self.where = f"{meta.topic}[{meta.partition}]@{meta.offset}"
        self.attempts += 1

    def clear(self) -> None:
        self.error = None

    def check(self) -> CheckResult:
        if self.error is None:
            return CheckResult(True)
        held = time.monotonic() - self.since
        return CheckResult(
            False,
            f"retrying transient fault on {self.where} for {held:.0f} s "
            f"({self.attempts} attempts): {self.error}",
        )


# Headers `imagegen dlq redrive` (imagegen_runtime.dlq, docs/dlq.md) puts on a redriven record.
REDRIVE_OF = "imagegen-redrive-of"  # the dead letter's id
REDRIVE_GROUP = "imagegen-redrive-group"  # the one consumer group that handles the copy
REDRIVE_ERRORS = "imagegen-redrive-errors"  # JSON list: the errors of its dead letters so far
REDRIVE_COUNT = "imagegen-redrives"  # how many times the record was redriven
KEPT_ERRORS = 10  # previous errors a dead letter carries (the newest)


def raw_headers(msg: Message) -> list[tuple[str, bytes]]:
    """A record's headers as (name, bytes), in order."""
    found = msg.headers()
    pairs = found.items() if isinstance(found, dict) else found or []
    return [(k, v.encode() if isinstance(v, str) else v or b"") for k, v in pairs]


def redrive_for_another_group(headers: dict[str, str], group: str) -> bool:
    """Whether the record is a redriven copy meant for another consumer group (which gave up on
    it); every other group handled the original already, so it commits the copy unhandled."""
    target = headers.get(REDRIVE_GROUP)
    return bool(target) and target != group


def _previous_errors(headers: dict[str, str]) -> list[str]:
    try:
        found = json.loads(headers.get(REDRIVE_ERRORS) or "[]")
    except ValueError:
        return []
    return [str(e)[:8000] for e in found][-KEPT_ERRORS:] if isinstance(found, list) else []


async def dead_letter(publisher: Publisher, msg: Message, group: str, error: str) -> None:
    """Publish ``msg`` with ``error`` to the dead-letter topic (its bytes and headers kept).

    A redriven record (``imagegen-redrive-*`` headers) that fails again gets a new letter with
    the earlier errors and the letter it came from; nothing redrives it again by itself. The
    letter's event id is derived from the record and the group, so dead-lettering the same record
    again (a crash before the commit) writes the same letter.
    """
    key = msg.key()
    headers = raw_headers(msg)
    text = header_map(list(headers))
    count = text.get(REDRIVE_COUNT, "0")
    letter = DeadLettered(
        source_topic=msg.topic(),
        source_partition=msg.partition(),
        source_offset=msg.offset(),
        consumer_group=group,
        error=error[:8000],
        original_key_b64=base64.b64encode(key).decode() if key else None,
        original_value_b64=base64.b64encode(msg.value() or b"").decode(),
        original_headers=tuple(
            RecordHeader(name=k, value_b64=base64.b64encode(v).decode()) for k, v in headers
        ),
        redrive_of=text.get(REDRIVE_OF) or None,
        redrives=int(count) if count.isdigit() else 0,
        previous_errors=tuple(_previous_errors(text)),
    )
    source = f"{msg.topic()}/{msg.partition()}/{msg.offset()}"
    await publisher.publish(
        letter,
        key=f"{msg.topic()}/{msg.partition()}",
        event_id=derived_event_id(source, letter.event_type, group),
    )
    DEAD_LETTERED.labels(msg.topic(), group).inc()
    log.error(
        "dead-lettered", extra={"topic": msg.topic(), "offset": msg.offset(), "error": error[:500]}
    )


def _keyed_by_job(topic: str) -> bool:
    """Whether ``topic`` (prefix included) is a catalog topic keyed by job id."""
    return any(
        topic.endswith(name) and spec.key == "job_id" for name, spec in TOPIC_BY_NAME.items()
    )


def poisoned_job_failure(
    meta: RecordMeta, envelope: Envelope | None, payload: Payload | None, error: str
) -> tuple[GenerationFailed, str, str] | None:
    """The terminal failure a poison record's job gets: (event, job id, event id), or None.

    None when the job is unknown (a worker-keyed topic, no key) or when the record is itself
    a terminal fact of its job (delivered, cancelled, terminally failed): that job has ended in
    the log already, and failing it again would only contradict it (or loop on our own event).
    The event id is derived from the record, so every consumer group that finds the same record
    poison publishes the same event, which consumers drop as a duplicate.
    """
    if isinstance(payload, ImageDelivered | GenerationCancelled):
        return None
    if isinstance(payload, GenerationFailed) and payload.terminal:
        return None
    job_id = getattr(payload, "job_id", None)
    if not isinstance(job_id, str) or not job_id:
        if not _keyed_by_job(meta.topic):
            return None
        job_id = envelope.correlation_id if envelope is not None else meta.key
    if not job_id:
        return None
    source = envelope.event_id if envelope is not None else f"{meta.topic}/{meta.partition}"
    source += "" if envelope is not None else f"/{meta.offset}"
    kind = envelope.type if envelope is not None else "record"
    failed = GenerationFailed(
        job_id=job_id,
        reason=FailureReason.POISON_EVENT,
        message=f"{kind} at {meta.topic}[{meta.partition}]@{meta.offset}: {error}"[:4000],
        terminal=True,
    )
    return failed, job_id, derived_event_id(source, failed.event_type, failed.reason.value)


async def fail_poisoned_job(
    publisher: Publisher,
    meta: RecordMeta,
    envelope: Envelope | None,
    payload: Payload | None,
    error: str,
) -> None:
    """Publish the poison record's job's terminal ``GenerationFailed`` (see above), if any.

    None for a redriven record: its job got that failure when the record was first dead-lettered.
    """
    if meta.headers.get(REDRIVE_OF):
        return
    found = poisoned_job_failure(meta, envelope, payload, error)
    if found is None:
        return
    failed, job_id, event_id = found
    await publisher.publish(
        failed,
        key=job_id,
        causation_id=envelope.event_id if envelope is not None else None,
        event_id=event_id,
    )
    log.error("job failed: poison event", extra={"job_id": job_id, "topic": meta.topic})


ReplayHandler = Callable[[Envelope, Payload, RecordMeta, bool], Awaitable[None]]


class ReplayingConsumer:
    """Rebuilds a service's state from offset 0 of its topics, then follows them live.

    For stateful single-instance deciders (scheduler, pool-manager): their state is a fold of
    the log, so they keep no offsets. The handler gets ``live=False`` for records that were in
    the log when the process started (fold only, decide nothing) and ``live=True`` after.
    ``caught_up`` is set once every partition reached its start-time high watermark.
    Malformed records are dead-lettered only when live (at most once per record per process);
    a handler's transient fault is retried with backoff for as long as it takes (ADR 0008).
    """

    def __init__(
        self,
        bootstrap: str,
        topics: Iterable[str],
        handler: ReplayHandler,
        deadletter: Publisher,
        name: str,
        after_batch: Callable[[], Awaitable[None]] | None = None,
        batch_size: int = 500,
        backoff: Backoff | None = None,
        client: Consumer | None = None,
    ) -> None:
        self.bootstrap = bootstrap
        self._client = client  # replaces the confluent consumer (tests only)
        self.topics = list(topics)
        self.handler = handler
        self.after_batch = after_batch  # e.g. decide once per batch, not once per record
        self.batch_size = batch_size
        self.deadletter = deadletter
        self.name = name
        self.caught_up = asyncio.Event()
        self.records = 0
        self.backoff = backoff or Backoff(initial_s=0.2, cap_s=30.0)
        self._hold = Hold()

    async def run(self, stop: asyncio.Event) -> None:
        consumer = self._client or Consumer(
            {
                "bootstrap.servers": self.bootstrap,
                "group.id": self.name,
                "enable.auto.commit": False,
                "isolation.level": "read_committed",
            }
        )
        while True:  # a broker that is away or moving leaders is waited out (ADR 0008)
            try:
                parts, remaining = await self._plan(consumer)
                break
            except KafkaException as exc:
                if not is_transient(exc):
                    await asyncio.to_thread(consumer.close)
                    raise
                self._hold.hit(exc, RecordMeta(",".join(self.topics), -1, -1, None, {}))
                log.warning("transient fault at start; retrying", extra={"error": describe(exc)})
                if await sleep_or_stop(stop, self.backoff.delay(self._hold.attempts)):
                    await asyncio.to_thread(consumer.close)
                    return
        self._hold.clear()
        consumer.assign(parts)
        if not remaining:
            self.caught_up.set()
        try:
            while not stop.is_set():
                batch = await asyncio.to_thread(self._next_batch, consumer)
                for msg in batch:
                    if msg.error():
                        continue
                    where = (msg.topic() or "", _int(msg.partition()))
                    live = self.caught_up.is_set()
                    await self._process(msg, live, stop)
                    if (
                        not live
                        and where in remaining
                        and _int(msg.offset()) + 1 >= remaining[where]
                    ):
                        del remaining[where]
                        if not remaining:
                            self.caught_up.set()
                            log.info("caught up", extra={"records": self.records})
                if batch and self.after_batch is not None and self.caught_up.is_set():
                    await self.after_batch()
        finally:
            await asyncio.to_thread(consumer.close)

    def _next_batch(self, consumer: Consumer) -> list[Message]:
        """Wait (up to 0.2 s) for one record, then take whatever else is already fetched.

        ``consume(n, timeout)`` alone would wait the whole timeout for ``n`` records, adding
        up to 0.2 s of latency to every decision under light load.
        """
        first = consumer.poll(0.2)
        if first is None:
            return []
        return [first, *consumer.consume(self.batch_size - 1, 0)]

    async def _plan(
        self, consumer: Consumer
    ) -> tuple[list[TopicPartition], dict[tuple[str, int], int]]:
        """Every partition of the topics from offset 0, and the end offset replay must reach."""
        from confluent_kafka import OFFSET_BEGINNING

        md = await asyncio.to_thread(consumer.list_topics, timeout=10)
        parts = [
            TopicPartition(t, p, OFFSET_BEGINNING)
            for t in self.topics
            for p in sorted(md.topics[t].partitions)
        ]
        remaining: dict[tuple[str, int], int] = {}
        for tp in parts:
            _, high = await asyncio.to_thread(consumer.get_watermark_offsets, tp, 10)
            if high > 0:
                remaining[(tp.topic, tp.partition)] = high
        return parts, remaining

    def health(self) -> CheckResult:
        """Not ready while a transient fault holds the replay (the reason names it)."""
        return self._hold.check()

    async def _process(self, msg: Message, live: bool, stop: asyncio.Event) -> None:
        """Fold one record. Transient faults are waited out; poison is dead-lettered when live.

        The handler may run again for the same record after a transient fault, as it may for a
        duplicate record in the log: it must be idempotent per event id (ADR 0005).
        """
        self.records += 1
        meta = record_meta(msg)
        if redrive_for_another_group(meta.headers, self.name):
            return
        try:
            envelope, payload = decode(msg)
        except Exception as exc:
            if live:
                await self._poison(msg, meta, None, None, f"unparseable record: {exc}", stop)
            return
        token = job_id_var.set(envelope.correlation_id)
        try:
            # A live record of a job (or one carrying a trace) is handled in a ``consume <type>``
            # span; a replayed one only leaves its trace for the job's later decisions (ADR 0800).
            attrs = consumed_attributes(meta, envelope, self.name) if live else {}
            with consumer_span(meta.headers, job_of(payload), attrs, live=live):
                while True:
                    try:
                        await self.handler(envelope, payload, meta, live)
                    except Exception as exc:
                        if is_transient(exc):
                            self._hold.hit(exc, meta)
                            where = self._hold.where
                            log.warning("transient fault; retrying", extra={"where": where})
                            if await sleep_or_stop(stop, self.backoff.delay(self._hold.attempts)):
                                return
                            continue
                        # A poison event must not crash-loop a replaying service.
                        log.exception("handler failed", extra={"live": live})
                        if live:
                            error = f"handler failed: {exc!r}"
                            await self._poison(msg, meta, envelope, payload, error, stop)
                    self._hold.clear()
                    return
        finally:
            job_id_var.reset(token)

    async def _poison(
        self,
        msg: Message,
        meta: RecordMeta,
        envelope: Envelope | None,
        payload: Payload | None,
        error: str,
        stop: asyncio.Event,
    ) -> None:
        while True:
            try:
                await dead_letter(self.deadletter, msg, self.name, error)
                await fail_poisoned_job(self.deadletter, meta, envelope, payload, error)
                return
            except Exception as exc:
                if not is_transient(exc):
                    raise
                self._hold.hit(exc, meta)
                if await sleep_or_stop(stop, self.backoff.delay(self._hold.attempts)):
                    return

"""Kafka adapters over confluent-kafka: readiness, topic creation, publisher, consumer loop.

Delivery guarantees (see docs/adr/0003-kafka-client.md):
- the publisher is idempotent with ``acks=all`` and ``publish`` returns only after the broker
  acknowledged the record;
- the consumer commits a record's offset synchronously *after* its handler's effect, so a crash
  means redelivery (handlers are idempotent), never loss;
- a record that cannot be parsed, or whose handler keeps failing, goes to the dead-letter topic
  with the error and the original bytes, and the consumer goes on.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer
from confluent_kafka.admin import AdminClient, NewTopic
from opentelemetry import trace

from imagegen_schemas import TOPICS, Envelope, Payload, header_map, parse
from imagegen_schemas.workers import DeadLettered

from .logs import job_id_var
from .metrics import DEAD_LETTERED, EVENTS_CONSUMED, EVENTS_PUBLISHED, HANDLER_SECONDS
from .publishing import build_record
from .tracing import context_from_headers

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


def producer_config(bootstrap: str, **extra: Any) -> dict[str, Any]:
    """Idempotent producer, acks from every in-sync replica, ordered per key."""
    return {
        "bootstrap.servers": bootstrap,
        "enable.idempotence": True,
        "acks": "all",
        "linger.ms": 2,
        "compression.type": "lz4",
        "message.timeout.ms": 30000,
        **extra,
    }


class KafkaPublisher:
    """Publishes payloads in envelopes; ``publish`` resolves once the broker acknowledged."""

    def __init__(self, bootstrap: str, producer: str, topic_prefix: str = "", **extra: Any) -> None:
        self.producer_name = producer
        self.topic_prefix = topic_prefix
        self._producer = Producer(producer_config(bootstrap, **extra))
        self._stop = threading.Event()
        self._closed = False
        # librdkafka runs delivery callbacks inside poll(); one thread keeps polling.
        self._poller = threading.Thread(
            target=self._poll_loop, name="kafka-producer-poll", daemon=True
        )
        self._poller.start()

    def _poll_loop(self) -> None:
        while not self._stop.is_set():
            self._producer.poll(0.05)

    async def publish(
        self,
        payload: Payload,
        *,
        key: str,
        causation_id: str | None = None,
        event_id: str | None = None,
    ) -> Envelope:
        record = build_record(
            payload,
            key=key,
            producer=self.producer_name,
            topic_prefix=self.topic_prefix,
            causation_id=causation_id,
            event_id=event_id,
        )
        await self.send_raw(record.topic, record.key, record.envelope.to_json(), record.headers)
        EVENTS_PUBLISHED.labels(record.topic, record.envelope.type).inc()
        return record.envelope

    async def send_raw(
        self, topic: str, key: bytes | None, value: bytes, headers: list[tuple[str, bytes]]
    ) -> tuple[int, int]:
        """Produce bytes as they are; returns (partition, offset) once acknowledged."""
        if self._closed:
            raise RuntimeError("publisher is closed")
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[tuple[int, int]] = loop.create_future()

        def on_delivery(err: KafkaError | None, msg: Message) -> None:
            def settle() -> None:
                if fut.done():
                    return
                if err is not None:
                    fut.set_exception(KafkaException(err))
                else:
                    fut.set_result((msg.partition(), msg.offset()))

            loop.call_soon_threadsafe(settle)

        while True:
            try:
                self._producer.produce(
                    topic, value=value, key=key, headers=headers, on_delivery=on_delivery
                )
                break
            except BufferError:  # local queue full: let deliveries drain, then retry
                await asyncio.sleep(0.01)
        return await fut

    async def close(self) -> None:
        self._closed = True
        await asyncio.to_thread(self._producer.flush, 10.0)
        self._stop.set()
        self._poller.join(timeout=2)


@dataclass(frozen=True)
class RecordMeta:
    """Where a consumed record came from."""

    topic: str  # full topic name
    partition: int
    offset: int
    key: str | None
    headers: dict[str, str]


Handler = Callable[[Envelope, Payload, RecordMeta], Awaitable[None]]


def record_meta(msg: Message) -> RecordMeta:
    return RecordMeta(
        msg.topic(),
        msg.partition(),
        msg.offset(),
        msg.key().decode(errors="replace") if msg.key() else None,
        header_map(msg.headers()),
    )


def decode(msg: Message) -> tuple[Envelope, Payload]:
    """The envelope and typed payload of a record; raises on a malformed one."""
    envelope = Envelope.from_json(msg.value() or b"")
    return envelope, parse(envelope)


class KafkaConsumerLoop:
    """Consumes topics in a group; handles each record, then commits its offset.

    Order per partition is kept: one record at a time. A record that fails to parse goes to the
    dead-letter topic at once; a handler that raises is retried ``max_attempts`` times with
    exponential backoff, then dead-lettered. Either way the offset is committed afterwards.
    """

    def __init__(
        self,
        bootstrap: str,
        group_id: str,
        topics: Iterable[str],
        handler: Handler,
        deadletter: KafkaPublisher,
        *,
        max_attempts: int = 3,
        backoff_s: float = 0.2,
        **extra: Any,
    ) -> None:
        self.group_id = group_id
        self.topics = list(topics)
        self.handler = handler
        self.deadletter = deadletter
        self.max_attempts = max_attempts
        self.backoff_s = backoff_s
        self.assigned = asyncio.Event()
        self._consumer = Consumer(
            {
                "bootstrap.servers": bootstrap,
                "group.id": group_id,
                "enable.auto.commit": False,
                "auto.offset.reset": "earliest",
                "isolation.level": "read_committed",
                "session.timeout.ms": 10000,
                "heartbeat.interval.ms": 1000,
                **extra,
            }
        )
        self.handled = 0
        self.dead_lettered = 0

    async def run(self, stop: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()

        def on_assign(consumer: Consumer, partitions: list[Any]) -> None:
            loop.call_soon_threadsafe(self.assigned.set)

        self._consumer.subscribe(self.topics, on_assign=on_assign)
        try:
            while not stop.is_set():
                msg = await asyncio.to_thread(self._consumer.poll, 0.2)
                if msg is None:
                    continue
                if msg.error():
                    if msg.error().code() != KafkaError._PARTITION_EOF:
                        log.warning("kafka consumer error", extra={"error": str(msg.error())})
                    continue
                await self._process(msg)
                await asyncio.to_thread(self._consumer.commit, message=msg, asynchronous=False)
        finally:
            await asyncio.to_thread(self._consumer.close)

    async def _process(self, msg: Message) -> None:
        meta = record_meta(msg)
        try:
            envelope, payload = decode(msg)
        except Exception as exc:  # malformed: no retry can fix it
            await self._dead_letter(msg, f"unparseable record: {exc}")
            return
        token = job_id_var.set(envelope.correlation_id)
        try:
            with (
                tracer.start_as_current_span(
                    f"consume {envelope.type}",
                    context=context_from_headers(meta.headers),  # type: ignore[arg-type]
                ),
                HANDLER_SECONDS.labels(meta.topic, self.group_id).time(),
            ):
                for attempt in range(1, self.max_attempts + 1):
                    try:
                        await self.handler(envelope, payload, meta)
                        self.handled += 1
                        EVENTS_CONSUMED.labels(meta.topic, self.group_id).inc()
                        return
                    except Exception as exc:
                        log.warning(
                            "handler failed", extra={"attempt": attempt, "error": repr(exc)}
                        )
                        if attempt == self.max_attempts:
                            await self._dead_letter(msg, f"handler failed {attempt} times: {exc!r}")
                            return
                        await asyncio.sleep(self.backoff_s * 2 ** (attempt - 1))
        finally:
            job_id_var.reset(token)

    async def _dead_letter(self, msg: Message, error: str) -> None:
        await dead_letter(self.deadletter, msg, self.group_id, error)
        self.dead_lettered += 1


async def dead_letter(publisher: KafkaPublisher, msg: Message, group: str, error: str) -> None:
    """Publish ``msg`` with ``error`` to the dead-letter topic (its bytes kept for replay)."""
    key = msg.key()
    letter = DeadLettered(
        source_topic=msg.topic(),
        source_partition=msg.partition(),
        source_offset=msg.offset(),
        consumer_group=group,
        error=error[:8000],
        original_key_b64=base64.b64encode(key).decode() if key else None,
        original_value_b64=base64.b64encode(msg.value() or b"").decode(),
    )
    await publisher.publish(letter, key=f"{msg.topic()}/{msg.partition()}")
    DEAD_LETTERED.labels(msg.topic(), group).inc()
    log.error(
        "dead-lettered", extra={"topic": msg.topic(), "offset": msg.offset(), "error": error[:500]}
    )


ReplayHandler = Callable[[Envelope, Payload, RecordMeta, bool], Awaitable[None]]


class ReplayingConsumer:
    """Rebuilds a service's state from offset 0 of its topics, then follows them live.

    For stateful single-instance deciders (scheduler, pool-manager): their state is a fold of
    the log, so they keep no offsets. The handler gets ``live=False`` for records that were in
    the log when the process started (fold only, decide nothing) and ``live=True`` after.
    ``caught_up`` is set once every partition reached its start-time high watermark.
    Malformed records are dead-lettered only when live (at most once per record per process).
    """

    def __init__(
        self,
        bootstrap: str,
        topics: Iterable[str],
        handler: ReplayHandler,
        deadletter: KafkaPublisher,
        name: str,
        after_batch: Callable[[], Awaitable[None]] | None = None,
        batch_size: int = 500,
    ) -> None:
        self.bootstrap = bootstrap
        self.topics = list(topics)
        self.handler = handler
        self.after_batch = after_batch  # e.g. decide once per batch, not once per record
        self.batch_size = batch_size
        self.deadletter = deadletter
        self.name = name
        self.caught_up = asyncio.Event()
        self.records = 0

    async def run(self, stop: asyncio.Event) -> None:
        from confluent_kafka import OFFSET_BEGINNING, TopicPartition

        consumer = Consumer(
            {
                "bootstrap.servers": self.bootstrap,
                "group.id": self.name,
                "enable.auto.commit": False,
                "isolation.level": "read_committed",
            }
        )
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
        consumer.assign(parts)
        if not remaining:
            self.caught_up.set()
        try:
            while not stop.is_set():
                batch = await asyncio.to_thread(self._next_batch, consumer)
                for msg in batch:
                    if msg.error():
                        continue
                    tp = (msg.topic(), msg.partition())
                    live = self.caught_up.is_set()
                    await self._process(msg, live)
                    if not live and tp in remaining and msg.offset() + 1 >= remaining[tp]:
                        del remaining[tp]
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

    async def _process(self, msg: Message, live: bool) -> None:
        self.records += 1
        meta = record_meta(msg)
        try:
            envelope, payload = decode(msg)
        except Exception as exc:
            if live:
                await dead_letter(self.deadletter, msg, self.name, f"unparseable record: {exc}")
            return
        token = job_id_var.set(envelope.correlation_id)
        try:
            await self.handler(envelope, payload, meta, live)
        except Exception as exc:  # a poison event must not crash-loop a replaying service
            log.exception("handler failed", extra={"live": live})
            if live:
                await dead_letter(self.deadletter, msg, self.name, f"handler failed: {exc!r}")
        finally:
            job_id_var.reset(token)

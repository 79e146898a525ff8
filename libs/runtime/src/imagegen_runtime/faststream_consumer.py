"""The services' consumer: a FastStream subscriber with the fault model (ADR 0008) as middleware.

:class:`FastStreamConsumer` consumes topics in a group on ``faststream[confluent]`` (poll,
group membership, dispatch and seeks are FastStream's) and settles every record itself, through
:func:`fault_model_middleware`, with ``AckPolicy.MANUAL``:
- success: the record's own offset is committed synchronously, after the effect; a commit
  refused because this member lost its group membership is logged and counted, and the loop goes
  on (FastStream's ``ack`` would commit the consumer's positions asynchronously, and a refused
  commit would go unseen);
- transient fault (:func:`~imagegen_runtime.faults.is_transient`): back off, then ``nack`` (a
  seek back to the record, so nothing after it overtakes it); FastStream takes no new record
  meanwhile (one record at a time) and :meth:`FastStreamConsumer.health` names the fault for
  ``/readyz`` until the record is handled; never dead-lettered;
- unparseable: poison at once;
- any other error: ``nack`` with backoff until ``max_attempts`` failures, then poison: dead-letter
  it, fail its job (``GenerationFailed(poison_event)``), commit.
A stop during a backoff cancels the wait and commits nothing: the record comes again on restart.
An error while settling that is not transient (a dead letter refused for good, a commit error
other than lost membership) stops the consumer: ``run`` raises it, and the service exits for its
supervisor to restart, as with any crash, rather than let a later commit pass the record.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, cast

from confluent_kafka import Consumer, KafkaException, Message, TopicPartition
from faststream import BaseMiddleware
from faststream.confluent import KafkaBroker
from faststream.confluent.annotations import KafkaMessage
from faststream.confluent.helpers.config import ConfluentConfig
from faststream.message import StreamMessage
from faststream.middlewares import AckPolicy

from imagegen_schemas import Envelope, Payload, parse

from .faults import Backoff, describe, is_lost_membership, is_transient
from .health import CheckResult
from .kafka import (
    Handler,
    Hold,
    consumed_attributes,
    dead_letter,
    decode,
    fail_poisoned_job,
    record_meta,
    redrive_for_another_group,
)
from .logs import job_id_var
from .metrics import EVENTS_CONSUMED, HANDLER_SECONDS
from .publishing import Publisher, job_of
from .tracing import consumer_span

log = logging.getLogger(__name__)

Where = tuple[str, int, int]  # topic, partition, offset


class Unparseable(Exception):
    """A record whose bytes are not an envelope of a known payload: poison at once."""


class SettleFailed(Exception):
    """Settling a record failed for a reason that is not transient: the consumer stops."""


class FastStreamConsumer:
    """Consumes ``topics`` in group ``group_id`` with ``handler``; faults follow ADR 0008.

    The same contract as the replaying deciders' consumer: ``run(stop)``, ``health()``, the
    ``assigned`` event, and the counters ``handled``, ``dead_lettered`` and ``commits_refused``.
    ``extra`` holds librdkafka settings for the consumer (``session.timeout.ms`` ...).
    """

    def __init__(
        self,
        bootstrap: str,
        group_id: str,
        topics: Iterable[str],
        handler: Handler,
        deadletter: Publisher,
        *,
        max_attempts: int = 3,
        backoff_s: float = 0.2,
        backoff_cap_s: float = 30.0,
        **extra: Any,
    ) -> None:
        self.bootstrap = bootstrap
        self.group_id = group_id
        self.topics = list(topics)
        self.handler = handler
        self.deadletter = deadletter
        self.max_attempts = max_attempts
        self.backoff = Backoff(initial_s=backoff_s, cap_s=backoff_cap_s)
        self.assigned = asyncio.Event()
        self.handled = 0
        self.dead_lettered = 0
        self.commits_refused = 0
        self.skipped_redrives = 0  # redriven copies meant for another group, committed unhandled
        self.hold = Hold()
        self._extra = dict(extra)  # librdkafka names; they win over the settings below
        self._failed: BaseException | None = None
        self._failed_event = asyncio.Event()

    def health(self) -> CheckResult:
        """Not ready until the group assigned partitions, or while a transient fault holds."""
        if not self.assigned.is_set():
            return CheckResult(False, "waiting for the consumer group to assign partitions")
        return self.hold.check()

    def broker(self) -> KafkaBroker:
        """A FastStream broker with this consumer's subscriber and fault model registered."""
        loop = asyncio.get_running_loop()

        def on_assign(consumer: Consumer, partitions: list[TopicPartition]) -> None:
            loop.call_soon_threadsafe(self.assigned.set)

        broker = KafkaBroker(
            self.bootstrap,
            # Topics are made by ensure_topics with their partitions and configs (ADR 0003),
            # never by a subscriber with the broker's defaults.
            allow_auto_create_topics=False,
            config=cast(ConfluentConfig, self._extra) if self._extra else None,
            middlewares=[fault_model_middleware(self)],
            logger=logging.getLogger("imagegen.faststream"),
            log_level=logging.DEBUG,  # FastStream's per-record lines; ours are in the middleware
        )
        subscriber = broker.subscriber(
            *self.topics,
            group_id=self.group_id,
            auto_offset_reset="earliest",
            isolation_level="read_committed",
            session_timeout_ms=10000,
            heartbeat_interval_ms=1000,
            ack_policy=AckPolicy.MANUAL,
            on_assign=on_assign,
        )
        subscriber(self.on_record)
        return broker

    async def run(self, stop: asyncio.Event) -> None:
        broker = self.broker()
        async with broker:
            await broker.start()
            waits = [
                asyncio.create_task(stop.wait()),
                asyncio.create_task(self._failed_event.wait()),
            ]
            try:
                await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for task in waits:
                    task.cancel()
        if self._failed is not None:
            raise self._failed

    async def on_record(self, message: KafkaMessage) -> None:
        """The subscriber's handler: decode, then run the service's handler with its context."""
        raw = message.raw_message
        assert isinstance(raw, Message)  # not a batch subscriber
        meta = record_meta(raw)
        try:
            envelope, payload = decode(raw)
        except Exception as exc:
            raise Unparseable(str(exc)) from exc
        token = job_id_var.set(envelope.correlation_id)
        try:
            with (
                consumer_span(
                    meta.headers,
                    job_of(payload),
                    consumed_attributes(meta, envelope, self.group_id),
                ),
                HANDLER_SECONDS.labels(meta.topic, self.group_id).time(),
            ):
                await self.handler(envelope, payload, meta)
        finally:
            job_id_var.reset(token)

    async def commit(self, msg: StreamMessage[Any], raw: Message) -> None:
        """Commit ``raw``'s offset synchronously; a lost membership is logged, not fatal."""
        # FastStream's AsyncConfluentConsumer wraps the confluent consumer as ``.consumer``.
        client = getattr(getattr(msg, "consumer", None), "consumer", None)
        if client is None:
            raise SettleFailed("the message carries no consumer to commit with")
        try:
            await asyncio.to_thread(client.commit, message=raw, asynchronous=False)
        except KafkaException as exc:
            if not is_lost_membership(exc):
                raise SettleFailed(f"commit failed: {describe(exc)}") from exc
            # The partition's new owner reads from the last committed offset and handles the
            # record again (handlers are idempotent); FastStream's next poll re-joins the group.
            self.commits_refused += 1
            log.warning(
                "commit refused; membership lost, re-joining",
                extra={"topic": raw.topic(), "offset": raw.offset(), "error": describe(exc)},
            )

    def fail(self, exc: BaseException) -> None:
        """Stop the consumer with ``exc`` (``run`` raises it)."""
        if self._failed is None:
            self._failed = exc
        self._failed_event.set()


def fault_model_middleware(consumer: FastStreamConsumer) -> Callable[..., BaseMiddleware]:
    """A FastStream middleware factory that settles each record of ``consumer`` (ADR 0008)."""
    # Failures so far per record; a nacked record comes back in a new scope.
    failures: dict[Where, int] = {}

    async def backoff(attempt: int) -> None:
        await asyncio.sleep(consumer.backoff.delay(attempt))  # a stop cancels the consume task

    async def poison(msg: StreamMessage[Any], raw: Message, error: str) -> None:
        envelope, payload = _decoded(raw)
        meta = record_meta(raw)
        while True:  # a transient fault while dead-lettering is waited out like any other
            try:
                await dead_letter(consumer.deadletter, raw, consumer.group_id, error)
                await fail_poisoned_job(consumer.deadletter, meta, envelope, payload, error)
            except Exception as exc:
                if not is_transient(exc):
                    raise SettleFailed(f"dead letter failed: {exc!r}") from exc
                consumer.hold.hit(exc, meta)
                await backoff(consumer.hold.attempts)
                continue
            break
        consumer.dead_lettered += 1
        await settled(msg, raw)

    async def settled(msg: StreamMessage[Any], raw: Message) -> None:
        failures.pop(_where(raw), None)
        if consumer.hold.error is not None:
            log.info("transient fault over", extra={"where": consumer.hold.where})
        consumer.hold.clear()
        await consumer.commit(msg, raw)

    async def settle(
        call_next: Callable[[StreamMessage[Any]], Awaitable[Any]], msg: StreamMessage[Any]
    ) -> None:
        raw = msg.raw_message
        assert isinstance(raw, Message)
        where = _where(raw)
        if redrive_for_another_group(record_meta(raw).headers, consumer.group_id):
            consumer.skipped_redrives += 1  # this group handled the original (docs/dlq.md)
            await settled(msg, raw)
            return
        try:
            await call_next(msg)
        except Unparseable as exc:
            await poison(msg, raw, f"unparseable record: {exc}")
            return
        except Exception as exc:
            meta = record_meta(raw)
            if is_transient(exc):
                consumer.hold.hit(exc, meta)
                log.warning(
                    "transient fault; retrying",
                    extra={"where": consumer.hold.where, "attempt": consumer.hold.attempts},
                )
                await backoff(consumer.hold.attempts)
                await msg.nack()
                return
            n = failures[where] = failures.get(where, 0) + 1
            log.warning("handler failed", extra={"attempt": n, "error": repr(exc)})
            if n < consumer.max_attempts:
                await backoff(n)
                await msg.nack()
                return
            await poison(msg, raw, f"handler failed {n} times: {exc!r}")
            return
        consumer.handled += 1
        EVENTS_CONSUMED.labels(raw.topic() or "", consumer.group_id).inc()
        await settled(msg, raw)

    class FaultModel(BaseMiddleware):
        async def consume_scope(
            self,
            call_next: Callable[[StreamMessage[Any]], Awaitable[Any]],
            msg: StreamMessage[Any],
        ) -> Any:
            try:
                await settle(call_next, msg)
            except SettleFailed as exc:
                # Seek back so no later commit passes the record, then stop the consumer.
                await msg.nack()
                log.error("consumer stops: %s", exc)
                consumer.fail(exc)
            return None

    return FaultModel


def _where(raw: Message) -> Where:
    return raw.topic() or "", raw.partition() or 0, raw.offset() or 0


def _decoded(raw: Message) -> tuple[Envelope | None, Payload | None]:
    """The envelope and payload of a record, as far as they parse."""
    try:
        envelope = Envelope.from_json(raw.value() or b"")
    except Exception:
        return None, None
    try:
        return envelope, parse(envelope)
    except Exception:
        return envelope, None

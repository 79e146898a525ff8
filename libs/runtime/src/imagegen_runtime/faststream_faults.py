"""The fault model (ADR 0008) as a FastStream middleware, for a trial of FastStream consumers.

Use with a subscriber whose ``ack_policy`` is ``AckPolicy.MANUAL``: the middleware settles each
record itself.
- success: ``ack`` (FastStream commits the consumer's position, i.e. after this record);
- transient fault (:func:`~imagegen_runtime.faults.is_transient`): wait a backoff, then ``nack``
  (a seek back to the record: it is delivered again, nothing after it overtakes it);
- any other error: ``nack`` with backoff until ``max_attempts`` failures, then poison: dead-letter
  it, fail its job (``GenerationFailed(poison_event)``), then ``ack``.
ADR 0008 records which guarantees hold on FastStream 0.7.8 and which do not.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from confluent_kafka import Message
from faststream import BaseMiddleware
from faststream.message import StreamMessage

from imagegen_schemas import Envelope, Payload, parse

from .faults import Backoff, is_transient
from .kafka import dead_letter, fail_poisoned_job, record_meta
from .publishing import Publisher

log = logging.getLogger(__name__)


def fault_model_middleware(
    deadletter: Publisher,
    group: str,
    *,
    max_attempts: int = 3,
    backoff: Backoff | None = None,
) -> Callable[..., BaseMiddleware]:
    """A FastStream middleware factory enforcing ADR 0008 for one consumer group."""
    wait = backoff or Backoff()
    # (topic, partition, offset) -> failures so far; a nacked record comes back in a new scope.
    failures: dict[tuple[str, int, int], int] = {}
    transient: dict[tuple[str, int, int], int] = {}

    class FaultModel(BaseMiddleware):
        async def consume_scope(
            self,
            call_next: Callable[[StreamMessage[Any]], Awaitable[Any]],
            msg: StreamMessage[Any],
        ) -> Any:
            raw: Message = msg.raw_message
            where = (raw.topic() or "", raw.partition() or 0, raw.offset() or 0)
            try:
                result = await call_next(msg)
            except Exception as exc:
                if is_transient(exc):
                    n = transient[where] = transient.get(where, 0) + 1
                    log.warning("transient fault; nack after backoff", extra={"attempt": n})
                    await asyncio.sleep(wait.delay(n))
                    await msg.nack()
                    return None
                n = failures[where] = failures.get(where, 0) + 1
                if n < max_attempts:
                    await asyncio.sleep(wait.delay(n))
                    await msg.nack()
                    return None
                failures.pop(where, None)
                transient.pop(where, None)
                envelope, payload = _decoded(raw)
                error = f"handler failed {n} times: {exc!r}"
                await dead_letter(deadletter, raw, group, error)
                await fail_poisoned_job(deadletter, record_meta(raw), envelope, payload, error)
                await msg.ack()
                return None
            failures.pop(where, None)
            transient.pop(where, None)
            await msg.ack()
            return result

    return FaultModel


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

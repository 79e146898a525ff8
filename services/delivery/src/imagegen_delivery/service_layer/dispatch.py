"""Webhook attempts: a timer of due messages, fed from the retry topic, that makes each call in a
task of its own (docs/adr/0403, 0406).

The consumer of ``imagegen.webhooks.retry`` only stores the record (``WebhookStore.upsert_message``)
and hands it to :meth:`WebhookDispatcher.add`, so its offset is committed at once: no record
waits in the consumer for its due time, and no partition is held behind a record due in hours.
The store keeps every pending message, and :meth:`run` reloads them at start, so a record whose
offset is committed is never lost.

One attempt: sign with the user's active secrets (stamped now), call, then
- 2xx: the message is ``delivered``;
- refused by the SSRF guard: ``dead`` at once (reason recorded), published on the dead-letter;
- any other answer or none: the next attempt is published on the retry topic, due after the
  schedule's next delay; once the schedule is spent, ``dead`` and published on the dead-letter.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta

from opentelemetry.trace import StatusCode

from imagegen_runtime.publishing import Publisher, derived_event_id
from imagegen_runtime.tracing import job_span
from imagegen_schemas.webhooks import WebhookDeadLettered, WebhookScheduled

from ..adapters.webhook_store import WebhookStore
from ..adapters.webhooks import CallResult, WebhookSender
from ..domain.webhook import retry_delay, succeeded, webhook_headers

log = logging.getLogger(__name__)

Clock = Callable[[], float]  # unix seconds


def scheduled_event_id(msg: WebhookScheduled) -> str:
    """The retry record's event id: one per (message, round, attempt)."""
    return derived_event_id(msg.message_id, msg.event_type, msg.round, msg.attempt)


class WebhookDispatcher:
    """Holds due times in memory, starts each due attempt as a task of its own (the sender bounds
    how many call at once), and writes what each came to in the store and on the topics."""

    def __init__(
        self,
        store: WebhookStore,
        sender: WebhookSender,
        publisher: Publisher,
        *,
        schedule: Sequence[float],
        clock: Clock,
        error_delay_s: float = 5.0,
    ) -> None:
        self.store, self.sender, self.publisher = store, sender, publisher
        self.schedule = tuple(schedule)
        self.clock = clock
        self.error_delay_s = error_delay_s
        self._heap: list[tuple[float, int, WebhookScheduled]] = []
        self._seq = itertools.count()
        self._wake = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self.settled = 0  # attempts finished (any outcome), for tests and metrics

    def add(self, msg: WebhookScheduled) -> None:
        """Make ``msg`` at its due time (at once if due)."""
        heapq.heappush(self._heap, (msg.due_at.timestamp(), next(self._seq), msg))
        self._wake.set()

    def pending(self) -> int:
        return len(self._heap) + len(self._tasks)

    async def run_due(self) -> int:
        """Make every attempt due now, one after another; how many (tests drive it this way)."""
        made = 0
        while self._heap and self._heap[0][0] <= self.clock():
            _, _, msg = heapq.heappop(self._heap)
            await self._attempt(msg)
            made += 1
        return made

    async def run(self, stop: asyncio.Event) -> None:
        """Reload pending messages, then start each one when due until ``stop``."""
        for msg in await self.store.pending():
            self.add(msg)
        stopping = asyncio.ensure_future(stop.wait())
        try:
            while not stop.is_set():
                now = self.clock()
                while self._heap and self._heap[0][0] <= now:
                    _, _, msg = heapq.heappop(self._heap)
                    task = asyncio.create_task(self._attempt(msg))
                    self._tasks.add(task)
                    task.add_done_callback(self._done)
                wait = self._heap[0][0] - now if self._heap else None
                self._wake.clear()
                woken = asyncio.ensure_future(self._wake.wait())
                await asyncio.wait({woken, stopping}, timeout=wait, return_when="FIRST_COMPLETED")
                woken.cancel()
        finally:
            stopping.cancel()
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)

    async def _attempt(self, msg: WebhookScheduled) -> None:
        try:
            await self._call(msg)
        except asyncio.CancelledError:
            raise
        except Exception:  # store or broker away: try the same attempt again later
            log.exception("webhook attempt could not be settled; again in %ss", self.error_delay_s)
            at = datetime.fromtimestamp(self.clock() + self.error_delay_s, UTC)
            self.add(msg.model_copy(update={"due_at": at}))
        finally:
            self.settled += 1

    async def _call(self, msg: WebhookScheduled) -> None:
        at = datetime.fromtimestamp(self.clock(), UTC)
        secrets = await self.store.secrets(msg.user_id, at)
        headers = webhook_headers(msg.message_id, at, msg.body, secrets)
        # On the dispatcher's timer, outside any span: the job's latest consumed span is the
        # parent (ADR 0800); the HTTP call is a client span inside this one.
        attrs = {"imagegen.webhook.attempt": msg.attempt, "imagegen.webhook.round": msg.round}
        with job_span(f"webhook {msg.webhook_type}", msg.job_id, attributes=attrs) as span:
            result = await self.sender.send(msg.url, msg.body.encode(), headers)
            span.set_attribute("imagegen.webhook.status", result.status or 0)
            if not succeeded(result.status):
                span.set_status(StatusCode.ERROR, result.error[:200])
        if succeeded(result.status):
            await self.store.record_result(msg, "delivered", result.status, "")
            return
        delay = None if result.forbidden else retry_delay(msg.attempt, self.schedule)
        if delay is None:
            await self._dead_letter(msg, result)
            return
        due = datetime.fromtimestamp(self.clock(), UTC) + timedelta(seconds=delay)
        nxt = msg.model_copy(
            update={
                "attempt": msg.attempt + 1,
                "due_at": due,
                "last_status": result.status,
                "last_error": result.error,
            }
        )
        await self.publisher.publish(
            nxt, key=msg.job_id, causation_id=msg.message_id, event_id=scheduled_event_id(nxt)
        )
        await self.store.record_result(msg, "pending", result.status, result.error)

    async def _dead_letter(self, msg: WebhookScheduled, result: CallResult) -> None:
        dead = WebhookDeadLettered(
            message_id=msg.message_id,
            job_id=msg.job_id,
            user_id=msg.user_id,
            url=msg.url,
            webhook_type=msg.webhook_type,
            body=msg.body,
            attempts=msg.attempt,
            round=msg.round,
            last_status=result.status,
            reason=result.error,
        )
        event_id = derived_event_id(msg.message_id, dead.event_type, msg.round)
        await self.publisher.publish(
            dead, key=msg.job_id, causation_id=msg.message_id, event_id=event_id
        )
        await self.store.record_result(msg, "dead", result.status, result.error)
        log.warning("webhook dead-lettered after %s attempt(s): %s", msg.attempt, result.error)

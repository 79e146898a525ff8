"""The usage meter (ADR 0630): publishes one ``UsageRecorded`` per ended job on ``imagegen.usage``.

It runs in the scheduler's process on its own replaying consumer (group
``imagegen-usage-meter``), separate from the scheduler's decisions. Its state is a fold of the
topics (:class:`~imagegen_scheduler.domain.usage.UsageFold`), the usage topic included, rebuilt
from offset 0 at every start as the scheduler's own state is (ADR 0007):

- while replaying it only folds; once caught up, :meth:`UsageMeter.flush` publishes every due
  job that has no record on the usage topic: a job that ended while the meter was down, or
  whose record was not yet acknowledged when it crashed, is recorded then (none is lost);
- a job whose record is on the usage topic is never recorded again (none is doubled), and a
  record published twice anyway (acknowledged, then the meter crashed before it read it back)
  has the same event id, :func:`usage_event_id` of the job id, which readers drop.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import UTC, datetime

from imagegen_runtime.kafka import RecordMeta
from imagegen_runtime.publishing import Publisher, derived_event_id
from imagegen_runtime.waiting import sleep_or_stop, wait_or_stop
from imagegen_schemas import Envelope, Payload
from imagegen_schemas.usage import UsageRecorded

from ..domain.usage import UsageFold

log = logging.getLogger(__name__)

GROUP = "imagegen-usage-meter"
# Topics the meter folds (catalog names, before the prefix).
USAGE_TOPICS: tuple[str, ...] = (
    "imagegen.jobs.requested",
    "imagegen.jobs.moderated",
    "imagegen.jobs.scheduled",
    "imagegen.jobs.generated",
    "imagegen.jobs.delivered",
    "imagegen.jobs.ended",
    "imagegen.workers.heartbeats",
    "imagegen.usage",
)


def usage_event_id(job_id: str) -> str:
    """The event id of a job's usage record: the same for every publication of it."""
    return derived_event_id(f"usage/{job_id}", UsageRecorded.event_type)


def utcnow() -> datetime:
    return datetime.now(UTC)


class UsageMeter:
    """Folds job events; publishes each ended job's ``UsageRecorded`` once it is due."""

    def __init__(
        self,
        publisher: Publisher,
        *,
        grace_s: float = 30.0,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.publisher = publisher
        self.fold = UsageFold(grace_s=grace_s)
        self.clock = clock
        self.published = 0  # records published by this process
        self._lock = asyncio.Lock()

    async def on_event(
        self, env: Envelope, payload: Payload, meta: RecordMeta | None, live: bool
    ) -> None:
        """The replaying consumer's handler: fold only (publishing is :meth:`flush`'s)."""
        self.fold.apply(env, payload)

    async def flush(self) -> None:
        """Publish the records of every due job (counted in ``published``).

        Only called once the consumer caught up (every record of the usage topic present at
        start was folded), so ``due`` leaves out every job recorded before.
        """
        async with self._lock:
            for job_id in self.fold.due(self.clock()):
                if job_id not in self.fold.jobs:  # recorded meanwhile (read back from the topic)
                    continue
                record = self.fold.record(job_id)
                await self.publisher.publish(
                    record, key=record.user_id, event_id=usage_event_id(job_id)
                )
                self.fold.mark_recorded(job_id)
                self.published += 1
                log.info(
                    "usage recorded",
                    extra={
                        "job_id": job_id,
                        "state": record.state.value,
                        "gpu_seconds": record.gpu_seconds,
                    },
                )

    async def run(
        self, caught_up: asyncio.Event, stop: asyncio.Event, every_s: float = 1.0
    ) -> None:
        """Once caught up, flush every ``every_s`` (jobs waiting out their grace) until stop."""
        if not await wait_or_stop(caught_up, stop):
            return
        while not stop.is_set():
            await self.flush()
            if await sleep_or_stop(stop, every_s):
                return

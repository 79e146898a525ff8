"""The backlog collector: the cluster's dead-letter sizes and consumer lag as gauges.

Every ``every_s`` seconds (until stopped) :func:`collect_loop` reads a :class:`BacklogReader`
(``adapters/backlog.KafkaBacklog``) in a thread and sets ``imagegen_dlq_records{topic}`` and
``imagegen_consumer_lag{group,topic}`` (:mod:`..metrics`). A series whose group or topic is
gone from a reading is removed, so a deleted group's last lag does not linger. A failed reading
(the broker away) is logged and leaves the gauges as they were until the next round.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Protocol

from imagegen_runtime.waiting import sleep_or_stop

from ..adapters.backlog import Backlog
from ..metrics import CONSUMER_LAG, DLQ_RECORDS

log = logging.getLogger(__name__)


class BacklogReader(Protocol):
    def read(self) -> Backlog:
        """The backlog now (blocking)."""
        ...


class BacklogGauges:
    """Sets the gauges from readings, removing the series a reading no longer has."""

    def __init__(self) -> None:
        self._dlq: set[str] = set()
        self._lag: set[tuple[str, str]] = set()

    def set(self, backlog: Backlog) -> None:
        for topic in self._dlq - backlog.dead_letters.keys():
            DLQ_RECORDS.remove(topic)
        for topic, records in backlog.dead_letters.items():
            DLQ_RECORDS.labels(topic).set(records)
        for key in self._lag - backlog.lag.keys():
            CONSUMER_LAG.remove(*key)
        for (group, topic), behind in backlog.lag.items():
            CONSUMER_LAG.labels(group, topic).set(behind)
        self._dlq, self._lag = set(backlog.dead_letters), set(backlog.lag)


async def collect_loop(reader: BacklogReader, stop: asyncio.Event, every_s: float) -> None:
    """Read the backlog and set the gauges now, then every ``every_s`` s until ``stop``."""
    gauges = BacklogGauges()
    failing = False
    while not stop.is_set():
        try:
            gauges.set(await asyncio.to_thread(reader.read))
            if failing:
                log.info("backlog read again")
            failing = False
        except Exception as exc:  # the broker away: the next round tries again
            if not failing:
                log.warning("backlog not read", extra={"error": repr(exc)[:500]})
            failing = True
        await sleep_or_stop(stop, every_s)

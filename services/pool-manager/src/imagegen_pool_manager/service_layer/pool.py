"""The pool-manager's handlers: fold events into the fleet; re-queue the jobs of lost workers;
keep the fleet projection (``domain.fleet.project``) in its store.

The projection is written once per sweep (every second), only the workers whose document
changed; the first write after the replay replaces the whole table, so a restart rebuilds it
from the log. A store that is away (a transient fault) is retried at the next sweep, and
``/readyz`` names it meanwhile (ADR 0008).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Protocol

from imagegen_runtime.faults import describe, is_transient
from imagegen_runtime.health import CheckResult
from imagegen_runtime.kafka import RecordMeta
from imagegen_runtime.publishing import Publisher, publish_derived
from imagegen_runtime.waiting import sleep_or_stop, wait_or_stop
from imagegen_schemas import Envelope, Payload
from imagegen_schemas import jobs as ev
from imagegen_schemas.workers import DefragmentMemory, EvictModel, LoadModel

from ..domain.demand import Demand, fold_demand
from ..domain.fleet import Fleet, detect_losses, evolve, project

if TYPE_CHECKING:
    from .planner import Planner

log = logging.getLogger(__name__)

Docs = Mapping[str, Mapping[str, Any]]


class UnknownWorker(ValueError):
    """A pool command names a worker the fleet has never heard from."""


class FleetStore(Protocol):
    """Keeps the fleet projection (PostgreSQL in production, a dict in unit tests)."""

    async def save(self, changed: Docs, gone: frozenset[str] = frozenset()) -> None: ...

    async def replace(self, docs: Docs) -> None: ...


class PoolManager:
    def __init__(
        self,
        publisher: Publisher,
        timeout_s: float,
        clock: Callable[[], float] = time.time,
        store: FleetStore | None = None,
    ) -> None:
        self.fleet = Fleet()
        self.demand = Demand()  # what the warm pool plans from (service_layer/planner.py)
        self.publisher = publisher
        self.timeout_s = timeout_s
        self.clock = clock
        self.store = store
        self._saved: dict[str, dict[str, Any]] | None = None  # None: not written since start
        self.store_error: str | None = None
        # Losses count only the time this process was listening: since it caught up with the
        # log (``listening``), or since it resumed after a stall (SIGSTOP, a frozen VM) longer
        # than half the timeout, when heartbeats sent meanwhile are still unread in Kafka.
        self.awake_since = float("-inf")
        self.last_sweep: float | None = None

    def listening(self) -> None:
        """Caught up with the log: replayed heartbeats are old, so workers get a timeout."""
        self.awake_since = self.last_sweep = self.clock()

    async def on_event(self, env: Envelope, payload: Payload, meta: RecordMeta, live: bool) -> None:
        if (
            live
            and isinstance(payload, LoadModel | EvictModel | DefragmentMemory)
            and payload.worker_id not in self.fleet.workers
        ):
            # Poison: the consumer dead-letters it with this reason; the fleet is unchanged.
            known = ", ".join(sorted(self.fleet.workers)) or "none"
            raise UnknownWorker(
                f"{payload.event_type} for worker {payload.worker_id!r}, which the fleet has "
                f"never heard from; known: {known}"
            )
        at = env.occurred_at.timestamp()
        evolve(self.fleet, payload, at, env.event_id)
        fold_demand(self.demand, payload, at, env.event_id)

    async def sweep(self) -> int:
        """Declare silent workers lost; their in-flight jobs fail (not terminally) to re-queue."""
        published = 0
        now = self.clock()
        if self.last_sweep is not None and now - self.last_sweep > self.timeout_s / 2:
            log.warning(
                "pool-manager resumed after a stall; workers get a timeout to be heard",
                extra={"stalled_s": round(now - self.last_sweep, 1)},
            )
            self.awake_since = now
        self.last_sweep = now
        for loss in detect_losses(self.fleet, now, self.timeout_s, self.awake_since):
            log.warning(
                "worker lost",
                extra={"worker_id": loss.worker_id, "jobs": [j for j, _ in loss.jobs]},
            )
            for job_id, flight in loss.jobs:
                revoked = ev.AssignmentRevoked(
                    job_id=job_id,
                    worker_id=loss.worker_id,
                    fencing_token=flight.fencing_token,
                    reason="worker lost",
                )
                await publish_derived(
                    self.publisher, revoked, key=job_id, cause=loss.beat_id, parts=(job_id,)
                )
                failed = ev.GenerationFailed(
                    job_id=job_id,
                    reason=ev.FailureReason.WORKER_LOST,
                    terminal=False,
                    attempt=flight.attempt,
                    worker_id=loss.worker_id,
                    fencing_token=flight.fencing_token,
                    message=f"no heartbeat from {loss.worker_id} for {self.timeout_s:.0f}s",
                )
                await publish_derived(
                    self.publisher, failed, key=job_id, cause=loss.beat_id, parts=(job_id,)
                )
                self.fleet.in_flight.pop(job_id, None)
                published += 1
        return published

    async def persist(self) -> int:
        """Write the projection's changes to the store; the first write replaces it all.

        Returns the number of worker documents written. A transient fault is kept for the next
        call (``store_error``); any other fault raises.
        """
        if self.store is None:
            return 0
        docs = project(self.fleet)
        try:
            if self._saved is None:
                await self.store.replace(docs)
                written = len(docs)
            else:
                changed = {w: d for w, d in docs.items() if self._saved.get(w) != d}
                gone = frozenset(self._saved) - frozenset(docs)
                if not changed and not gone:
                    return 0
                await self.store.save(changed, gone)
                written = len(changed)
        except Exception as exc:
            if not is_transient(exc):
                raise
            if self.store_error is None:
                log.warning("fleet projection not saved; retrying", extra={"error": describe(exc)})
            self.store_error = describe(exc)
            return 0
        self._saved = docs
        self.store_error = None
        return written

    def store_health(self) -> CheckResult:
        if self.store_error is not None:
            return CheckResult(False, f"fleet projection not saved: {self.store_error}")
        return CheckResult(True, "")

    async def sweep_loop(
        self,
        caught_up: asyncio.Event,
        stop: asyncio.Event,
        every_s: float = 1.0,
        planner: Planner | None = None,
    ) -> None:
        """Once caught up: every ``every_s`` declare lost workers and save the projection; every
        ``planner.config.plan_every_s`` run the warm pool's planning round."""
        if not await wait_or_stop(caught_up, stop):
            return
        self.listening()
        next_plan = self.clock()
        while not stop.is_set():
            await self.sweep()
            await self.persist()
            if planner is not None and self.clock() >= next_plan:
                await planner.run_once(self.clock())
                next_plan = self.clock() + planner.config.plan_every_s
            await sleep_or_stop(stop, every_s)

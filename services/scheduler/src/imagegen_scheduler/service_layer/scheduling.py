"""The scheduler service: folds the log, decides once caught up, publishes its decisions.

State is one fold of the log (``domain.log.fold``), the same for replay and live: at start
``ReplayingConsumer`` replays every topic from offset 0 through ``on_event``, and the service
decides only once caught up. Its own past decisions (``JobScheduled``, ``PreemptionRequested``)
are folded back like any event, so a restart rebuilds them and nothing is scheduled twice; each
decision's event id is derived from (job, fencing token): a decision repeated after a crash is
the same event. Decisions are folded at once, through the same ``fold``, when made.

What the fold implies must be published (a queued job's cancellation, a terminal failure after
the last attempt) is published when live; on replay it is in the log already.

Preemption (ADR 0111) is on unless ``IMAGEGEN_SCHEDULER_PREEMPTION=false``: each ``Preempt``
decision is published as ``PreemptionRequested`` with an id derived from (job, token, type), so a
restart that decides it again publishes the same event. A worker that never pauses (it finished
first, or refused) wedges nothing: the job ends as usual and the held job takes the worker.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable

from imagegen_runtime import budget
from imagegen_runtime.kafka import RecordMeta
from imagegen_runtime.publishing import Publisher, derived_event_id
from imagegen_runtime.waiting import sleep_or_stop, wait_or_stop
from imagegen_schemas import Envelope, Payload
from imagegen_schemas import jobs as ev

from ..domain import (
    FleetCapabilities,
    ModelCatalog,
    Preempt,
    SchedulerConfig,
    SchedulerState,
    Tier,
    decide,
    estimate_waits,
)
from ..domain.faults import Deadlines, overdue, unservable
from ..domain.log import Log, fold, silence
from ..metrics import QUEUE_DEPTH, QUEUE_WAIT_SECONDS

__all__ = ["DEFAULT_DEADLINES", "Scheduler"]
log = logging.getLogger(__name__)
DEFAULT_DEADLINES = Deadlines(
    queue_s={Tier.TURBO: 900.0, Tier.FAST: 1800.0, Tier.RELAX: 7200.0}, run_s=1800.0
)


class Scheduler:
    def __init__(
        self,
        publisher: Publisher,
        catalog: ModelCatalog,
        *,
        max_attempts: int = 3,
        budget_fraction: float = budget.USABLE_FRACTION,  # the budget model's (ADR 0708)
        config: SchedulerConfig | None = None,
        clock: Callable[[], float] = time.time,
        deadlines: Deadlines = DEFAULT_DEADLINES,
        admission_grace_s: float = 30.0,
        admission_fleet_window_s: float = 900.0,
        eta_every_s: float = 5.0,
        worker_silent_after_s: float | None = None,
    ) -> None:
        self.log = Log(
            config or SchedulerConfig(),
            catalog,
            max_attempts=max_attempts,
            budget_fraction=budget_fraction,
        )
        self.publisher = publisher
        self.clock = clock
        self.deadlines = deadlines
        self.admission_grace_s = admission_grace_s
        self.admission_fleet_window_s = admission_fleet_window_s
        self.eta_every_s = eta_every_s
        self.worker_silent_after_s = worker_silent_after_s  # None: trust the last heartbeat
        self.live_since: float | None = None  # when it caught up (admission waits a grace)
        self._lock = asyncio.Lock()
        self._fleet: FleetCapabilities | None = None  # the fleet the admitted set was judged on
        self._judged_by: ModelCatalog | None = None  # and the catalog (measured sizes raise it)
        self._admitted: set[str] = set()  # queued jobs some worker of that fleet can run
        self._checked_at = float("-inf")  # last deadline and admission check
        self._estimated_at = float("-inf")  # last wait estimate
        self._estimated_seq = 0  # state.seq then: it moves whenever a job is (re-)queued
        self._eta: dict[str, float] = {}  # job id -> expected start last published

    @property
    def live(self) -> bool:
        """Caught up: decisions are made and what the fold implies is published."""
        return self.live_since is not None

    @live.setter
    def live(self, value: bool) -> None:
        if value and self.live_since is None:
            self.live_since = self.clock()
        elif not value:
            self.live_since = None

    @property
    def state(self) -> SchedulerState:
        """The policy state (derived by the fold; policies only read it)."""
        return self.log.state

    @property
    def resume(self) -> dict[str, ev.ResumeFrom]:
        """Job id -> saved state its next run continues from (jobs still to run)."""
        out = {}
        for job_id, f in self.log.jobs.items():
            resume = f.resume()
            if resume is not None and not f.gone():
                out[job_id] = resume
        return out

    async def on_event(
        self, env: Envelope, payload: Payload, meta: RecordMeta | None, live: bool
    ) -> None:
        async with self._lock:
            implied = fold(self.log, payload, env.occurred_at.timestamp())
            if self.live:
                for event in implied:
                    await self._publish(event, env)

    async def after_batch(self) -> None:
        """Decide once per consumed batch (deciding per record would rescan idle workers)."""
        async with self._lock:
            if self.live:
                await self._decide()

    def rebuild(self) -> None:
        """Nothing to rebuild: replay folds with the same ``fold`` as live. Kept so callers that
        go live by hand (tests, the bench) read as before."""

    async def _publish(self, payload: Payload, cause: Envelope | None) -> None:
        job_id = getattr(payload, "job_id", "")
        await self.publisher.publish(
            payload,
            key=job_id,
            causation_id=None if cause is None else cause.event_id,
            event_id=derived_event_id(job_id, payload.event_type, "scheduler"),
        )

    async def _decide(self) -> int:
        now = self.clock()
        await self._housekeep(now)
        out: list[tuple[ev.JobScheduled | ev.PreemptionRequested, str]] = []
        for decision in decide(self.state, now):
            if isinstance(decision, Preempt):
                request = ev.PreemptionRequested(
                    job_id=decision.job_id,
                    worker_id=decision.worker_id,
                    fencing_token=decision.fencing_token,
                    for_job_id=decision.for_job_id,
                    reason=f"turbo job {decision.for_job_id} would miss its wait target",
                )
                fold(self.log, request, now)
                out.append(
                    (
                        request,
                        derived_event_id(
                            decision.job_id, request.event_type, decision.fencing_token
                        ),
                    )
                )
                continue
            queued = self.state.queued[decision.job_id]
            facts = self.log.jobs[decision.job_id]
            req = facts.request
            assert req is not None  # only requested jobs are queued
            resume = facts.resume()
            # A resumed run continues the paused attempt: a pause is not a failed attempt.
            attempt = facts.next_attempt()
            scheduled = ev.JobScheduled(
                job_id=decision.job_id,
                worker_id=decision.worker_id,
                fencing_token=decision.fencing_token,
                attempt=attempt,
                tier=req.tier,
                queued_for_ms=int(max(0.0, now - queued.enqueued_at) * 1000),
                params=req.params,
                webhook_url=req.webhook_url,
                resume=resume,
            )
            fold(self.log, scheduled, now)
            QUEUE_WAIT_SECONDS.labels(req.tier.value).observe(queued.wait_s(now))
            out.append(
                (
                    scheduled,
                    derived_event_id(decision.job_id, scheduled.event_type, decision.fencing_token),
                )
            )
        for tier, queue in self.state.queues.items():
            QUEUE_DEPTH.labels(tier.value).set(len(queue))
        # Published together: one broker round trip for the batch. A failure raises, the
        # service exits, and its restart rebuilds the state from the log (nothing is lost).
        await asyncio.gather(*(self.publisher.publish(s, key=s.job_id, event_id=i) for s, i in out))
        return len(out)

    async def _housekeep(self, now: float) -> None:
        """Deadlines, admission and wait estimates (ADR 0112), at most once a second."""
        if now - self._checked_at >= 1.0:
            self._checked_at = now
            if self.worker_silent_after_s is not None:
                for worker_id in silence(self.log, now, self.worker_silent_after_s):
                    log.warning(
                        "worker silent: no new work for it until it heartbeats again",
                        extra={"worker_id": worker_id},
                    )
            ended: list[Payload] = [*overdue(self.log, now, self.deadlines)]
            ended += self._unservable(now)
            # Folded at once: out of the queue, its worker free. The failure first: the worker of
            # a timed-out run is not lost (a revocation folded first would forget it).
            for event in sorted(ended, key=lambda e: isinstance(e, ev.AssignmentRevoked)):
                fold(self.log, event, now)
            for event in ended:
                await self._publish(event, None)
        since = now - self._estimated_at
        if since >= self.eta_every_s or (self.state.seq != self._estimated_seq and since >= 1.0):
            self._estimated_at, self._estimated_seq = now, self.state.seq
            await self._estimate(now)

    def _unservable(self, now: float) -> list[ev.GenerationFailed]:
        """Queued jobs no worker of the fleet can run, once the fleet had time to show itself:
        the grace after catching up, and at least one worker seen (an empty fleet proves
        nothing; such jobs wait for workers, bounded by their queue deadline). The fleet is the
        workers that heartbeated within ``admission_fleet_window_s``: lost ones too, for a
        while (a restarting worker is still of the fleet), but not for ever (the compacted
        heartbeat topic keeps every worker that ever ran)."""
        if self.live_since is None or now - self.live_since < self.admission_grace_s:
            return []
        window = self.admission_fleet_window_s
        recent = [
            view
            for worker_id, view in self.log.seen.items()
            if now - self.log.beats.get(worker_id, float("-inf")) <= window
        ]
        if not recent:
            return []
        fleet = FleetCapabilities.of(recent)
        if fleet != self._fleet or self.state.catalog is not self._judged_by:
            self._fleet, self._judged_by, self._admitted = fleet, self.state.catalog, set()
        self._admitted &= self.state.queued.keys()
        refused, admitted = unservable(self.log, fleet, self._admitted)
        self._admitted.update(admitted)
        return refused

    async def _estimate(self, now: float) -> None:
        """Publish ``WaitEstimated`` for a job first queued (within a second), or whose expected
        start moved by more than 20% of its wait (at least 5 s); every ``eta_every_s``."""
        etas = estimate_waits(self.state, now)
        self._eta = {j: t for j, t in self._eta.items() if j in etas}
        ordered = sorted((eta, job_id) for job_id, eta in etas.items() if math.isfinite(eta))
        out = []
        for position, (eta, job_id) in enumerate(ordered):
            start = now + eta
            last = self._eta.get(job_id)
            if last is not None and abs(start - last) <= max(5.0, 0.2 * eta):
                continue
            self._eta[job_id] = start
            estimate = ev.WaitEstimated(job_id=job_id, eta_s=round(eta, 1), queue_position=position)
            event_id = derived_event_id(job_id, estimate.event_type, round(start, 1))
            out.append(self.publisher.publish(estimate, key=job_id, event_id=event_id))
        await asyncio.gather(*out)

    async def tick_loop(
        self, caught_up: asyncio.Event, stop: asyncio.Event, every_s: float = 0.5
    ) -> None:
        """Decide once caught up, then on a timer (aging changes priorities without events)."""
        if not await wait_or_stop(caught_up, stop):
            return
        async with self._lock:
            self.live = True
        while not stop.is_set():
            async with self._lock:
                await self._decide()
            await sleep_or_stop(stop, every_s)

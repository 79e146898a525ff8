"""The scheduler service: translates log events into policy events, decides, publishes.

State is a fold of the log (``ReplayingConsumer`` replays from offset 0 at start), so a restart
rebuilds it, including the scheduler's own past assignments (``JobScheduled`` read back), and
nothing is scheduled twice. Decisions are made only once caught up, and each assignment's event
id is derived from (job, fencing token): a decision repeated after a crash is the same event.

Translation (Kafka event -> policy event):
- ``GenerationRequested`` + allowed ``PromptModerated`` (either order) -> ``JobQueued``
- ``WorkerHeartbeat`` -> ``WorkerUpdated``; ``JobScheduled`` -> ``JobAssigned``
- ``ImageGenerated`` / ``GenerationCancelled`` -> ``JobFinished``
- ``GenerationFailed`` (attempt failed) -> ``JobFinished`` then ``JobQueued`` again, or a terminal
  ``GenerationFailed`` after ``max_attempts``; ``worker_lost`` -> ``WorkerLost`` (re-queues)
- ``CancellationRequested`` of a queued job -> ``JobCancelled`` + ``GenerationCancelled``
- ``PreemptionRequested`` (its own, read back) -> ``PreemptionDecided``; ``GenerationPaused``
  of the running assignment (same fencing token) -> ``JobPreempted`` (re-queued with the steps
  left, its worker free); the saved state goes into the job's next ``JobScheduled.resume``.
  A pause or result of a superseded assignment (older token) is ignored.

Preemption (ADR 0111) is on unless ``IMAGEGEN_SCHEDULER_PREEMPTION=false``: each ``Preempt``
decision is published as ``PreemptionRequested`` with an id derived from (job, token, type), so a
restart that decides it again publishes the same event. A worker that never pauses (it finished
first, or refused) wedges nothing: the job ends as usual and the held job takes the worker.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from imagegen_runtime.kafka import RecordMeta
from imagegen_runtime.publishing import Publisher, derived_event_id
from imagegen_runtime.waiting import sleep_or_stop
from imagegen_schemas import Envelope, Payload
from imagegen_schemas import jobs as ev
from imagegen_schemas.workers import WorkerHeartbeat, WorkerStatus

from ..domain import (
    JobAssigned,
    JobCancelled,
    JobFinished,
    JobPreempted,
    JobQueued,
    JobRequest,
    ModelCatalog,
    Preempt,
    PreemptionDecided,
    SchedulerConfig,
    SchedulerState,
    Tier,
    WorkerLost,
    WorkerUpdated,
    WorkerView,
    as_event,
    decide,
    evolve,
)

log = logging.getLogger(__name__)
GB = 1e9


def worker_view(hb: WorkerHeartbeat, budget_fraction: float) -> WorkerView:
    """The policy's view of a worker from its heartbeat."""
    return WorkerView(
        worker_id=hb.worker_id,
        gpu_type=hb.gpu_type,
        budget_gb=hb.memory_total_bytes * budget_fraction / GB,
        speed=1.0,
        capabilities=frozenset(hb.capabilities),
        resident=frozenset(m.model_id for m in hb.loaded),
        accepting=hb.status in (WorkerStatus.IDLE, WorkerStatus.BUSY),
    )


class Scheduler:
    def __init__(
        self,
        publisher: Publisher,
        catalog: ModelCatalog,
        *,
        max_attempts: int = 3,
        budget_fraction: float = 0.8,
        config: SchedulerConfig | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.state = SchedulerState(config or SchedulerConfig(), catalog)
        self.publisher = publisher
        self.max_attempts = max_attempts
        self.budget_fraction = budget_fraction
        self.clock = clock
        self.requests: dict[str, ev.GenerationRequested] = {}
        self.allowed: set[str] = set()
        self.attempts: dict[str, int] = {}  # job id -> assignments made so far
        self.ended: set[str] = set()  # jobs that ended for good (no more scheduling)
        # Replay collects facts first (topics interleave in any order), then rebuilds once.
        self.assignments: dict[str, ev.JobScheduled] = {}  # latest assignment per job
        self.failed_attempt: dict[str, int] = {}  # highest attempt that failed, per job
        self.heartbeats: dict[str, tuple[WorkerHeartbeat, float]] = {}
        self.pauses: dict[str, ev.GenerationPaused] = {}  # latest pause per job (replay)
        self.preempts: dict[str, tuple[ev.PreemptionRequested, float]] = {}  # latest per job
        self.resume: dict[str, ev.ResumeFrom] = {}  # job id -> where its next run continues
        self.paused: set[str] = set()  # jobs whose last assignment paused (its attempt goes on)
        self.live = False
        self._lock = asyncio.Lock()

    # ---- fold ----------------------------------------------------------------------------------
    def _queue(self, job_id: str, at: float) -> None:
        req = self.requests.get(job_id)
        if req is None or job_id not in self.allowed or job_id in self.ended:
            return
        p = req.params
        if p.model not in self.state.catalog.models:
            return  # refused at the API edge; an old event for a removed model stays queued out
        adapters = tuple(f"lora/{lo.name}" for lo in p.loras) + tuple(
            f"cn/{c.type}" for c in p.controlnets
        )
        request = JobRequest(
            job_id=job_id,
            user_id=req.user_id,
            tier=Tier(req.tier.value),
            model_id=p.model,
            adapters=adapters,
            width=p.width,
            height=p.height,
            batch=p.num_images,
            steps=p.steps,
            queued_at=at,
        )
        evolve(self.state, JobQueued(request, at))

    async def on_event(
        self, env: Envelope, payload: Payload, meta: RecordMeta | None, live: bool
    ) -> None:
        async with self._lock:
            if not self.live:
                self._collect(payload, env.occurred_at.timestamp())
                return
            await self._apply(env, payload, live=True)

    async def after_batch(self) -> None:
        """Decide once per consumed batch (deciding per record would rescan idle workers)."""
        async with self._lock:
            if self.live:
                await self._decide()

    def _collect(self, payload: Payload, at: float) -> None:
        """Replay: remember the facts; the order of topics does not matter."""
        match payload:
            case ev.GenerationRequested():
                self.requests[payload.job_id] = payload
            case ev.PromptModerated(verdict=ev.Verdict.ALLOWED):
                self.allowed.add(payload.job_id)
            case ev.PromptModerated() | ev.ImageGenerated() | ev.GenerationCancelled():
                self.ended.add(payload.job_id)
            case ev.GenerationFailed(terminal=True):
                self.ended.add(payload.job_id)
            case ev.GenerationFailed():
                self.failed_attempt[payload.job_id] = max(
                    self.failed_attempt.get(payload.job_id, 0), payload.attempt
                )
            case ev.CancellationRequested():
                self.ended.add(payload.job_id)  # queued: cancelled; running: the worker stops it
            case ev.JobScheduled():
                held = self.assignments.get(payload.job_id)
                if held is None or payload.fencing_token > held.fencing_token:
                    self.assignments[payload.job_id] = payload
            case ev.GenerationPaused():
                seen = self.pauses.get(payload.job_id)
                if seen is None or payload.fencing_token > seen.fencing_token:
                    self.pauses[payload.job_id] = payload
            case ev.PreemptionRequested():
                held_pr = self.preempts.get(payload.job_id)
                if held_pr is None or payload.fencing_token > held_pr[0].fencing_token:
                    self.preempts[payload.job_id] = (payload, at)
            case WorkerHeartbeat():
                held_hb = self.heartbeats.get(payload.worker_id)
                if held_hb is None or at >= held_hb[1]:
                    self.heartbeats[payload.worker_id] = (payload, at)

    def rebuild(self) -> None:
        """Build the policy state from the collected facts (once, when caught up)."""
        for hb, at in self.heartbeats.values():
            evolve(self.state, WorkerUpdated(worker_view(hb, self.budget_fraction), at))
        for token in (a.fencing_token for a in self.assignments.values()):
            self.state.last_token = max(self.state.last_token, token)
        for job_id in self.requests:
            if job_id in self.ended or job_id not in self.allowed:
                continue
            self._queue(job_id, self.clock())
            a = self.assignments.get(job_id)
            if a is None:
                continue
            self.attempts[job_id] = a.attempt
            paused = self.pauses.get(job_id)
            if paused is not None and paused.fencing_token <= a.fencing_token:
                self.resume[job_id] = _resume_from(paused)
            if a.attempt > self.failed_attempt.get(job_id, 0):
                evolve(self.state, JobAssigned(job_id, a.worker_id, a.fencing_token, self.clock()))
                if paused is not None and paused.fencing_token == a.fencing_token:
                    self._paused(paused, self.clock())
        for request, at in self.preempts.values():  # pending pauses hold their workers again
            self._preempting(request, at)

    async def _apply(self, env: Envelope, payload: Payload, live: bool) -> None:  # noqa: C901
        at = env.occurred_at.timestamp()
        state = self.state
        match payload:
            case ev.GenerationRequested():
                self.requests[payload.job_id] = payload
                self._queue(payload.job_id, at)
            case ev.PromptModerated(verdict=ev.Verdict.ALLOWED):
                self.allowed.add(payload.job_id)
                self._queue(payload.job_id, at)
            case ev.PromptModerated():
                self.ended.add(payload.job_id)
            case WorkerHeartbeat():
                evolve(state, WorkerUpdated(worker_view(payload, self.budget_fraction), at))
            case ev.JobScheduled():
                self.attempts[payload.job_id] = max(
                    self.attempts.get(payload.job_id, 0), payload.attempt
                )
                evolve(
                    state, JobAssigned(payload.job_id, payload.worker_id, payload.fencing_token, at)
                )
            case ev.PreemptionRequested():
                self._preempting(payload, at)  # our own decision, read back
            case ev.GenerationPaused():
                self._paused(payload, at)
            case ev.ImageGenerated() | ev.GenerationCancelled():
                running = state.running.get(payload.job_id)
                token = getattr(payload, "fencing_token", None)
                if running is not None and token is not None and token != running.fencing_token:
                    return  # a revoked assignment's late result
                self.ended.add(payload.job_id)
                self.resume.pop(payload.job_id, None)
                if running is not None:
                    evolve(
                        state,
                        JobFinished(payload.job_id, running.worker_id, running.fencing_token, at),
                    )
                evolve(state, JobCancelled(payload.job_id, at))
            case ev.GenerationFailed(terminal=True):
                self.ended.add(payload.job_id)
                self.resume.pop(payload.job_id, None)
                running = state.running.get(payload.job_id)
                if running is not None:
                    evolve(
                        state,
                        JobFinished(payload.job_id, running.worker_id, running.fencing_token, at),
                    )
                evolve(state, JobCancelled(payload.job_id, at))
            case ev.GenerationFailed():
                await self._attempt_failed(env, payload, at, live)
            case ev.CancellationRequested():
                if payload.job_id in state.queued:
                    evolve(state, JobCancelled(payload.job_id, at))
                    self.ended.add(payload.job_id)
                    if live:
                        await self._publish(
                            ev.GenerationCancelled(job_id=payload.job_id), env, payload.job_id
                        )

    def _preempting(self, request: ev.PreemptionRequested, at: float) -> None:
        if request.for_job_id is not None:
            evolve(
                self.state,
                PreemptionDecided(
                    request.job_id, request.worker_id, request.fencing_token, request.for_job_id, at
                ),
            )

    def _paused(self, paused: ev.GenerationPaused, at: float) -> None:
        """The running assignment paused: re-queue the job with the steps left, free its
        worker, keep the saved state for the next assignment. A stale token changes nothing."""
        running = self.state.running.get(paused.job_id)
        if running is None or running.fencing_token != paused.fencing_token:
            return  # a superseded assignment's late pause
        steps = running.job.request.steps
        # steps_done counts sampler steps; most samplers take one per denoising step, PNDM more
        left = max(1, -(-steps * (paused.total_steps - paused.steps_done) // paused.total_steps))
        completed = max(0, running.job.remaining_steps - left)
        evolve(
            self.state,
            JobPreempted(paused.job_id, running.worker_id, paused.fencing_token, completed, at),
        )
        self.resume[paused.job_id] = _resume_from(paused)
        self.paused.add(paused.job_id)

    async def _attempt_failed(
        self, env: Envelope, failed: ev.GenerationFailed, at: float, live: bool
    ) -> None:
        running = self.state.running.get(failed.job_id)
        if running is None or (failed.worker_id and running.worker_id != failed.worker_id):
            return  # stale: about an assignment that is no longer current
        if self.attempts.get(failed.job_id, 1) >= self.max_attempts:
            evolve(
                self.state, JobFinished(failed.job_id, running.worker_id, running.fencing_token, at)
            )
            self.ended.add(failed.job_id)
            if live:
                terminal = ev.GenerationFailed(
                    job_id=failed.job_id,
                    reason=ev.FailureReason.RETRIES_EXHAUSTED,
                    message=f"{self.max_attempts} attempts failed; last: {failed.reason.value}: "
                    f"{failed.message}"[:4000],
                    attempt=failed.attempt,
                    terminal=True,
                    worker_id=failed.worker_id,
                )
                await self._publish(terminal, env, failed.job_id)
            return
        if failed.reason == ev.FailureReason.WORKER_LOST:
            evolve(self.state, WorkerLost(running.worker_id, at))  # re-queues the orphan
        else:
            evolve(
                self.state, JobFinished(failed.job_id, running.worker_id, running.fencing_token, at)
            )
            self._queue(failed.job_id, at)

    # ---- decide --------------------------------------------------------------------------------
    async def _publish(
        self, payload: ev.Payload, cause: Envelope, job_id: str, *parts: object
    ) -> None:
        await self.publisher.publish(
            payload,
            key=job_id,
            causation_id=cause.event_id,
            event_id=derived_event_id(cause.event_id, payload.event_type, *parts),
        )

    async def _decide(self) -> int:
        now = self.clock()
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
                evolve(self.state, as_event(decision, now))
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
            req = self.requests[decision.job_id]
            resume = self.resume.get(decision.job_id)
            # A resumed run continues the paused attempt: a pause is not a failed attempt.
            attempt = self.attempts.get(decision.job_id, 0) + (
                0 if decision.job_id in self.paused else 1
            )
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
            evolve(self.state, as_event(decision, now))
            self.attempts[decision.job_id] = attempt
            self.paused.discard(decision.job_id)
            out.append(
                (
                    scheduled,
                    derived_event_id(decision.job_id, scheduled.event_type, decision.fencing_token),
                )
            )
        # Published together: one broker round trip for the batch. A failure raises, the
        # service exits, and its restart rebuilds the state from the log (nothing is lost).
        await asyncio.gather(*(self.publisher.publish(s, key=s.job_id, event_id=i) for s, i in out))
        return len(out)

    async def tick_loop(
        self, caught_up: asyncio.Event, stop: asyncio.Event, every_s: float = 0.5
    ) -> None:
        """Decide once caught up, then on a timer (aging changes priorities without events)."""
        await caught_up.wait()
        async with self._lock:
            self.rebuild()
            self.live = True
        while not stop.is_set():
            async with self._lock:
                await self._decide()
            await sleep_or_stop(stop, every_s)


def _resume_from(paused: ev.GenerationPaused) -> ev.ResumeFrom:
    return ev.ResumeFrom(
        steps_done=paused.steps_done, state_uri=paused.state_uri, state_sha256=paused.state_sha256
    )

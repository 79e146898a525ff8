"""The scheduler service's state as one fold of its input log, used alike by replay and live.

``fold(log, payload, at)`` applies one Kafka event to a ``Log``: the facts known about each job
(request, verdict, latest assignment, pause, failed attempts, revoked tokens, results, end) and
the policy state derived from them (``SchedulerState``). Replay is this fold from offset 0; live
is the same fold one record at a time; the service decides only once caught up.

Order-tolerant by construction: topics interleave in any order on replay, so an event only
records a fact, then ``_settle`` moves the job in the policy state to where its facts put it:

* absent: no request or no allowed verdict yet, or ended (rejected, cancelled, failed for good,
  or a valid result of its latest assignment);
* queued: allowed and no assignment in force (none yet, or the latest one paused, failed, or
  was revoked);
* running: its latest assignment is in force.

A result (``ImageGenerated``) counts only when its token is the latest assignment's and was not
revoked (``AssignmentRevoked``): a revoked assignment's late result never completes a job.
Pure: no clock, no I/O; ``at`` is the event's time.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from enum import Enum

from imagegen_schemas import Payload
from imagegen_schemas import jobs as ev
from imagegen_schemas.workers import WorkerHeartbeat, WorkerStatus

from .config import SchedulerConfig
from .events import (
    JobAssigned,
    JobCancelled,
    JobFinished,
    JobPreempted,
    JobQueued,
    PreemptionDecided,
    WorkerLost,
    WorkerUpdated,
)
from .model import JobRequest, ModelCatalog, Tier, WorkerView, fits, footprint_gb
from .state import RunningJob, SchedulerState, evolve

GB = 1e9


class Why(Enum):
    """Why the latest assignment is no longer in force."""

    PAUSED = "paused"  # preempted: re-queued first in line with the steps left, same attempt
    LOST = "lost"  # its worker was lost or the assignment revoked: first in line again
    FAILED = "failed"  # the attempt failed: back of the queue, a new attempt


@dataclass
class JobFacts:
    """Everything the log says about one job; only ever grows (``fold`` never forgets)."""

    request: ev.GenerationRequested | None = None
    allowed_at: float | None = None  # when the prompt was allowed (the job became schedulable)
    ended: bool = False  # rejected, cancelled, failed for good: never scheduled again
    assignment: ev.JobScheduled | None = None  # the latest assignment (highest token)
    assigned_at: float = 0.0  # its time
    pause: ev.GenerationPaused | None = None  # the latest pause (highest token)
    preempt: ev.PreemptionRequested | None = None  # the latest preemption asked (highest token)
    preempt_at: float = 0.0
    revoked: int = 0  # highest revoked token: results with a token <= this are void
    # Failed attempts by (attempt, worker id or None), with the failure's time. A failure ends
    # the assignment with that attempt number on that worker, whichever is folded first.
    failures: dict[tuple[int, str | None], tuple[ev.GenerationFailed, float]] = field(
        default_factory=dict
    )
    results: set[int] = field(default_factory=set)  # tokens with a result not revoked before it
    cancel_requested: bool = False  # the client asked; a running job ends when its worker says

    def in_force(self) -> bool:
        """Whether the job's latest assignment still runs (as far as the log says)."""
        return self.assignment is not None and self.why_over() is None and not self.gone()

    def gone(self) -> bool:
        """Out of the scheduler's hands: not schedulable yet, ended, or completed."""
        return self.ended or self.completed() or self.request is None or self.allowed_at is None

    def why_over(self) -> Why | None:
        """Why the latest assignment is not in force (None: it is, or there is none)."""
        a = self.assignment
        if a is None:
            return None
        if self.pause is not None and self.pause.fencing_token == a.fencing_token:
            return Why.PAUSED
        if a.fencing_token <= self.revoked:
            return Why.LOST
        failed = self.failure_of(a)
        if failed is None:
            return None
        return Why.LOST if failed.reason == ev.FailureReason.WORKER_LOST else Why.FAILED

    def failure_of(self, a: ev.JobScheduled) -> ev.GenerationFailed | None:
        """The failure reported for assignment ``a`` (same attempt, same or unnamed worker)."""
        found = self.failures.get((a.attempt, a.worker_id)) or self.failures.get((a.attempt, None))
        return None if found is None else found[0]

    @property
    def failed_on(self) -> set[str]:
        """Workers an attempt failed on (a lost worker did not fail the job): avoided."""
        return {
            w
            for (_, w), (failed, _) in self.failures.items()
            if w is not None and failed.reason != ev.FailureReason.WORKER_LOST
        }

    @property
    def requeued_at(self) -> float | None:
        """Back of the queue since the latest failed attempt (None: never failed)."""
        times = [
            at
            for failed, at in self.failures.values()
            if failed.reason != ev.FailureReason.WORKER_LOST
        ]
        return max(times) if times else None

    def completed(self) -> bool:
        """Its latest assignment delivered a valid result (one not revoked when it arrived)."""
        a = self.assignment
        return a is not None and a.fencing_token in self.results

    def next_attempt(self) -> int:
        """Attempt number of the next assignment: a resumed run continues the paused attempt."""
        a = self.assignment
        if a is None:
            return 1
        return a.attempt + (0 if self.why_over() is Why.PAUSED else 1)

    def resume(self) -> ev.ResumeFrom | None:
        """Where the next run continues: the latest saved state, if any."""
        p = self.pause
        if p is None:
            return None
        return ev.ResumeFrom(
            steps_done=p.steps_done, state_uri=p.state_uri, state_sha256=p.state_sha256
        )


class Log:
    """The fold's state: per-job facts, the latest heartbeat per worker, and the policy state."""

    def __init__(
        self,
        config: SchedulerConfig,
        catalog: ModelCatalog,
        *,
        max_attempts: int = 3,
        budget_fraction: float = 0.8,
    ) -> None:
        self.state = SchedulerState(config, catalog)
        self.max_attempts = max_attempts
        self.budget_fraction = budget_fraction
        self.jobs: dict[str, JobFacts] = {}
        self.beats: dict[str, float] = {}  # worker id -> time of the latest heartbeat folded
        # Every worker the retained heartbeats name, lost ones too (admission asks whether any
        # worker of the fleet could ever run a job; a restarting worker is still of the fleet).
        self.seen: dict[str, WorkerView] = {}
        # Replay only: jobs whose assignment is in force on a worker that, as folded so far, still
        # runs an older job (its result is on a topic not read that far yet). Settled again
        # when the worker frees.
        self.pending: dict[str, set[str]] = {}  # worker id -> job ids

    def facts(self, job_id: str) -> JobFacts:
        found = self.jobs.get(job_id)
        if found is None:
            found = self.jobs[job_id] = JobFacts()
        return found


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


def fold(log: Log, payload: object, at: float) -> list[Payload]:  # noqa: C901
    """Apply one event; return the events it implies that the scheduler must publish (a
    terminal failure after the last attempt, the cancellation of a queued job). On replay those
    were published the first time and are read back; the service publishes them only live."""
    out: list[Payload] = []
    if isinstance(payload, WorkerHeartbeat):
        if at >= log.beats.get(payload.worker_id, float("-inf")):
            log.beats[payload.worker_id] = at
            view = worker_view(payload, log.budget_fraction)
            log.seen[payload.worker_id] = view
            evolve(log.state, WorkerUpdated(view, at))
        return out
    job_id = getattr(payload, "job_id", None)
    if job_id is None:
        return out
    f = log.facts(job_id)
    match payload:
        case ev.GenerationRequested():
            f.request = payload
        case ev.PromptModerated(verdict=ev.Verdict.ALLOWED):
            f.allowed_at = at if f.allowed_at is None else f.allowed_at
        case ev.PromptModerated():
            f.ended = True
        case ev.JobScheduled():
            log.state.last_token = max(log.state.last_token, payload.fencing_token)
            if f.assignment is None or payload.fencing_token > f.assignment.fencing_token:
                f.assignment, f.assigned_at = payload, at
        case ev.GenerationPaused():
            latest = f.assignment.fencing_token if f.assignment is not None else 0
            if payload.fencing_token >= latest and (
                f.pause is None or payload.fencing_token > f.pause.fencing_token
            ):
                f.pause = payload  # a superseded assignment's late pause is dropped
        case ev.PreemptionRequested():
            if f.preempt is None or payload.fencing_token > f.preempt.fencing_token:
                f.preempt, f.preempt_at = payload, at
        case ev.AssignmentRevoked():
            f.revoked = max(f.revoked, payload.fencing_token)
        case ev.ImageGenerated():
            # Revocation and result share a partition: the order seen here is the order every
            # consumer sees, so a result after its revocation is void for all of them.
            if payload.fencing_token > f.revoked:
                f.results.add(payload.fencing_token)
        case ev.GenerationCancelled():
            f.ended = True
        case ev.CancellationRequested():
            f.cancel_requested = True  # queued: cancelled at once (_settle); running: see above
        case ev.GenerationFailed(terminal=True):
            f.ended = True
        case ev.GenerationFailed():
            f.failures.setdefault((payload.attempt, payload.worker_id), (payload, at))
    out += _terminal(log, f, job_id)
    out += _settle(log, job_id, f, at)
    for worker_id in [w for w in log.pending if w not in log.state.running_on]:
        for waiting in sorted(log.pending.pop(worker_id)):
            out += _settle(log, waiting, log.jobs[waiting], at)
    return out


def _terminal(log: Log, f: JobFacts, job_id: str) -> list[Payload]:
    """After the last attempt: the job ends with ``retries_exhausted`` and the last reason."""
    a = f.assignment
    over = f.why_over()
    if a is None or f.ended or over not in (Why.LOST, Why.FAILED) or a.attempt < log.max_attempts:
        return []
    f.ended = True
    failed = f.failure_of(a)
    last = "assignment revoked" if failed is None else f"{failed.reason.value}: {failed.message}"
    return [
        ev.GenerationFailed(
            job_id=job_id,
            reason=ev.FailureReason.RETRIES_EXHAUSTED,
            message=f"{log.max_attempts} attempts failed; last: {last}"[:4000],
            attempt=a.attempt,
            terminal=True,
            worker_id=a.worker_id,
        )
    ]


def job_request(
    f: JobFacts, catalog: ModelCatalog, at: float, avoid: frozenset[str] = frozenset()
) -> JobRequest | None:
    """The policy's view of the job, schedulable since ``at`` (None: not schedulable)."""
    req = f.request
    if req is None or req.params.model not in catalog.models:
        return None  # refused at the API edge; an old event for a removed model stays out
    p = req.params
    adapters = tuple(f"lora/{lo.name}" for lo in p.loras) + tuple(
        f"cn/{c.type}" for c in p.controlnets
    )
    return JobRequest(
        job_id=req.job_id,
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


def _settle(log: Log, job_id: str, f: JobFacts, at: float) -> list[Payload]:
    """Move the job in the policy state to where its facts put it (see the module docstring)."""
    out: list[Payload] = []
    if f.cancel_requested and not f.in_force() and not f.ended and not f.completed():
        f.ended = True  # asked to cancel and not running: cancelled now
        out.append(ev.GenerationCancelled(job_id=job_id))
    state = log.state
    a = f.assignment
    gone = f.gone()
    # 1. A running assignment that is no longer the one in force stops.
    running = state.running.get(job_id)
    if running is not None and not (f.in_force() and a is not None and _same(running, a)):
        over = f.why_over() if a is not None and _same(running, a) else None
        if not gone and over is Why.PAUSED and f.pause is not None:
            left = running.job.remaining_steps
            done = _completed(running.job.request.steps, left, f.pause)
            evolve(state, JobPreempted(job_id, running.worker_id, running.fencing_token, done, at))
        elif not gone and over is Why.LOST:
            evolve(state, WorkerLost(running.worker_id, at))  # re-queues it first in line
        else:
            evolve(state, JobFinished(job_id, running.worker_id, running.fencing_token, at))
    if gone:
        evolve(state, JobCancelled(job_id, at))
        return out
    # 2. Queue it if it is in neither place.
    if job_id not in state.queued and job_id not in state.running:
        since = f.requeued_at if f.requeued_at is not None else f.allowed_at
        request = job_request(f, state.catalog, at if since is None else since)
        if request is None:
            return out
        request = _avoiding(state, request, f.failed_on)
        evolve(state, JobQueued(request, request.queued_at))
        if a is not None and f.why_over() is Why.PAUSED and f.pause is not None:
            # a paused job folded from scratch: run and pause it, so only its steps left remain
            evolve(state, JobAssigned(job_id, a.worker_id, a.fencing_token, f.assigned_at))
            run = state.running.get(job_id)
            if run is not None:
                done = _completed(request.steps, run.job.remaining_steps, f.pause)
                evolve(state, JobPreempted(job_id, a.worker_id, a.fencing_token, done, at))
    # 3. Run it if its latest assignment is in force.
    if f.in_force() and a is not None and job_id in state.queued:
        evolve(state, JobAssigned(job_id, a.worker_id, a.fencing_token, f.assigned_at))
        if job_id in state.queued:  # its worker still runs an older job, as folded so far
            log.pending.setdefault(a.worker_id, set()).add(job_id)
    # 4. A pending preemption of the running assignment holds its worker again.
    run = state.running.get(job_id)
    pr = f.preempt
    if (
        run is not None
        and pr is not None
        and pr.for_job_id is not None
        and pr.fencing_token == run.fencing_token
        and job_id not in state.preempting
        and _waiting(log, pr.for_job_id)
    ):
        decided = PreemptionDecided(
            job_id, pr.worker_id, pr.fencing_token, pr.for_job_id, f.preempt_at
        )
        evolve(state, decided)
    return out


def _avoiding(state: SchedulerState, request: JobRequest, failed_on: set[str]) -> JobRequest:
    """The request, avoiding the workers an attempt failed on while another worker of the
    fleet can run it (else avoiding none: a lone capable worker gets another try)."""
    if not failed_on:
        return request
    family = state.catalog.models[request.model_id].family
    need = footprint_gb(request, state.catalog)
    others = any(
        fits(family, need, w) for w in state.workers.values() if w.worker_id not in failed_on
    )
    return replace(request, avoid=frozenset(failed_on)) if others else request


def _waiting(log: Log, job_id: str) -> bool:
    """Whether a job may still need a worker held for it (not ended, not running)."""
    f = log.jobs.get(job_id)
    return f is None or not (f.ended or f.completed() or f.in_force())


def _same(running: RunningJob, a: ev.JobScheduled) -> bool:
    return running.fencing_token == a.fencing_token


def _completed(steps: int, remaining: int, paused: ev.GenerationPaused) -> int:
    """Denoising steps a pause completed. ``steps_done`` counts sampler steps; most samplers
    take one per denoising step, PNDM more, so the steps left are scaled."""
    left = max(1, -(-steps * (paused.total_steps - paused.steps_done) // paused.total_steps))
    return max(0, remaining - left)

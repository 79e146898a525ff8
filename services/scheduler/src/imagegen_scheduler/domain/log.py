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

A worker's warm set is the newest residency fact per model: heartbeats are snapshots,
``ModelLoaded`` / ``ModelEvicted`` single facts (``imagegen_runtime.residency.ResidencyFacts``),
so a load is warm for the next decision, not the next heartbeat.

A result (``ImageGenerated``) counts only when its token is the latest assignment's and was not
revoked (``AssignmentRevoked``): a revoked assignment's late result never completes a job.
Pure: no clock, no I/O; ``at`` is the event's time.
"""

from __future__ import annotations

from dataclasses import replace

from imagegen_runtime import budget
from imagegen_runtime.residency import ResidencyFacts
from imagegen_schemas import Payload
from imagegen_schemas import jobs as ev
from imagegen_schemas.workers import ModelEvicted, ModelLoaded, WorkerHeartbeat

from .config import SchedulerConfig
from .events import (
    JobAssigned,
    JobCancelled,
    JobFinished,
    JobPreempted,
    JobQueued,
    PreemptionDecided,
    WeightsMeasured,
    WorkerLost,
    WorkerUpdated,
)
from .facts import JobFacts, Why, job_request, worker_view
from .model import JobRequest, ModelCatalog, Tier, WorkerView, fits, footprint_gb
from .state import RunningJob, SchedulerState, evolve


class Log:
    """The fold's state: per-job facts, the latest heartbeat per worker, and the policy state."""

    def __init__(
        self,
        config: SchedulerConfig,
        catalog: ModelCatalog,
        *,
        max_attempts: int = 3,
        budget_fraction: float = budget.USABLE_FRACTION,
    ) -> None:
        self.state = SchedulerState(config, catalog)
        self.max_attempts = max_attempts
        self.budget_fraction = budget_fraction
        self.jobs: dict[str, JobFacts] = {}
        self.beats: dict[str, float] = {}  # worker id -> time of the latest heartbeat folded
        # Every worker the retained heartbeats name, lost ones too (admission asks whether any
        # worker of the fleet could ever run a job; a restarting worker is still of the fleet).
        self.seen: dict[str, WorkerView] = {}
        # What each worker holds: heartbeats' snapshots and ModelLoaded / ModelEvicted, the
        # newest fact per (worker, model) winning whatever order the topics are read in.
        self.residency: ResidencyFacts[None] = ResidencyFacts()
        # Replay only: jobs whose assignment is in force on a worker that, as folded so far, still
        # runs an older job (its result is on a topic not read that far yet). Settled again
        # when the worker frees.
        self.pending: dict[str, set[str]] = {}  # worker id -> job ids
        # Per-user rotation (ADR 0620): when each job last ended on a worker (ImageGenerated or
        # GenerationFailed). The fold notes these facts itself, not the stops it applies
        # (their times depend on the order the topics are read in).
        self.finished: dict[str, float] = {}  # job id -> time
        self.state.note_finishes = False

    def facts(self, job_id: str) -> JobFacts:
        found = self.jobs.get(job_id)
        if found is None:
            found = self.jobs[job_id] = JobFacts()
        return found


def fold(log: Log, payload: object, at: float) -> list[Payload]:  # noqa: C901
    """Apply one event; return the events it implies that the scheduler must publish (a
    terminal failure after the last attempt, the cancellation of a queued job). On replay those
    were published the first time and are read back; the service publishes them only live."""
    out: list[Payload] = []
    if isinstance(payload, WorkerHeartbeat):
        log.residency.snapshot(
            payload.worker_id, {held_id(m.model_id, m.kind): None for m in payload.loaded}, at
        )
        for m in payload.loaded:
            _measured(log, held_id(m.model_id, m.kind), m.bytes, at)
        if at >= log.beats.get(payload.worker_id, float("-inf")):
            log.beats[payload.worker_id] = at
            view = worker_view(payload, log.budget_fraction)
            _update_worker(log, view, at)
        return out
    if isinstance(payload, ModelLoaded | ModelEvicted):
        if isinstance(payload, ModelLoaded):
            model_id = held_id(payload.model.model_id, payload.model.kind)
            _measured(log, model_id, payload.model.bytes, at)
        else:
            model_id = held_id(payload.model_id, payload.kind)
        resident = isinstance(payload, ModelLoaded)
        newest = log.residency.fact(payload.worker_id, model_id, resident, at)
        if newest and payload.worker_id in log.seen:
            _update_worker(log, log.seen[payload.worker_id], at)
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
            key = (payload.attempt, payload.worker_id, payload.fencing_token)
            f.failures.setdefault(key, (payload, at))
    if isinstance(payload, ev.ImageGenerated | ev.GenerationFailed):
        log.finished[job_id] = max(at, log.finished.get(job_id, at))
    if f.request is not None and job_id in log.finished:
        # per-user rotation (ADR 0620): the latest time a job of the user in the tier ended on
        # its worker (result or failure), a max over facts, so a replay in any topic order
        # gives the live rotation
        tier = log.state.queues[Tier(f.request.tier.value)]
        tier.note_served(f.request.user_id, log.finished[job_id])
    out += _terminal(log, f, job_id)
    out += _settle(log, job_id, f, at)
    for worker_id in [w for w in log.pending if w not in log.state.running_on]:
        for waiting in sorted(log.pending.pop(worker_id)):
            out += _settle(log, waiting, log.jobs[waiting], at)
    return out


def held_id(model_id: str, kind: str) -> str:
    """The catalog's id of what a worker holds (a heartbeat's entry, a ModelLoaded or
    ModelEvicted fact): a model's own id, ``lora/<id>`` for a LoRA (the id a job's adapters
    use, ``facts.job_request``), ``cn/<id>`` for a ControlNet."""
    prefix = {"lora": "lora/", "controlnet": "cn/"}.get(kind, "")
    return prefix + model_id


def _measured(log: Log, item_id: str, size: int, at: float) -> None:
    """What a worker reports a model or adapter takes loaded, for the catalog (the larger of it
    and the estimate from the files counts: ``state.evolve``)."""
    if size > 0:
        evolve(log.state, WeightsMeasured(item_id, size / budget.GB, at))


def _update_worker(log: Log, view: WorkerView, at: float) -> None:
    """The worker's view with its warm set as the newest residency facts say."""
    view = replace(view, resident=frozenset(log.residency.resident(view.worker_id)))
    log.seen[view.worker_id] = view
    evolve(log.state, WorkerUpdated(view, at))


def silence(log: Log, now: float, after_s: float) -> list[str]:
    """Workers whose latest heartbeat is older than ``after_s`` at ``now`` stop taking work (not
    accepting) until their next heartbeat; returns their ids. A worker that died idle, or was
    scaled away, leaves its last heartbeat (``idle``) in the compacted topic: without this a
    restarted scheduler, or one that outlived it, would assign jobs to it that nobody runs (the
    pool-manager declared it lost before the assignment, so revokes nothing)."""
    out = []
    for worker_id, view in log.seen.items():
        beat = log.beats.get(worker_id, float("-inf"))
        current = log.state.workers.get(worker_id)
        if now - beat > after_s and current is not None and current.accepting:
            evolve(log.state, WorkerUpdated(replace(view, accepting=False), now))
            out.append(worker_id)
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
            fencing_token=a.fencing_token,
        )
    ]


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

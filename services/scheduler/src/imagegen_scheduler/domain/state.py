"""Scheduler state as a fold over events: ``evolve(state, event) -> state``.

``SchedulerState`` is owned by one fold and updated in place (copying a 1,500-job queue on every
event would dominate the simulator); ``evolve`` returns it so folds read as
``functools.reduce(evolve, events, SchedulerState(config, catalog))``. Policies only read it.
Every handler is idempotent: a duplicate or stale event (old fencing token) changes nothing.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import TypeVar

from .config import SchedulerConfig
from .events import (
    Event,
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
from .fleet import Fleet
from .model import (
    TIERS,
    AdapterSpec,
    ModelCatalog,
    ModelSpec,
    Tier,
    WorkerView,
    denoise_s,
    footprint_gb,
    load_estimate_s,
)
from .queues import QueuedJob, TierQueue


@dataclass(frozen=True, slots=True)
class RunningJob:
    job: QueuedJob  # the job as it left the queue
    worker_id: str  # where it runs
    fencing_token: int  # token of this assignment
    started_at: float  # assignment time
    expected_end: float  # started_at + estimated load and denoise time


class SchedulerState:
    def __init__(self, config: SchedulerConfig, catalog: ModelCatalog) -> None:
        self.config = config
        self.catalog = catalog
        self.fleet = Fleet()
        self.workers: dict[str, WorkerView] = self.fleet.workers  # the same dict, read-only here
        self.idle: set[str] = set()  # accepting workers with nothing running
        self.queues: dict[Tier, TierQueue] = {tier: TierQueue() for tier in TIERS}
        self.queued: dict[str, QueuedJob] = {}
        self.queued_by_model: dict[str, int] = {}  # base model id -> queued jobs (ADR 0712)
        self.running: dict[str, RunningJob] = {}  # by job id
        self.running_on: dict[str, str] = {}  # worker id -> job id
        self.running_by_tier: dict[Tier, int] = dict.fromkeys(TIERS, 0)
        self.running_by_user: dict[tuple[Tier, str], int] = {}  # (tier, user) -> running jobs
        self.last_token = 0  # highest fencing token issued
        self.preempting: dict[str, str] = {}  # running job being paused -> job it makes room for
        self.held: dict[str, str] = {}  # worker id -> queued job it is held for
        self.holders: dict[str, set[str]] = self.fleet.holders  # the same dict, read-only here
        self.seq = 0
        # Per-user rotation (ADR 0620): whether JobFinished records the user's turn in its tier
        # (``TierQueue.note_served``). The service's fold (``log.Log``) records it from the
        # result and failure facts instead and turns this off.
        self.note_finishes = True

    def accepting_workers(self) -> int:
        return self.fleet.accepting

    def user_cap(self) -> int:
        """Most workers one user may occupy in one tier (``SchedulerConfig.user_share``, ADR
        0102): a share of the accepting workers, at least one."""
        return max(1, math.floor(self.config.user_share * self.fleet.accepting))

    def sync_user_cap(self) -> None:
        """Per-user rotation (ADR 0620): users take turns only while they queue more jobs in a
        tier than the cap lets them run at once; keep the queues' threshold at the cap."""
        cap = self.user_cap()
        for queue in self.queues.values():
            queue.set_rotate_above(cap)


def evolve(state: SchedulerState, event: Event) -> SchedulerState:
    match event:
        case JobQueued(request, at):
            if request.job_id in state.queued or request.job_id in state.running:
                return state
            try:
                need = footprint_gb(request, state.catalog)
                family = state.catalog.models[request.model_id].family
            except KeyError as missing:
                raise ValueError(
                    f"job {request.job_id} uses unknown {missing}; admit() it first"
                ) from missing
            state.seq += 1
            job = QueuedJob(request, family, need, request.steps, at, 0.0, state.seq, 1)
            _enqueue(state, job, front=False)
        case JobAssigned(job_id, worker_id, token, at):
            state.last_token = max(state.last_token, token)
            queued = state.queued.get(job_id)
            if queued is None or worker_id in state.running_on:
                return state
            del state.queued[job_id]
            _count(state, queued, -1)
            state.queues[queued.request.tier].remove(job_id, queued.request.user_id)
            worker = state.workers.get(worker_id)
            end = at
            if worker is not None:
                end += load_estimate_s(queued.request, worker, state.catalog)
                speed = worker.speed
            else:
                speed = 1.0
            end += denoise_s(queued.request, queued.remaining_steps, speed, state.catalog)
            state.running[job_id] = RunningJob(queued, worker_id, token, at, end)
            state.running_on[worker_id] = job_id
            state.running_by_tier[queued.request.tier] += 1
            user = (queued.request.tier, queued.request.user_id)
            state.running_by_user[user] = state.running_by_user.get(user, 0) + 1
            state.idle.discard(worker_id)
            state.held = {w: j for w, j in state.held.items() if j != job_id and w != worker_id}
        case JobFinished(job_id, worker_id, token, at):
            done = _stop(state, job_id, token)
            if done is not None and state.note_finishes:  # per-user rotation (ADR 0620)
                request = done.job.request
                state.queues[request.tier].note_served(request.user_id, at)
        case PreemptionDecided(job_id, worker_id, token, for_job_id, at):
            running = state.running.get(job_id)
            if running is not None and running.fencing_token == token:
                state.preempting[job_id] = for_job_id
                state.held[worker_id] = for_job_id
        case JobPreempted(job_id, worker_id, token, completed_steps, at):
            stopped = _stop(state, job_id, token)
            if stopped is not None:
                left = max(1, stopped.job.remaining_steps - completed_steps)
                _requeue(state, stopped, at, left, stopped.job.attempt)
        case JobCancelled(job_id, at):
            queued = state.queued.pop(job_id, None)
            if queued is not None:
                _count(state, queued, -1)
                state.queues[queued.request.tier].remove(job_id, queued.request.user_id)
        case WorkerUpdated(worker, at):
            state.fleet.record(worker)
            state.sync_user_cap()
            if worker.accepting and worker.worker_id not in state.running_on:
                state.idle.add(worker.worker_id)
            else:
                state.idle.discard(worker.worker_id)
            if not worker.accepting:
                state.held.pop(worker.worker_id, None)
        case WeightsMeasured(item_id, weights_gb, at):
            _measured(state, item_id, weights_gb)
        case WorkerLost(worker_id, at):
            state.fleet.forget(worker_id)
            state.sync_user_cap()
            state.idle.discard(worker_id)
            state.held.pop(worker_id, None)
            orphan = state.running_on.get(worker_id)
            if orphan is not None:
                lost = _stop(state, orphan, state.running[orphan].fencing_token)
                if lost is not None:
                    _requeue(state, lost, at, lost.job.remaining_steps, lost.job.attempt + 1)
    return state


def _measured(state: SchedulerState, item_id: str, weights_gb: float) -> None:
    """Raise the catalog's weights of ``item_id`` to a measured figure that exceeds them (never
    lower them: the larger of estimate and measurements is kept, whatever order they come in),
    and judge the queued jobs that use it again."""
    catalog = state.catalog
    if (models := _raised(catalog.models, item_id, weights_gb)) is not None:
        state.catalog = replace(catalog, models=models)
    elif (adapters := _raised(catalog.adapters, item_id, weights_gb)) is not None:
        state.catalog = replace(catalog, adapters=adapters)
    else:
        return  # not in the catalog, or not larger than its figure
    for job in list(state.queued.values()):
        request = job.request
        if request.model_id == item_id or item_id in request.adapters:
            again = replace(job, footprint_gb=footprint_gb(request, state.catalog))
            state.queued[job.job_id] = again
            state.queues[request.tier].replace(again)


_Spec = TypeVar("_Spec", ModelSpec, AdapterSpec)


def _raised(specs: Mapping[str, _Spec], item_id: str, weights_gb: float) -> dict[str, _Spec] | None:
    """``specs`` with ``item_id``'s weights raised to ``weights_gb``; None when it is not
    there or its figure is not smaller."""
    spec = specs.get(item_id)
    if spec is None or weights_gb <= spec.weights_gb:
        return None
    return {**specs, item_id: replace(spec, weights_gb=weights_gb)}


def _count(state: SchedulerState, job: QueuedJob, step: int) -> None:
    model = job.request.model_id
    n = state.queued_by_model.get(model, 0) + step
    if n:
        state.queued_by_model[model] = n
    else:
        state.queued_by_model.pop(model, None)


def _enqueue(state: SchedulerState, job: QueuedJob, *, front: bool) -> None:
    state.queued[job.job_id] = job
    _count(state, job, 1)
    state.queues[job.request.tier].push(job, front=front)


def _stop(state: SchedulerState, job_id: str, token: int) -> RunningJob | None:
    running = state.running.get(job_id)
    if running is None or running.fencing_token != token:
        return None
    del state.running[job_id]
    del state.running_on[running.worker_id]
    state.running_by_tier[running.job.request.tier] -= 1
    user = (running.job.request.tier, running.job.request.user_id)
    state.running_by_user[user] -= 1
    if not state.running_by_user[user]:
        del state.running_by_user[user]
    state.preempting.pop(job_id, None)
    worker = state.workers.get(running.worker_id)
    if worker is not None and worker.accepting:
        state.idle.add(running.worker_id)
    return running


def _requeue(
    state: SchedulerState, stopped: RunningJob, at: float, steps: int, attempt: int
) -> None:
    """Queue a paused or orphaned job again, first in its user's line and due since it arrived."""
    job = stopped.job
    waited = job.waited_s + max(0.0, stopped.started_at - job.enqueued_at)
    state.seq += 1
    again = replace(
        job, remaining_steps=steps, enqueued_at=at, waited_s=waited, seq=state.seq, attempt=attempt
    )
    _enqueue(state, again, front=True)

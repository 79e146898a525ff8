"""Facts the scheduler folds into its state, and the decisions it emits.

The service translates Kafka events into these (``GenerationRequested`` + an allowed
``PromptModerated`` -> ``JobQueued``, ``WorkerHeartbeat`` -> ``WorkerUpdated``, ...); the
simulator creates them directly. Every event carries ``at``, the time it happened.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from .model import JobRequest, WorkerView


@dataclass(frozen=True, slots=True)
class JobQueued:
    request: JobRequest  # the job; its ``queued_at`` is when it became schedulable
    at: float  # event time (normally equal to request.queued_at)


@dataclass(frozen=True, slots=True)
class JobAssigned:
    """The scheduler's own decision, applied to its state (published as ``JobScheduled``)."""

    job_id: str  # the job now running
    worker_id: str  # where
    fencing_token: int  # strictly greater than every earlier token; results must echo it
    at: float  # decision time


@dataclass(frozen=True, slots=True)
class JobFinished:
    """The worker stopped the job for good: images generated, failed, or cancelled while running."""

    job_id: str  # the job
    worker_id: str  # the worker that ran it
    fencing_token: int  # token of the assignment; a stale token is ignored
    at: float  # event time


@dataclass(frozen=True, slots=True)
class PreemptionDecided:
    """The scheduler decided to ask a worker to pause a job at its next step boundary (published
    as the schema event ``PreemptionRequested``)."""

    job_id: str  # the running job to pause (a relax job)
    worker_id: str  # its worker, held for ``for_job_id`` once free
    fencing_token: int  # token of the running assignment
    for_job_id: str  # the waiting job that needs the worker
    at: float  # decision time


@dataclass(frozen=True, slots=True)
class JobPreempted:
    """The worker paused the job and saved its latents; the job re-enters the queue."""

    job_id: str  # the paused job
    worker_id: str  # the worker, now free
    fencing_token: int  # token of the paused assignment; a stale token is ignored
    completed_steps: int  # denoising steps already done; only the rest remain
    at: float  # event time


@dataclass(frozen=True, slots=True)
class JobCancelled:
    job_id: str  # a queued job leaves the queue; a running one ends through JobFinished
    at: float  # event time


@dataclass(frozen=True, slots=True)
class WorkerUpdated:
    worker: WorkerView  # the worker's latest state (budget, resident models, accepting)
    at: float  # event time


@dataclass(frozen=True, slots=True)
class WorkerLost:
    worker_id: str  # heartbeats stopped; its running job is queued again from its last steps
    at: float  # event time


@dataclass(frozen=True, slots=True)
class WeightsMeasured:
    """A worker reported what a model or adapter it holds takes loaded (a heartbeat's entry,
    ``ModelLoaded.bytes``). Where that is more than the catalog's estimate from the files (on
    CPU float16 files load as float32), jobs are judged by it from now on."""

    item_id: str  # the catalog's id: a model's id, ``lora/<id>``, ``cn/<id>``
    weights_gb: float  # as measured
    at: float  # event time


Event = (
    JobQueued
    | JobAssigned
    | JobFinished
    | PreemptionDecided
    | JobPreempted
    | JobCancelled
    | WorkerUpdated
    | WorkerLost
    | WeightsMeasured
)


class Reason(StrEnum):
    """Why an assignment was made; recorded for metrics and checked by the property tests."""

    URGENCY = "urgency"  # the most urgent tier among the jobs that fit the worker
    RESERVED = "reserved"  # relax was below its reserved share of workers
    HELD = "held"  # the worker was freed by a preemption for this job
    AFFINITY = "affinity"  # an earlier tier's job is briefly waiting for a worker that holds it
    BASELINE = "baseline"  # made by a baseline policy (fifo, weighted)


@dataclass(frozen=True, slots=True)
class Assign:
    job_id: str  # queued job to run
    worker_id: str  # idle, accepting worker it fits
    fencing_token: int  # last token + 1, + 2, ... in decision order
    reason: Reason  # which rule chose this job


@dataclass(frozen=True, slots=True)
class Preempt:
    job_id: str  # running relax job to pause at its next step boundary
    worker_id: str  # its worker
    fencing_token: int  # token of the running assignment, so the worker can check it
    for_job_id: str  # the turbo job the worker is then held for


Decision = Assign | Preempt


def as_event(decision: Decision, at: float) -> JobAssigned | PreemptionDecided:
    """The event that records a decision; apply it with ``evolve`` before deciding again."""
    if isinstance(decision, Assign):
        return JobAssigned(decision.job_id, decision.worker_id, decision.fencing_token, at)
    return PreemptionDecided(
        decision.job_id, decision.worker_id, decision.fencing_token, decision.for_job_id, at
    )

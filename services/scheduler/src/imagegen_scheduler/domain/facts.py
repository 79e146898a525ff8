"""What the log says about one job (``JobFacts``), and the policy's view of it (pure).

Facts only ever grow; whether the job is absent, queued or running is computed from them (see
``log.py``), so the order in which they were folded does not matter.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

from imagegen_schemas import jobs as ev
from imagegen_schemas.workers import WorkerHeartbeat, WorkerStatus

from .model import JobRequest, ModelCatalog, Tier, WorkerView

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
    # failed attempts by (attempt, worker, fencing token); worker and token when the event names
    # them (a worker's and the pool-manager's failures name both)
    failures: dict[tuple[int, str | None, int | None], tuple[ev.GenerationFailed, float]] = field(
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
        """The failure reported for assignment ``a``: same attempt, same or unnamed worker, same
        or unnamed token. A failure naming an older token (a revoked or paused run of the same
        attempt on the same worker) is stale and ends nothing."""
        for key in (
            (a.attempt, a.worker_id, a.fencing_token),
            (a.attempt, a.worker_id, None),
            (a.attempt, None, None),
        ):
            found = self.failures.get(key)
            if found is not None:
                return found[0]
        return None

    @property
    def failed_on(self) -> set[str]:
        """Workers an attempt failed on (a lost worker did not fail the job): avoided."""
        return {
            w
            for (_, w, _), (failed, _) in self.failures.items()
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


def job_request(
    f: JobFacts, catalog: ModelCatalog, at: float, avoid: frozenset[str] = frozenset()
) -> JobRequest | None:
    """The policy's view of the job, schedulable since ``at`` (None: not schedulable)."""
    req = f.request
    if req is None or req.params.model not in catalog.models:
        return None  # refused at the API edge; an old event for a removed model stays out
    p = req.params
    # Adapters the catalog does not know (registered after this process started) do not steer
    # placement: the job is not held back for them. A ControlNet is named by its type: the one
    # the workers run for the model's family (``catalog.controlnets``) is placed and counted.
    family = catalog.models[p.model].family
    named = tuple(f"lora/{lo.name}" for lo in p.loras) + tuple(
        catalog.controlnets.get((family, c.type), f"cn/{c.type}") for c in p.controlnets
    )
    adapters = tuple(a for a in named if a in catalog.adapters)
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

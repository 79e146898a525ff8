"""The job read model as a fold over lifecycle events (pure): ``evolve(job, envelope, payload)``.

Rules (in order):
1. A terminal job (delivered, failed, cancelled) never changes status again.
2. Results from an assignment older than the job's current fencing token are ignored
   (a lost worker's late result must not win).
3. Timings per stage come from event timestamps; the timeline keeps every applied event.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from imagegen_schemas import Envelope, Payload
from imagegen_schemas import jobs as ev

TERMINAL = frozenset({"delivered", "failed", "cancelled"})
ACTIVE = ("queued", "scheduled", "running")


@dataclass(frozen=True)
class JobView:
    job_id: str
    user_id: str = ""
    tier: str = ""
    status: str = "unknown"  # moderating, queued, scheduled, running, generated, delivered, ...
    params: dict[str, Any] = field(default_factory=dict)
    created_at: datetime | None = None
    updated_at: datetime | None = None
    worker_id: str | None = None
    fencing_token: int = 0
    attempt: int = 0
    step: int = 0
    total_steps: int = 0
    categories: tuple[str, ...] = ()
    failure_reason: str | None = None
    failure_message: str | None = None
    images: tuple[dict[str, Any], ...] = ()  # delivered: index, url, sha256, expires_at
    timings_ms: dict[str, float] = field(default_factory=dict)
    stamps: dict[str, str] = field(default_factory=dict)  # stage -> ISO time it was reached

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL


def _stamp(job: JobView, stage: str, at: datetime) -> dict[str, str]:
    return job.stamps if stage in job.stamps else {**job.stamps, stage: at.isoformat()}


def evolve(job: JobView, env: Envelope, payload: Payload) -> JobView:  # noqa: C901 - a flat match
    at = env.occurred_at
    job = replace(job, updated_at=at)
    match payload:
        case ev.GenerationRequested():
            return replace(job, user_id=payload.user_id, tier=payload.tier.value,
                           params=payload.params.model_dump(mode="json"), created_at=at,
                           status="moderating" if job.status == "unknown" else job.status,
                           stamps=_stamp(job, "requested", at))
    if job.terminal:
        return job
    match payload:
        case ev.PromptModerated(verdict=ev.Verdict.REJECTED):
            return replace(job, status="failed", categories=payload.categories,
                           failure_reason=ev.FailureReason.PROMPT_REJECTED.value,
                           failure_message="prompt rejected: " + ", ".join(payload.categories),
                           stamps=_stamp(job, "prompt_moderated", at))
        case ev.PromptModerated():
            status = "queued" if job.status in ("moderating", "unknown") else job.status
            return replace(job, status=status, stamps=_stamp(job, "prompt_moderated", at))
        case ev.JobScheduled():
            if payload.fencing_token < job.fencing_token:
                return job
            return replace(job, status="scheduled", worker_id=payload.worker_id,
                           fencing_token=payload.fencing_token, attempt=payload.attempt,
                           step=0, stamps=_stamp(job, "scheduled", at))
        case ev.GenerationStarted() | ev.StepProgressed() | ev.ImageGenerated():
            if payload.fencing_token != job.fencing_token:
                return job  # stale (or ahead of its assignment, which cannot be trusted)
            if isinstance(payload, ev.GenerationStarted):
                return replace(job, status="running", stamps=_stamp(job, "started", at))
            if isinstance(payload, ev.StepProgressed):
                return replace(job, status="running", step=payload.step,
                               total_steps=payload.total_steps)
            return replace(job, status="generated", timings_ms=dict(payload.timings_ms),
                           step=job.total_steps or job.step, stamps=_stamp(job, "generated", at))
        case ev.ImageModerated():
            if payload.fencing_token is not None and payload.fencing_token != job.fencing_token:
                return job
            if payload.verdict == ev.Verdict.REJECTED:
                return replace(job, status="failed", categories=payload.categories,
                               failure_reason=ev.FailureReason.IMAGE_REJECTED.value,
                               failure_message="image rejected: " + ", ".join(payload.categories),
                               stamps=_stamp(job, "image_moderated", at))
            return replace(job, status="moderated", stamps=_stamp(job, "image_moderated", at))
        case ev.ImageDelivered():
            images = tuple(i.model_dump(mode="json") for i in payload.images)
            return replace(job, status="delivered", images=images,
                           stamps=_stamp(job, "delivered", at))
        case ev.GenerationFailed(terminal=True):
            return replace(job, status="failed", failure_reason=payload.reason.value,
                           failure_message=payload.message, stamps=_stamp(job, "failed", at))
        case ev.GenerationFailed():
            return replace(job, status="queued", worker_id=None)  # re-queued for another attempt
        case ev.GenerationCancelled():
            return replace(job, status="cancelled", stamps=_stamp(job, "cancelled", at))
    return job


def stage_timings(job: JobView) -> dict[str, float]:
    """Milliseconds between consecutive stages reached, e.g. ``queued->scheduled``."""
    order = ["requested", "prompt_moderated", "scheduled", "started", "generated",
             "image_moderated", "delivered"]
    reached = [(s, datetime.fromisoformat(job.stamps[s])) for s in order if s in job.stamps]
    out = {f"{a}->{b}": (tb - ta).total_seconds() * 1000
           for (a, ta), (b, tb) in zip(reached, reached[1:], strict=False)}
    if len(reached) >= 2:
        out["total"] = (reached[-1][1] - reached[0][1]).total_seconds() * 1000
    return out

"""The job read model as a fold over lifecycle events (pure): ``evolve(job, envelope, payload)``.

Topics are consumed independently, so one job's events from different topics may be applied in
any order (a step-progress record after the image, a lost worker's late result before the newer
assignment). The fold therefore only *accumulates facts*, each kept per assignment (fencing
token), and derives the status from all facts seen (``derive``):

1. Terminal wins: delivered, else failed (terminal failure or a rejection), else cancelled.
2. Otherwise the current assignment is the one with the highest fencing token; results of any
   other assignment are kept but never decide the status (a revoked worker's result is ignored).
3. Within the current assignment: moderated > generated > running > scheduled; a failed attempt
   of it, or a pause (preemption: ``GenerationPaused``), puts the job back to queued.
4. Without an assignment: queued once the prompt is allowed, else moderating.

Because every fact is merged by max, first-in-its-own-topic or set union, the result does not
depend on how topics interleave, so a rebuild from the log equals the live projection
(``tests`` check this over random interleavings).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

from imagegen_schemas import Envelope, Payload
from imagegen_schemas import jobs as ev

TERMINAL = frozenset({"delivered", "failed", "cancelled"})


@dataclass(frozen=True)
class Attempt:
    """Facts about one assignment (one fencing token)."""

    worker_id: str = ""
    attempt: int = 0
    step: int = 0
    total_steps: int = 0
    started: bool = False
    generated: bool = False
    failed: bool = False  # this attempt failed; the job goes back to the queue
    paused: bool = False  # this assignment was paused (preempted); the job waits to resume
    image_verdict: str | None = None  # allowed / rejected
    categories: tuple[str, ...] = ()
    timings_ms: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class JobView:
    job_id: str
    user_id: str = ""
    tier: str = ""
    status: str = "unknown"  # derived: moderating, queued, scheduled, running, generated, ...
    params: dict[str, Any] = field(default_factory=dict)
    created_at: datetime | None = None
    updated_at: datetime | None = None
    prompt_verdict: str | None = None
    categories: tuple[str, ...] = ()
    attempts: dict[str, Attempt] = field(default_factory=dict)  # fencing token (text) -> facts
    failed_attempts: tuple[int, ...] = ()  # attempt numbers reported failed (not terminally)
    failure_reason: str | None = None
    failure_message: str | None = None
    cancelled: bool = False
    images: tuple[dict[str, Any], ...] = ()  # delivered: index, url, sha256, expires_at
    stamps: dict[str, str] = field(default_factory=dict)  # stage -> ISO time first reached
    # the scheduler's latest wait estimate (WaitEstimated): when it was made, and the start time
    # it expects (ISO); the newest by occurred_at is current
    estimated_at: str | None = None
    expected_start: str | None = None

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL

    @property
    def fencing_token(self) -> int:
        return max((int(t) for t in self.attempts), default=0)

    @property
    def current(self) -> Attempt | None:
        return self.attempts.get(str(self.fencing_token))

    @property
    def worker_id(self) -> str | None:
        return self.current.worker_id if self.current else None

    @property
    def attempt(self) -> int:
        return self.current.attempt if self.current else 0

    @property
    def step(self) -> int:
        return self.current.step if self.current else 0

    @property
    def total_steps(self) -> int:
        return self.current.total_steps if self.current else 0

    @property
    def timings_ms(self) -> dict[str, float]:
        return self.current.timings_ms if self.current else {}


def _stamp(job: JobView, stage: str, at: datetime) -> dict[str, str]:
    """The earliest time a stage was reached (min is order independent)."""
    old = job.stamps.get(stage)
    if old is not None and datetime.fromisoformat(old) <= at:
        return job.stamps
    return {**job.stamps, stage: at.isoformat()}


def _attempt(job: JobView, token: int, **changes: Any) -> dict[str, Attempt]:
    a = job.attempts.get(str(token), Attempt())
    return {**job.attempts, str(token): replace(a, **changes)}


def _fact(job: JobView, at: datetime, payload: Payload) -> JobView:  # noqa: C901 - flat match
    def a(token: int) -> Attempt:
        return job.attempts.get(str(token), Attempt())

    match payload:
        case ev.GenerationRequested():
            return replace(
                job,
                user_id=payload.user_id,
                tier=payload.tier.value,
                params=payload.params.model_dump(mode="json"),
                created_at=at,
                stamps=_stamp(job, "requested", at),
            )
        case ev.PromptModerated():
            return replace(
                job,
                prompt_verdict=payload.verdict.value,
                categories=payload.categories or job.categories,
                stamps=_stamp(job, "prompt_moderated", at),
            )
        case ev.JobScheduled():
            t = payload.fencing_token
            return replace(
                job,
                attempts=_attempt(job, t, worker_id=payload.worker_id, attempt=payload.attempt),
                stamps=_stamp(job, "scheduled", at),
            )
        case ev.GenerationStarted():
            return replace(
                job,
                attempts=_attempt(job, payload.fencing_token, started=True),
                stamps=_stamp(job, "started", at),
            )
        case ev.StepProgressed():
            t = payload.fencing_token
            return replace(
                job,
                attempts=_attempt(
                    job, t, step=max(a(t).step, payload.step), total_steps=payload.total_steps
                ),
            )
        case ev.ImageGenerated():
            t = payload.fencing_token
            return replace(
                job,
                attempts=_attempt(job, t, generated=True, timings_ms=dict(payload.timings_ms)),
                stamps=_stamp(job, "generated", at),
            )
        case ev.GenerationPaused():
            t = payload.fencing_token
            done = max(job.attempts.get(str(t), Attempt()).step, payload.steps_done)
            return replace(job, attempts=_attempt(job, t, paused=True, step=done))
        case ev.ImageModerated():
            t = payload.fencing_token if payload.fencing_token is not None else job.fencing_token
            return replace(
                job,
                attempts=_attempt(
                    job, t, image_verdict=payload.verdict.value, categories=payload.categories
                ),
                stamps=_stamp(job, "image_moderated", at),
            )
        case ev.ImageDelivered():
            images = tuple(i.model_dump(mode="json") for i in payload.images)
            return replace(job, images=images, stamps=_stamp(job, "delivered", at))
        case ev.GenerationFailed(terminal=True):
            return replace(
                job,
                failure_reason=payload.reason.value,
                failure_message=payload.message,
                stamps=_stamp(job, "failed", at),
            )
        case ev.GenerationFailed():
            return replace(
                job, failed_attempts=tuple(sorted({*job.failed_attempts, payload.attempt}))
            )
        case ev.GenerationCancelled():
            return replace(job, cancelled=True, stamps=_stamp(job, "cancelled", at))
        case ev.WaitEstimated():
            if job.estimated_at is not None and datetime.fromisoformat(job.estimated_at) >= at:
                return job
            start = at + timedelta(seconds=payload.eta_s)
            return replace(job, estimated_at=at.isoformat(), expected_start=start.isoformat())
    return job


def derive(job: JobView) -> str:
    """The status from the facts (rules 1-4 of the module docstring)."""
    cur = job.current
    if "delivered" in job.stamps:
        return "delivered"
    if (
        job.failure_reason is not None
        or job.prompt_verdict == "rejected"
        or (cur is not None and cur.image_verdict == "rejected")
    ):
        return "failed"
    if job.cancelled:
        return "cancelled"
    if cur is not None and cur.attempt not in job.failed_attempts and not cur.paused:
        if cur.image_verdict == "allowed":
            return "moderated"
        if cur.generated:
            return "generated"
        if cur.started or cur.step:
            return "running"
        return "scheduled"
    if job.prompt_verdict == "allowed":
        return "queued"
    return "moderating" if job.user_id else "unknown"


def evolve(job: JobView, env: Envelope, payload: Payload) -> JobView:
    at = env.occurred_at
    job = _fact(job, at, payload)
    job = replace(job, updated_at=max(at, job.updated_at) if job.updated_at else at)
    status = derive(job)
    reason, message = job.failure_reason, job.failure_message
    if status == "failed" and reason is None:
        cur = job.current
        if job.prompt_verdict == "rejected":
            reason, message = ev.FailureReason.PROMPT_REJECTED.value, "prompt rejected: "
        else:
            reason, message = ev.FailureReason.IMAGE_REJECTED.value, "image rejected: "
            job = replace(job, categories=cur.categories if cur else job.categories)
        message += ", ".join(job.categories)
    return replace(job, status=status, failure_reason=reason, failure_message=message)


def stage_timings(job: JobView) -> dict[str, float]:
    """Milliseconds between consecutive stages reached, e.g. ``scheduled->started``."""
    order = [
        "requested",
        "prompt_moderated",
        "scheduled",
        "started",
        "generated",
        "image_moderated",
        "delivered",
    ]
    reached = [(s, datetime.fromisoformat(job.stamps[s])) for s in order if s in job.stamps]
    out = {
        f"{a}->{b}": (tb - ta).total_seconds() * 1000
        for (a, ta), (b, tb) in zip(reached, reached[1:], strict=False)
    }
    if len(reached) >= 2:
        out["total"] = (reached[-1][1] - reached[0][1]).total_seconds() * 1000
    return out


def eta_s(
    job: JobView, queue_position: int | None, avg_job_s: float, now: datetime
) -> float | None:
    """Seconds until the job is expected to start, for a waiting job; None once it runs.

    The scheduler's own estimate (``WaitEstimated``, ADR 0112), counted down from when it was
    made, when one was folded; before the first one arrives (within a second of queueing), the
    jobs ahead of it plus itself times an average job time.
    """
    if queue_position is None:
        return None
    if job.expected_start is not None:
        left = (datetime.fromisoformat(job.expected_start) - now).total_seconds()
        return round(max(0.0, left), 1)
    return round((queue_position + 1) * avg_job_s, 1)

"""The usage meter's fold (ADR 0630): job events in, one ``UsageRecorded`` per ended job out.

Pure: no I/O, no clock. :class:`UsageFold` folds the job topics (request, verdicts,
assignments, results, deliveries, endings), the workers' heartbeats (for each worker's GPU
class) and the usage topic itself (which jobs already have their record). The fold is
idempotent per event: every fact is kept with first-wins or max semantics keyed by job and
fencing token, so a record read twice changes nothing.

A job is *due* (:meth:`UsageFold.due`) when it ended, its request is known, it has no record
yet, and either every assignment has an outcome or ``grace_s`` passed since it ended (an
assignment left open, e.g. the scheduler ended the job on a run deadline, is then counted up
to the job's end). The wait lets outcomes read after the terminal event (topics are read in
no fixed order between each other) still count.

GPU seconds of an assignment: from its ``JobScheduled`` to its outcome (``ImageGenerated``,
``GenerationPaused``, a non-terminal ``GenerationFailed`` naming its token,
``AssignmentRevoked``, or ``GenerationCancelled`` while it was in force): the time the worker
was held for the job, model loads included. Both ends are on topics kept forever, so the fold
can always be rebuilt from offset 0.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from imagegen_schemas import Envelope, Payload
from imagegen_schemas import jobs as ev
from imagegen_schemas.usage import (
    UNKNOWN_WORKER_CLASS,
    AttemptOutcome,
    AttemptUsage,
    UsageRecorded,
    UsageState,
)
from imagegen_schemas.workers import WorkerHeartbeat

REJECTED_REASONS = {
    ev.FailureReason.PROMPT_REJECTED: UsageState.PROMPT_REJECTED,
    ev.FailureReason.IMAGE_REJECTED: UsageState.IMAGE_REJECTED,
}


@dataclass
class AttemptFacts:
    """One assignment: when it began and how (and when) it ended, once known."""

    fencing_token: int
    attempt: int
    worker_id: str
    scheduled_at: datetime
    outcome: AttemptOutcome | None = None
    ended_at: datetime | None = None

    def close(self, outcome: AttemptOutcome, at: datetime) -> None:
        """The first outcome wins (a redelivered or late duplicate changes nothing)."""
        if self.outcome is None:
            self.outcome, self.ended_at = outcome, at


@dataclass
class JobUsage:
    """What the fold knows of one job that has no usage record yet."""

    request: ev.GenerationRequested | None = None
    requested_at: datetime | None = None
    attempts: dict[int, AttemptFacts] = field(default_factory=dict)  # by fencing token
    # Outcomes read before their assignment (another topic): applied when it comes.
    early: dict[int, tuple[AttemptOutcome, datetime]] = field(default_factory=dict)
    cancelled_at: datetime | None = None
    state: UsageState | None = None
    failure_reason: str | None = None
    ended_at: datetime | None = None
    images: int = 0

    def end(self, state: UsageState, at: datetime, reason: str | None = None) -> None:
        """The first terminal fact wins."""
        if self.state is None:
            self.state, self.ended_at, self.failure_reason = state, at, reason

    def settled(self) -> bool:
        """Nothing more to wait for: every assignment has an outcome, no outcome waits for its
        assignment, and a job that ended with images has the assignment that made them."""
        if self.early or any(a.outcome is None for a in self.attempts.values()):
            return False
        if self.state in (UsageState.DELIVERED, UsageState.IMAGE_REJECTED):
            return any(a.outcome is AttemptOutcome.GENERATED for a in self.attempts.values())
        return True


@dataclass
class UsageFold:
    """Per-job usage facts, the workers' classes, and the jobs already recorded."""

    grace_s: float = 30.0
    jobs: dict[str, JobUsage] = field(default_factory=dict)
    recorded: set[str] = field(default_factory=set)  # job ids with a UsageRecorded on the topic
    worker_class: dict[str, str] = field(default_factory=dict)  # worker id -> gpu_type

    def apply(self, env: Envelope, payload: Payload) -> None:
        """Fold one event (any topic; events the meter does not use are ignored)."""
        at = env.occurred_at
        if isinstance(payload, WorkerHeartbeat):
            self.worker_class[payload.worker_id] = payload.gpu_type
            return
        if isinstance(payload, UsageRecorded):
            self.mark_recorded(payload.job_id)
            return
        job_id = getattr(payload, "job_id", None)
        if not isinstance(job_id, str) or job_id in self.recorded:
            return
        job = self.jobs.get(job_id)
        if job is None:
            if not _relevant(payload):
                return
            job = self.jobs[job_id] = JobUsage()
        _fold(job, payload, at)

    def mark_recorded(self, job_id: str) -> None:
        """The job has its record: forget its facts, ignore its later events."""
        self.recorded.add(job_id)
        self.jobs.pop(job_id, None)

    def due(self, now: datetime) -> list[str]:
        """Jobs whose record can be made now (see the module docstring), oldest end first."""
        out = []
        for job_id, job in self.jobs.items():
            if job.state is None or job.request is None or job.ended_at is None:
                continue
            if job.settled() or (now - job.ended_at).total_seconds() >= self.grace_s:
                out.append((job.ended_at, job_id))
        return [job_id for _, job_id in sorted(out)]

    def record(self, job_id: str) -> UsageRecorded:
        """The usage record of a due job (see :meth:`due`)."""
        job = self.jobs[job_id]
        request, ended_at, state = job.request, job.ended_at, job.state
        if request is None or ended_at is None or state is None or job.requested_at is None:
            raise ValueError(f"job {job_id} has not ended or its request is unknown")
        attempts = []
        by_class: dict[str, float] = {}
        for token in sorted(job.attempts):
            a = job.attempts[token]
            end = a.ended_at if a.ended_at is not None else max(ended_at, a.scheduled_at)
            seconds = round(max(0.0, (end - a.scheduled_at).total_seconds()), 6)
            cls = self.worker_class.get(a.worker_id, UNKNOWN_WORKER_CLASS)
            by_class[cls] = round(by_class.get(cls, 0.0) + seconds, 6)
            attempts.append(
                AttemptUsage(
                    fencing_token=token,
                    attempt=a.attempt,
                    worker_id=a.worker_id,
                    worker_class=cls,
                    outcome=a.outcome or AttemptOutcome.OPEN,
                    gpu_seconds=seconds,
                )
            )
        return UsageRecorded(
            job_id=job_id,
            user_id=request.user_id,
            plan=request.plan,
            tier=request.tier,
            model=request.params.model,
            state=state,
            failure_reason=job.failure_reason,
            images_requested=request.params.num_images,
            images=job.images if state is UsageState.DELIVERED else 0,
            gpu_seconds=round(sum(a.gpu_seconds for a in attempts), 6),
            gpu_seconds_by_class=by_class,
            attempts=tuple(attempts),
            requested_at=job.requested_at,
            ended_at=ended_at,
        )


def _relevant(payload: Payload) -> bool:
    """Whether an event opens a job's usage facts (anything of the job lifecycle the fold reads)."""
    return isinstance(
        payload,
        ev.GenerationRequested
        | ev.PromptModerated
        | ev.JobScheduled
        | ev.ImageGenerated
        | ev.GenerationPaused
        | ev.AssignmentRevoked
        | ev.ImageModerated
        | ev.ImageDelivered
        | ev.GenerationFailed
        | ev.GenerationCancelled,
    )


def _outcome(job: JobUsage, token: int, outcome: AttemptOutcome, at: datetime) -> None:
    attempt = job.attempts.get(token)
    if attempt is None:
        job.early.setdefault(token, (outcome, at))
    else:
        attempt.close(outcome, at)


def _fold(job: JobUsage, payload: Payload, at: datetime) -> None:
    match payload:
        case ev.GenerationRequested():
            if job.request is None:
                job.request, job.requested_at = payload, at
        case ev.JobScheduled():
            if payload.fencing_token not in job.attempts:
                attempt = AttemptFacts(
                    payload.fencing_token, payload.attempt, payload.worker_id, at
                )
                job.attempts[payload.fencing_token] = attempt
                early = job.early.pop(payload.fencing_token, None)
                if early is not None:
                    attempt.close(*early)
                elif job.cancelled_at is not None and job.cancelled_at >= at:
                    attempt.close(AttemptOutcome.CANCELLED, job.cancelled_at)
        case ev.ImageGenerated():
            _outcome(job, payload.fencing_token, AttemptOutcome.GENERATED, at)
        case ev.GenerationPaused():
            _outcome(job, payload.fencing_token, AttemptOutcome.PAUSED, at)
        case ev.AssignmentRevoked():
            _outcome(job, payload.fencing_token, AttemptOutcome.REVOKED, at)
        case ev.GenerationFailed(terminal=False):
            if payload.fencing_token is not None:
                _outcome(job, payload.fencing_token, AttemptOutcome.FAILED, at)
        case ev.GenerationFailed():
            state = REJECTED_REASONS.get(payload.reason, UsageState.FAILED)
            reason = payload.reason.value if state is UsageState.FAILED else None
            job.end(state, at, reason)
        case ev.GenerationCancelled():
            # No token on the event: it ends whatever assignment was in force before it.
            if job.cancelled_at is None:
                job.cancelled_at = at
            for attempt in job.attempts.values():
                if attempt.scheduled_at <= at:
                    attempt.close(AttemptOutcome.CANCELLED, at)
            job.end(UsageState.CANCELLED, at)
        case ev.PromptModerated(verdict=ev.Verdict.REJECTED):
            job.end(UsageState.PROMPT_REJECTED, at)
        case ev.ImageModerated(verdict=ev.Verdict.REJECTED):
            job.end(UsageState.IMAGE_REJECTED, at)
        case ev.ImageDelivered():
            job.images = max(job.images, len(payload.images))
            job.end(UsageState.DELIVERED, at)

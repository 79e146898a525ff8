"""The usage ledger: one record per job that ended, keyed by user id (ADR 0630, docs/usage.md).

Billing and analytics read the topic ``imagegen.usage``. Each record is final: a job gets one
``UsageRecorded``, whose ``event_id`` is derived from the job id alone, so a record published
again (after a crash of the meter) carries the same ``event_id`` and readers drop it by id.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import ClassVar

from pydantic import BaseModel, ConfigDict, Field

from .common import Plan, Tier
from .envelope import Payload

UNKNOWN_WORKER_CLASS = "unknown"


class UsageState(StrEnum):
    """How a job ended."""

    DELIVERED = "delivered"  # images delivered (ImageDelivered)
    FAILED = "failed"  # terminal GenerationFailed; see failure_reason
    PROMPT_REJECTED = "prompt_rejected"  # PromptModerated(rejected): never reached a GPU
    IMAGE_REJECTED = "image_rejected"  # ImageModerated(rejected): generated, not delivered
    CANCELLED = "cancelled"  # GenerationCancelled


class AttemptOutcome(StrEnum):
    """How one assignment of the job to a worker ended."""

    GENERATED = "generated"  # ImageGenerated
    PAUSED = "paused"  # GenerationPaused (preempted; the job resumed on a later attempt)
    FAILED = "failed"  # GenerationFailed(terminal=false) naming the assignment (e.g. OOM)
    REVOKED = "revoked"  # AssignmentRevoked (its worker was declared lost)
    CANCELLED = "cancelled"  # GenerationCancelled while the assignment was in force
    OPEN = "open"  # no outcome seen: counted up to the job's end (e.g. a run deadline)


class AttemptUsage(BaseModel):
    """One assignment of the job to a worker and the GPU time it held (not an event)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    fencing_token: int = Field(ge=1, description="The assignment's fencing token (JobScheduled).")
    attempt: int = Field(ge=1, description="Attempt number (JobScheduled.attempt).")
    worker_id: str = Field(description="Worker the job was assigned to.")
    worker_class: str = Field(
        description="The worker's GPU class (WorkerHeartbeat.gpu_type, e.g. 'H100-80GB', 'cpu');"
        " 'unknown' when no heartbeat of the worker was seen."
    )
    outcome: AttemptOutcome = Field(description="How the assignment ended.")
    gpu_seconds: float = Field(
        ge=0,
        description="Seconds the worker was held: from the assignment (JobScheduled) to its"
        " outcome; an 'open' attempt is counted up to the job's end.",
    )


class UsageRecorded(Payload):
    """What one ended job used. Published once per job by the usage meter, keyed by user id.

    ``gpu_seconds_by_class`` sums every attempt, the ones that were paused (preempted),
    revoked or failed included: they held a GPU. A job that never reached a worker has none.
    """

    event_type: ClassVar[str] = "imagegen.usage.recorded"
    job_id: str = Field(description="The job (GenerationRequested.job_id).")
    user_id: str = Field(description="The user billed; also the record key.")
    plan: Plan = Field(description="The user's plan when the job was requested.")
    tier: Tier = Field(description="The job's service tier.")
    model: str = Field(description="The registered model id requested.")
    state: UsageState = Field(description="How the job ended.")
    failure_reason: str | None = Field(
        default=None,
        description="GenerationFailed.reason when state is 'failed' (e.g. 'retries_exhausted',"
        " 'timeout'); None otherwise.",
    )
    images_requested: int = Field(ge=0, description="Images asked for (params.num_images).")
    images: int = Field(
        ge=0, description="Images delivered to the user (0 unless state is 'delivered')."
    )
    gpu_seconds: float = Field(ge=0, description="Sum of gpu_seconds over every attempt.")
    gpu_seconds_by_class: dict[str, float] = Field(
        default_factory=dict,
        description="GPU seconds per worker class (attempts summed per worker_class).",
    )
    attempts: tuple[AttemptUsage, ...] = Field(
        default=(), description="Every assignment of the job, in fencing-token order."
    )
    requested_at: datetime = Field(description="When the API accepted the job (UTC).")
    ended_at: datetime = Field(description="When the terminal event occurred (UTC).")

"""The job lifecycle: one event type per fact, keyed by job id (correlation id)."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import ClassVar

from pydantic import BaseModel, ConfigDict, Field

from .common import GenerationParams, ImageRef, Plan, Tier
from .envelope import Payload


class GenerationRequested(Payload):
    """A client's request was accepted durably by the API."""

    event_type: ClassVar[str] = "imagegen.generation.requested"
    job_id: str
    user_id: str
    plan: Plan
    tier: Tier
    params: GenerationParams
    webhook_url: str | None = None
    idempotency_key: str | None = None


class Verdict(StrEnum):
    ALLOWED = "allowed"
    REJECTED = "rejected"


class PromptModerated(Payload):
    """The safety service's verdict on a prompt; a rejected prompt never reaches a GPU."""

    event_type: ClassVar[str] = "imagegen.prompt.moderated"
    job_id: str
    verdict: Verdict
    categories: tuple[str, ...] = Field(default=(), description="Categories that fired.")
    scores: dict[str, float] = Field(default_factory=dict, description="Score per category, 0..1.")
    checker: str = Field(default="", description="Model/version that decided.")


class ResumeFrom(BaseModel):
    """Where a paused job continues (not an event: part of JobScheduled)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    steps_done: int = Field(ge=1, description="Sampler steps already done; only the rest run.")
    state_uri: str = Field(min_length=1, description="Blob with the saved denoising state.")
    state_sha256: str = Field(pattern=r"^[0-9a-f]{64}$", description="Digest of that blob.")


class JobScheduled(Payload):
    """The scheduler assigned a job to a worker. ``fencing_token`` increases per assignment."""

    event_type: ClassVar[str] = "imagegen.job.scheduled"
    job_id: str
    worker_id: str
    fencing_token: int = Field(ge=1, description="A result with an older token is ignored.")
    attempt: int = Field(default=1, ge=1)
    tier: Tier
    queued_for_ms: int = Field(default=0, ge=0)
    # Event-carried state: the worker needs nothing but this event to run the job.
    params: GenerationParams | None = Field(default=None, description="What to generate.")
    webhook_url: str | None = Field(default=None, description="Carried on to delivery.")
    resume: ResumeFrom | None = Field(
        default=None, description="Continue a paused job from its saved state; None: fresh start."
    )


class PreemptionRequested(Payload):
    """The scheduler asks a worker to pause a running job at its next step boundary. Published
    on the assignments topic, keyed by job, after the assignment it names; the worker pauses
    only the run of that job with that very fencing token and ignores it otherwise."""

    event_type: ClassVar[str] = "imagegen.generation.preemption_requested"
    job_id: str
    worker_id: str
    fencing_token: int = Field(ge=1, description="Token of the running assignment to pause.")
    reason: str = Field(default="", max_length=500)
    for_job_id: str | None = Field(
        default=None, description="The waiting job the worker is then held for (scheduler replay)."
    )


class GenerationStarted(Payload):
    """A worker began denoising a job."""

    event_type: ClassVar[str] = "imagegen.generation.started"
    job_id: str
    worker_id: str
    fencing_token: int = Field(ge=1)
    model_load_ms: int = Field(default=0, ge=0, description="0 when the model was warm.")


class WaitEstimated(Payload):
    """The scheduler's estimate of how long a queued job still waits for a worker.

    Published when a job is first queued and again when the estimate moves (the scheduler's
    ``estimate_waits``: a projection of its policy with no new arrivals, a guide, not a promise).
    The latest one (by ``occurred_at``) is current; it means nothing once the job is scheduled."""

    event_type: ClassVar[str] = "imagegen.generation.wait_estimated"
    job_id: str
    eta_s: float = Field(
        ge=0, description="Seconds from occurred_at until it is expected to start."
    )
    queue_position: int | None = Field(
        default=None, ge=0, description="Jobs expected to start before it (0: next)."
    )


class StepProgressed(Payload):
    """Progress every few steps, with an optional small preview (PNG, base64)."""

    event_type: ClassVar[str] = "imagegen.generation.step_progressed"
    job_id: str
    worker_id: str
    fencing_token: int = Field(ge=1)
    step: int = Field(ge=0)
    total_steps: int = Field(ge=1)
    preview_png_b64: str | None = Field(default=None, max_length=65536)


class ImageGenerated(Payload):
    """The worker finished; images are in blob storage."""

    event_type: ClassVar[str] = "imagegen.image.generated"
    job_id: str
    worker_id: str
    fencing_token: int = Field(ge=1)
    images: tuple[ImageRef, ...]
    timings_ms: dict[str, float] = Field(
        default_factory=dict, description="Stage timings: load, encode, denoise, decode, upload."
    )
    webhook_url: str | None = Field(default=None, description="Carried on to delivery.")


class GenerationPaused(Payload):
    """A worker paused a job at a step boundary and saved what it needs to continue; the job
    waits for a new assignment (``JobScheduled.resume``). Published on the results topic, so it
    is ordered with the assignment's other outcomes and kept as long as they are."""

    event_type: ClassVar[str] = "imagegen.generation.paused"
    job_id: str
    worker_id: str
    fencing_token: int = Field(ge=1, description="Token of the paused assignment.")
    steps_done: int = Field(ge=1, description="Sampler steps done, counted from the start.")
    total_steps: int = Field(ge=2, description="Sampler steps of the whole job.")
    state_uri: str = Field(min_length=1, description="Blob with the saved denoising state.")
    state_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")


class AssignmentRevoked(Payload):
    """An assignment is void (its worker was declared lost). Published on the results topic,
    keyed by job, so it precedes in the same partition any late result of that assignment:
    consumers drop results whose fencing token is not above the revoked one."""

    event_type: ClassVar[str] = "imagegen.assignment.revoked"
    job_id: str
    worker_id: str
    fencing_token: int = Field(ge=1, description="The revoked assignment's token.")
    reason: str = ""


class ImageModerated(Payload):
    """The safety service's verdict on the generated images."""

    event_type: ClassVar[str] = "imagegen.image.moderated"
    job_id: str
    verdict: Verdict
    per_image: tuple[Verdict, ...] = ()
    categories: tuple[str, ...] = ()
    scores: dict[str, float] = Field(default_factory=dict)
    checker: str = ""
    # Event-carried state for delivery: the images judged and where to call back.
    images: tuple[ImageRef, ...] = ()
    fencing_token: int | None = Field(default=None, description="Token of the judged result.")
    webhook_url: str | None = None


class DeliveredImage(BaseModel):
    """One delivered image (not an event: part of ImageDelivered)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    index: int = Field(ge=0)
    url: str
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    expires_at: datetime


class ImageDelivered(Payload):
    """Images are in the delivery store with signed URLs; the webhook (if any) was called."""

    event_type: ClassVar[str] = "imagegen.image.delivered"
    job_id: str
    images: tuple[DeliveredImage, ...]
    webhook_status: int | None = Field(default=None, description="HTTP status of the webhook call.")


class FailureReason(StrEnum):
    PROMPT_REJECTED = "prompt_rejected"
    IMAGE_REJECTED = "image_rejected"
    OUT_OF_MEMORY = "out_of_memory"
    WORKER_LOST = "worker_lost"
    MODEL_UNAVAILABLE = "model_unavailable"
    INTERNAL_ERROR = "internal_error"
    RETRIES_EXHAUSTED = "retries_exhausted"
    TIMEOUT = "timeout"
    # A record about this job could not be processed (unparseable, breaks the contract, or
    # fails the same way every time); it is on the dead-letter topic (ADR 0008).
    POISON_EVENT = "poison_event"
    # A worker could not store the images or the paused state (blob folder unwritable, disk
    # full, object store down): an attempt failure (terminal False), re-queued elsewhere.
    STORAGE_UNAVAILABLE = "storage_unavailable"
    # No live worker serves the job's model (after a grace period at admission).
    NO_CAPABLE_WORKER = "no_capable_worker"


class GenerationFailed(Payload):
    """A job ended without images (terminal), or one attempt failed (``terminal`` False)."""

    event_type: ClassVar[str] = "imagegen.generation.failed"
    job_id: str
    reason: FailureReason
    message: str = Field(default="", max_length=4000)
    attempt: int = Field(default=1, ge=1)
    terminal: bool = True
    worker_id: str | None = None
    fencing_token: int | None = Field(
        default=None,
        ge=1,
        description="Token of the assignment that failed, when one did: a failure naming an "
        "older token than the job's current assignment is stale and ends nothing (ADR 0112).",
    )


class CancellationRequested(Payload):
    """The client asked to cancel; a running job stops at the next step boundary."""

    event_type: ClassVar[str] = "imagegen.generation.cancellation_requested"
    job_id: str
    requested_by: str


class GenerationCancelled(Payload):
    """A job ended cancelled (terminal)."""

    event_type: ClassVar[str] = "imagegen.generation.cancelled"
    job_id: str
    at_step: int | None = Field(
        default=None, description="Step reached when it stopped, if running."
    )

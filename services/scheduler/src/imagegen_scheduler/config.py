"""Settings of the scheduler service (env prefix ``IMAGEGEN_SCHEDULER_``)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from imagegen_runtime.settings import ServiceSettings

SERVICE = "scheduler"
# Topics this service consumes (catalog names, before the prefix).
SUBSCRIBES: tuple[str, ...] = (
    "imagegen.jobs.requested",
    "imagegen.jobs.moderated",
    "imagegen.jobs.scheduled",
    "imagegen.jobs.generated",
    "imagegen.jobs.ended",
    "imagegen.workers.heartbeats",
    "imagegen.workers.models",
)


class SchedulerSettings(ServiceSettings):
    """Every knob of the scheduler service; env ``IMAGEGEN_SCHEDULER_*``."""

    model_config = SettingsConfigDict(env_prefix="IMAGEGEN_SCHEDULER_", extra="ignore", frozen=True)

    models_dir: Path = Field(default=Path("models"), description="Registered models (model.json).")
    max_attempts: int = Field(default=3, ge=1, le=10, description="Attempts before a job fails.")
    http_port: int = Field(default=8101, ge=1, le=65535, description="Port of the HTTP server.")
    admission_grace_s: float = Field(
        default=30.0,
        ge=0,
        description=(
            "Seconds the scheduler waits after it caught up before it rejects a job that no"
            " known worker can run (no_capable_worker): long enough for every running worker to"
            " heartbeat (every 2 s by default), so a restart never rejects for an empty fleet."
        ),
    )
    admission_fleet_window_s: float = Field(
        default=900.0,
        gt=0,
        description=(
            "Admission judges a queued job against the workers that heartbeated within this many"
            " seconds: a restarting worker is still of the fleet, one gone longer (scaled away,"
            " a test fleet of last week) no longer keeps jobs waiting for it until their queue"
            " deadline."
        ),
    )
    worker_silent_after_s: float = Field(
        default=10.0,
        gt=0,
        description=(
            "A worker whose latest heartbeat is older than this gets no new job until it"
            " heartbeats again (the pool-manager's heartbeat timeout; heartbeats come every 2 s)."
        ),
    )
    queue_deadline_turbo_s: float = Field(
        default=900.0, gt=0, description="A turbo job still queued this long ends as timeout."
    )
    queue_deadline_fast_s: float = Field(
        default=1800.0, gt=0, description="A fast job still queued this long ends as timeout."
    )
    queue_deadline_relax_s: float = Field(
        default=7200.0, gt=0, description="A relax job still queued this long ends as timeout."
    )
    run_deadline_s: float = Field(
        default=1800.0,
        gt=0,
        description="An assignment running this long without a result ends its job as timeout.",
    )
    eta_every_s: float = Field(
        default=5.0,
        gt=0,
        description=(
            "How often queued jobs' waits are estimated; a job's WaitEstimated is published when"
            " it is first queued and when its estimate moves by more than 20% (at least 5 s)."
        ),
    )
    user_rotation: bool = Field(
        default=True,
        description="Per-user rotation inside each tier (ADR 0620): a user's next job takes its"
        " turn when their last one ended, so one user's flood never runs ahead of others.",
    )
    guard_switches: bool = Field(
        default=True,
        description="The warm pool's switch guard (ADR 0712): a cold job whose model a busy worker"
        " holds waits for it, up to its wait target, rather than unload a model in at least as"
        " much demand (queued jobs per holder) elsewhere. false: load on demand (the stack sets"
        " it false with IMAGEGEN_STACK_POOL=none).",
    )
    preemption: bool = Field(
        default=True,
        description=(
            "Whether a turbo job that would miss its wait target may pause a running relax job"
            " at a step boundary (PreemptionRequested; the job resumes later from its saved"
            " state, ADR 0111). false: running jobs are never paused."
        ),
    )

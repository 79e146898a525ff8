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
)


class SchedulerSettings(ServiceSettings):
    """Every knob of the scheduler service; env ``IMAGEGEN_SCHEDULER_*``."""

    model_config = SettingsConfigDict(env_prefix="IMAGEGEN_SCHEDULER_", extra="ignore", frozen=True)

    models_dir: Path = Field(default=Path("models"), description="Registered models (model.json).")
    max_attempts: int = Field(default=3, ge=1, le=10, description="Attempts before a job fails.")
    http_port: int = Field(default=8101, ge=1, le=65535, description="Port of the HTTP server.")
    preemption: bool = Field(
        default=True,
        description=(
            "Whether a turbo job that would miss its wait target may pause a running relax job"
            " at a step boundary (PreemptionRequested; the job resumes later from its saved"
            " state, ADR 0111). false: running jobs are never paused."
        ),
    )

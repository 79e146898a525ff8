"""Settings of the api service (env prefix ``IMAGEGEN_API_``)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import SettingsConfigDict

from imagegen_runtime.settings import (
    GC_THRESHOLDS_PATTERN,
    DatabaseSettingsMixin,
    ServiceSettings,
)

from .domain.limits import with_overrides

SERVICE = "api"
PROJECTOR = "api-projector"  # the job projector as its own process (ADR 0641)
# Topics this service consumes (catalog names, before the prefix).
SUBSCRIBES: tuple[str, ...] = (
    "imagegen.jobs.requested",
    "imagegen.jobs.moderated",
    "imagegen.jobs.scheduled",
    "imagegen.jobs.progress",
    "imagegen.jobs.generated",
    "imagegen.jobs.delivered",
    "imagegen.jobs.ended",
)  # by the job projector


class ApiSettings(ServiceSettings, DatabaseSettingsMixin):
    """Every knob of the api service; read from ``IMAGEGEN_API_*`` environment variables."""

    model_config = SettingsConfigDict(env_prefix="IMAGEGEN_API_", extra="ignore", frozen=True)

    http_port: int = Field(default=8000, ge=1, le=65535, description="Port of the HTTP server.")
    gc_thresholds: str = Field(
        default="50000,20,100",
        pattern=GC_THRESHOLDS_PATTERN,
        description="Garbage-collector thresholds 'gen0,gen1,gen2', or 'python' for Python's own:"
        " a full collection stalls every request in flight, so the API runs far fewer"
        " (ADR 0642: admission p99 129 -> 47 ms, median of runs).",
    )

    models_dir: Path = Field(default=Path("models"), description="Registered models (model.json).")
    default_model: str = Field(default="shapes-demo", description="Model used when none is named.")
    openai_timeout_s: float = Field(
        default=120.0,
        gt=0,
        le=600,
        description="How long POST /v1/images/generations waits for the image.",
    )
    files_dir: Path = Field(
        default=Path("var/files"),
        description="Where control images are stored (POST /v1/files, data: URIs); the workers"
        " read the same folder (IMAGEGEN_GPU_WORKER_FILES_DIR).",
    )
    storage: Literal["local", "s3"] = Field(
        default="local",
        description="Where images, pause states and uploads live: 'local' files (default) or "
        "'s3', the bucket IMAGEGEN_S3_* names (docs/storage.md).",
    )
    retention_uploads_s: int = Field(
        default=7 * 86400,
        ge=1,
        description="Uploaded control images not uploaded again for this long are deleted, "
        "in seconds.",
    )
    retention_sweep_interval_s: float = Field(
        default=3600, gt=0, le=86400, description="Seconds between two retention sweeps."
    )
    max_control_image_bytes: int = Field(
        default=4 * 2**20,
        gt=0,
        le=64 * 2**20,
        description="Largest control image accepted, in decoded bytes (data: URI or upload).",
    )
    public_docs: bool = Field(
        default=False,
        description="Serve /docs, /redoc and /openapi.json to anyone; default: operator keys"
        " only (ADR 0610).",
    )
    limits: dict[str, dict[str, float]] = Field(
        default_factory=dict,
        description="Overrides of the limits per plan (ADR 0640, docs/limits.md), as JSON:"
        ' {"free": {"requests_per_minute": 30, "burst": 10, "active_jobs": 2,'
        ' "images_per_day": 100}}; a plan or limit not named keeps its default.',
    )

    @field_validator("limits")
    @classmethod
    def _known_limits(cls, value: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
        with_overrides(value)  # raises naming the plan and limit
        return value

    webhook_allow: str = Field(
        default="",
        description="SSRF guard exemptions for webhook_url at submission (docs/adr/0404): "
        "comma-separated CIDRs and host names, e.g. 127.0.0.1/32 for local receivers. Read by "
        "the request body's validator from this variable.",
    )

    scheduler_url: str = Field(
        default="http://127.0.0.1:8101",
        pattern=r"^https?://",
        description="Base URL of the scheduler; /ops shows its GET /v1/queues (ADR 0820).",
    )
    pool_manager_url: str = Field(
        default="http://127.0.0.1:8105",
        pattern=r"^https?://",
        description="Base URL of the pool-manager; /ops shows its GET /v1/workers (ADR 0820).",
    )

    run_projector: bool = Field(
        default=True,
        description="Consume the job topics into the read model in this process; false when"
        " `python -m imagegen_api.projector` runs beside it (the local stack and compose do:"
        " admission then never shares its core with a projection backlog, ADR 0641).",
    )

    public_base_url: str = Field(
        default="http://127.0.0.1:8000",
        pattern=r"^https?://",
        description="Base URL clients use to reach this API; used in links and signed URLs.",
    )

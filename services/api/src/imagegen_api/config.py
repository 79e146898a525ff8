"""Settings of the api service (env prefix ``IMAGEGEN_API_``)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from imagegen_runtime.settings import DatabaseSettingsMixin, ServiceSettings

SERVICE = "api"
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
    max_control_image_bytes: int = Field(
        default=4 * 2**20,
        gt=0,
        le=64 * 2**20,
        description="Largest control image accepted, in decoded bytes (data: URI or upload).",
    )
    public_base_url: str = Field(
        default="http://127.0.0.1:8000",
        pattern=r"^https?://",
        description="Base URL clients use to reach this API; used in links and signed URLs.",
    )

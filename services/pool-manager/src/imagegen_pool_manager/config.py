"""Settings of the pool-manager service (env prefix ``IMAGEGEN_POOL_MANAGER_``)."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from imagegen_runtime.settings import DatabaseSettingsMixin, ServiceSettings

SERVICE = "pool-manager"
# Topics this service consumes (catalog names, before the prefix).
SUBSCRIBES: tuple[str, ...] = (
    "imagegen.workers.heartbeats",
    "imagegen.jobs.scheduled",
    "imagegen.jobs.generated",
    "imagegen.jobs.ended",
    "imagegen.workers.models",
)


class PoolManagerSettings(ServiceSettings, DatabaseSettingsMixin):
    """Every knob of the pool-manager service; env ``IMAGEGEN_POOL_MANAGER_*``."""

    model_config = SettingsConfigDict(
        env_prefix="IMAGEGEN_POOL_MANAGER_", extra="ignore", frozen=True
    )

    http_port: int = Field(default=8105, ge=1, le=65535, description="Port of the HTTP server.")

    heartbeat_timeout_s: float = Field(
        default=10.0,
        gt=0,
        description="A worker silent for this long is declared lost.",
    )

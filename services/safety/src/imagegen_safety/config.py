"""Settings of the safety service (env prefix ``IMAGEGEN_SAFETY_``)."""

from __future__ import annotations


from pydantic import Field
from pydantic_settings import SettingsConfigDict

from imagegen_runtime.settings import ServiceSettings

SERVICE = "safety"
# Topics this service consumes (catalog names, before the prefix).
SUBSCRIBES: tuple[str, ...] = ("imagegen.jobs.requested", "imagegen.jobs.generated")


class SafetySettings(ServiceSettings):
    """Every knob of the safety service; read from ``IMAGEGEN_SAFETY_*`` environment variables."""

    model_config = SettingsConfigDict(env_prefix="IMAGEGEN_SAFETY_", extra="ignore", frozen=True)

    http_port: int = Field(default=8103, ge=1, le=65535, description="Port of the HTTP server.")

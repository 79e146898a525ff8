"""Settings of the api service (env prefix ``IMAGEGEN_API_``)."""

from __future__ import annotations


from pydantic import Field
from pydantic_settings import SettingsConfigDict

from imagegen_runtime.settings import DatabaseSettingsMixin, ServiceSettings

SERVICE = "api"
# Topics this service consumes (catalog names, before the prefix).
SUBSCRIBES: tuple[str, ...] = ()


class ApiSettings(ServiceSettings, DatabaseSettingsMixin):
    """Every knob of the api service; read from ``IMAGEGEN_API_*`` environment variables."""

    model_config = SettingsConfigDict(env_prefix="IMAGEGEN_API_", extra="ignore", frozen=True)

    http_port: int = Field(default=8000, ge=1, le=65535, description="Port of the HTTP server.")

    public_base_url: str = Field(
        default="http://127.0.0.1:8000", pattern=r"^https?://",
        description="Base URL clients use to reach this API; used in links and signed URLs.",
    )

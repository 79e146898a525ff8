"""Settings of the delivery service (env prefix ``IMAGEGEN_DELIVERY_``)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import SettingsConfigDict

from imagegen_runtime.settings import ServiceSettings

SERVICE = "delivery"
# Topics this service consumes (catalog names, before the prefix).
SUBSCRIBES: tuple[str, ...] = ("imagegen.jobs.moderated",)


class DeliverySettings(ServiceSettings):
    """Every knob of the delivery service; read from ``IMAGEGEN_DELIVERY_*`` environment variables."""

    model_config = SettingsConfigDict(env_prefix="IMAGEGEN_DELIVERY_", extra="ignore", frozen=True)

    http_port: int = Field(default=8104, ge=1, le=65535, description="Port of the HTTP server.")

    store_dir: Path = Field(default=Path("var/delivery"), description="Delivery store (local filesystem).")
    signing_key: SecretStr = Field(
        min_length=16, description="Secret for signed URLs (at least 16 characters). `make up` generates one.",
    )
    url_ttl_s: int = Field(default=86400, ge=60, le=7 * 86400, description="Lifetime of a signed URL.")

"""Settings of the delivery service (env prefix ``IMAGEGEN_DELIVERY_``)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import SettingsConfigDict

from imagegen_runtime.settings import ServiceSettings

SERVICE = "delivery"
# Topics this service consumes (catalog names, before the prefix).
SUBSCRIBES: tuple[str, ...] = ("imagegen.jobs.moderated",)


class DeliverySettings(ServiceSettings):
    """Every knob of the delivery service; read from ``IMAGEGEN_DELIVERY_*`` environment vars."""

    model_config = SettingsConfigDict(env_prefix="IMAGEGEN_DELIVERY_", extra="ignore", frozen=True)

    http_port: int = Field(default=8104, ge=1, le=65535, description="Port of the HTTP server.")

    store_dir: Path = Field(
        default=Path("var/delivery"), description="Delivery store (local filesystem)."
    )
    source_dir: Path | None = Field(
        default=None,
        description="If set, images are only copied from file:// URIs under this folder (the "
        "gpu-worker's blob dir); unset accepts any local file the event names.",
    )
    signing_key: SecretStr = Field(
        min_length=16,
        description="Secret for signed URLs (at least 16 characters). `make up` generates one.",
    )
    url_ttl_s: int = Field(
        default=86400, ge=60, le=7 * 86400, description="Lifetime of a signed URL, in seconds."
    )
    public_base_url: str = Field(
        default="http://127.0.0.1:8104",
        pattern=r"^https?://[^/\s?#]+(/[^\s?#]*)?$",
        description="Scheme, host, port (and optional path prefix) clients reach this service's "
        "/files at; every signed URL starts with it, e.g. https://cdn.example.com.",
    )
    webhook_secret: SecretStr | None = Field(
        default=None,
        min_length=16,
        description="Key of the X-Imagegen-Signature HMAC on webhook calls, shared with receivers "
        "(at least 16 characters). Unset: derived from SIGNING_KEY (docs/adr/0402).",
    )
    webhook_timeout_s: float = Field(
        default=5.0, gt=0, le=60, description="Timeout of one webhook call, in seconds."
    )
    webhook_attempts: int = Field(
        default=4, ge=1, le=10, description="Webhook calls at most (retries on 5xx and no answer)."
    )
    webhook_backoff_s: float = Field(
        default=0.5, ge=0, le=30, description="Wait after the first failed call; doubles each time."
    )

    @field_validator("public_base_url")
    @classmethod
    def _no_trailing_slash(cls, v: str) -> str:
        return v.rstrip("/")

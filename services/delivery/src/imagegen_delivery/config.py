"""Settings of the delivery service (env prefix ``IMAGEGEN_DELIVERY_``)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import SettingsConfigDict

from imagegen_runtime.settings import DatabaseSettingsMixin, ServiceSettings
from imagegen_runtime.ssrf import AllowList

SERVICE = "delivery"
# Topics this service consumes (catalog names, before the prefix).
SUBSCRIBES: tuple[str, ...] = (
    "imagegen.jobs.moderated",
    "imagegen.jobs.requested",  # user and webhook URL of every job (docs/adr/0403)
    "imagegen.jobs.ended",  # failed and cancelled jobs
    "imagegen.webhooks.retry",  # webhook attempts, each stored and timed by the dispatcher
)


class DeliverySettings(ServiceSettings, DatabaseSettingsMixin):
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
    storage: Literal["local", "s3"] = Field(
        default="local",
        description="Where images, pause states and uploads live: 'local' files (default) or "
        "'s3', the bucket IMAGEGEN_S3_* names (docs/storage.md).",
    )
    retention_images_s: int = Field(
        default=7 * 86400,
        ge=60,
        description="Delivered images and their records older than this are deleted, in "
        "seconds; at least URL_TTL_S, so a link never outlives its image.",
    )
    retention_sweep_interval_s: float = Field(
        default=3600, gt=0, le=86400, description="Seconds between two retention sweeps."
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
    webhook_timeout_s: float = Field(
        default=5.0, gt=0, le=60, description="Timeout of one whole webhook call, in seconds."
    )
    webhook_retry_schedule_s: tuple[float, ...] = Field(
        default=(5, 300, 1800, 7200, 18000, 36000),
        max_length=20,
        description="Waits before each retry of a failed webhook call, in seconds (JSON list); "
        "once spent, the call goes to the webhook dead-letter. Tests compress it, e.g. [0.1,0.2].",
    )
    webhook_per_endpoint: int = Field(
        default=4, ge=1, le=100, description="Webhook calls at once to one scheme+host+port."
    )
    webhook_max_in_flight: int = Field(
        default=64, ge=1, le=10000, description="Webhook calls at once, all endpoints together."
    )
    webhook_allow: str = Field(
        default="",
        description="SSRF guard exemptions: comma-separated CIDRs and host names webhooks may "
        "call although private or loopback (tests, private deployments), e.g. 127.0.0.1/32.",
    )
    webhook_max_age_s: float = Field(
        default=86400,
        gt=0,
        description="A terminal event older than this sends no webhook (a new consumer group "
        "reading old history must not call receivers about jobs that ended long ago).",
    )
    webhook_secret_overlap_s: int = Field(
        default=86400,
        ge=0,
        description="After `imagegen webhooks secret --rotate`, how long the old secret signs too.",
    )

    @field_validator("webhook_retry_schedule_s")
    @classmethod
    def _non_negative(cls, v: tuple[float, ...]) -> tuple[float, ...]:
        if any(d < 0 for d in v):
            raise ValueError("every wait must be 0 or more seconds")
        return v

    @field_validator("webhook_allow")
    @classmethod
    def _allow_list(cls, v: str) -> str:
        AllowList.parse(v)  # raises naming the entry that is neither a CIDR nor a host
        return v

    @model_validator(mode="after")
    def _retention_covers_links(self) -> DeliverySettings:
        if self.retention_images_s < self.url_ttl_s:
            raise ValueError(
                f"retention_images_s ({self.retention_images_s}) is shorter than url_ttl_s "
                f"({self.url_ttl_s}): links would outlive their images"
            )
        return self

    @field_validator("public_base_url")
    @classmethod
    def _no_trailing_slash(cls, v: str) -> str:
        return v.rstrip("/")

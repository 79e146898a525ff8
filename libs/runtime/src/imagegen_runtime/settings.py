"""Settings shared by every service; each service subclasses with its own env prefix.

A wrong or missing setting stops the service at start-up with one line per problem that names the
environment variable and says how to fix it (see :func:`load_settings`).
"""

from __future__ import annotations

import sys
from typing import Literal, TypeVar

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

# ``gen0,gen1,gen2`` garbage-collector thresholds, or "python" for Python's own (ADR 0642)
GC_THRESHOLDS_PATTERN = r"^(python|[1-9][0-9]*,[0-9]+,[0-9]+)$"


class ServiceSettings(BaseSettings):
    """Knobs every service has. Subclasses set ``model_config`` with their own ``env_prefix``."""

    model_config = SettingsConfigDict(env_prefix="IMAGEGEN_", extra="ignore", frozen=True)

    kafka_bootstrap: str = Field(
        pattern=r"^[A-Za-z0-9_.\-\[\]:]+:\d{1,5}(,[A-Za-z0-9_.\-\[\]:]+:\d{1,5})*$",
        description="Kafka bootstrap servers, host:port[,host:port]. `make up` sets it.",
    )
    topic_prefix: str = Field(
        default="",
        pattern=r"^[A-Za-z0-9._\-]*$",
        description="Prefix added to every topic name (isolates test runs on one broker).",
    )
    http_host: str = Field(default="127.0.0.1", description="Address of the health/metrics server.")
    http_port: int = Field(ge=1, le=65535, description="Port of /healthz, /readyz and /metrics.")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        default="INFO", description="Minimum level of the JSON logs on stdout."
    )
    trace_exporter: Literal["none", "console", "otlp"] = Field(
        default="none",
        description="Where OpenTelemetry spans go: 'console' prints them as JSON, 'otlp' sends"
        " them to OTEL_EXPORTER_OTLP_ENDPOINT; the OTEL_* variables win (docs/tracing.md).",
    )
    instance_id: str = Field(
        default="1",
        pattern=r"^[A-Za-z0-9._\-]+$",
        description="Distinguishes replicas of one service in logs and event `producer`.",
    )
    gc_thresholds: str = Field(
        default="python",
        pattern=GC_THRESHOLDS_PATTERN,
        description="The garbage collector's generation thresholds for this process,"
        " 'gen0,gen1,gen2' (e.g. 50000,20,100), or 'python' for Python's own (700,10,10)."
        " Fewer collections cut the latency tail of a busy process (ADR 0642).",
    )
    auth_database_url: str | None = Field(
        default=None,
        pattern=r"^postgresql\+asyncpg://",
        description=(
            "PostgreSQL holding the api's `api_keys` table, to check operator keys on /metrics"
            " and operator views; default: the service's own DATABASE_URL, if it has one."
        ),
    )


class DatabaseSettingsMixin(BaseSettings):
    """For services that keep projections in PostgreSQL."""

    database_url: str = Field(
        pattern=r"^postgresql\+asyncpg://",
        description=(
            "SQLAlchemy URL, postgresql+asyncpg://user:pass@host:port/db. `make up` sets it."
        ),
    )


class ObjectStoreSettings(BaseSettings):
    """Connection to an S3-compatible server; read from ``IMAGEGEN_S3_*`` environment variables."""

    model_config = SettingsConfigDict(env_prefix="IMAGEGEN_S3_", extra="ignore", frozen=True)

    endpoint: str = Field(
        pattern=r"^https?://[^/\s?#]+/?$",
        description="URL of the S3 API the services call, e.g. http://127.0.0.1:29400.",
    )
    public_endpoint: str | None = Field(
        default=None,
        pattern=r"^https?://[^/\s?#]+/?$",
        description="URL clients download presigned links from (signed for that host); "
        "unset: ENDPOINT.",
    )
    bucket: str = Field(
        default="imagegen",
        pattern=r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$",
        description="Bucket holding blobs/, delivery/ and files/ (S3 bucket naming rules).",
    )
    region: str = Field(
        default="us-east-1", pattern=r"^[a-z0-9-]+$", description="Region the requests sign for."
    )
    access_key: SecretStr = Field(min_length=3, description="Access key id. `make up` makes one.")
    secret_key: SecretStr = Field(min_length=8, description="Secret access key (8+ characters).")
    addressing_style: Literal["path", "virtual", "auto"] = Field(
        default="path",
        description="'path' (http://host/bucket/key, what local servers need) or 'virtual'.",
    )
    connect_timeout_s: float = Field(default=2.0, gt=0, le=60, description="Connect timeout.")
    read_timeout_s: float = Field(default=20.0, gt=0, le=300, description="Read timeout.")
    max_attempts: int = Field(
        default=3, ge=1, le=10, description="Attempts per request (botocore's standard retries)."
    )

    @field_validator("endpoint", "public_endpoint")
    @classmethod
    def _no_trailing_slash(cls, v: str | None) -> str | None:
        return v.rstrip("/") if v is not None else None


S = TypeVar("S", bound=BaseSettings)


class ConfigError(SystemExit):
    """Raised (as exit status 2) when settings are missing or wrong."""


def describe_errors(cls: type[BaseSettings], err: ValidationError) -> list[str]:
    """One human line per invalid or missing setting, naming the environment variable."""
    prefix = str(cls.model_config.get("env_prefix", ""))
    lines = []
    for e in err.errors():
        field = str(e["loc"][0]) if e["loc"] else "?"
        var = f"{prefix}{field}".upper()
        info = cls.model_fields.get(field)
        hint = f" ({info.description})" if info is not None and info.description else ""
        if e["type"] == "missing":
            lines.append(f"{var} is required but not set{hint}")
        else:
            lines.append(f"{var} is invalid: {e['msg']} (got {e.get('input')!r}){hint}")
    return lines


def load_settings(cls: type[S]) -> S:
    """Read ``cls`` from the environment or stop the process with a clear message (exit 2)."""
    try:
        return cls()
    except ValidationError as err:
        for line in describe_errors(cls, err):
            print(f"configuration error: {line}", file=sys.stderr)
        raise ConfigError(2) from None


def env_vars(cls: type[BaseSettings]) -> set[str]:
    """Every environment variable ``cls`` reads (used by the compose-file contract test); a
    service with a ``storage`` setting also reads IMAGEGEN_S3_* when it is ``s3``."""
    prefix = str(cls.model_config.get("env_prefix", ""))
    names = {f"{prefix}{name}".upper() for name in cls.model_fields}
    if "storage" in cls.model_fields:
        names |= env_vars(ObjectStoreSettings)
    return names

"""Settings of the pool-manager service (env prefix ``IMAGEGEN_POOL_MANAGER_``)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from imagegen_runtime.settings import DatabaseSettingsMixin, ServiceSettings

SERVICE = "pool-manager"
# The dead-letter topics whose size it exports (catalog names, before the prefix): records a
# consumer could not process, and webhooks that ran out of attempts.
DEAD_LETTER_TOPICS: tuple[str, ...] = ("imagegen.deadletter", "imagegen.webhooks.deadletter")
# Topics this service consumes (catalog names, before the prefix).
SUBSCRIBES: tuple[str, ...] = (
    "imagegen.workers.heartbeats",
    "imagegen.jobs.scheduled",
    "imagegen.jobs.generated",
    "imagegen.jobs.ended",
    "imagegen.workers.models",
    "imagegen.jobs.requested",
    "imagegen.jobs.moderated",
    "imagegen.pool.commands",
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

    models_dir: Path = Field(
        default=Path("models"), description="Registered models (model.json): tiers and sizes."
    )
    plan_every_s: float = Field(
        default=5.0, gt=0, le=3600, description="Seconds between warm-pool planning rounds."
    )
    pool: Literal["ours", "none"] = Field(
        default="ours",
        description="ours: run the warm-pool policy (pins, preloads, storms; ADR 0703); none: "
        "only watch the fleet, workers load on demand (the baseline `bench fleet --pool none` "
        "measures against).",
    )
    load_timeout_s: float = Field(
        default=120.0, gt=0, description="A LoadModel unanswered this long may be sent again."
    )
    autoscale_pool_window_s: float = Field(
        default=900.0,
        gt=0,
        description="The autoscaling signal speaks for the pools of the workers heard from "
        "within this many seconds, lost ones too: a pool whose workers all crashed is asked for "
        "again while jobs wait for it. A pool none of them belongs to any more is withdrawn "
        "(its imagegen_pool_desired_workers series removed, a last AutoscaleRecommended with "
        "0). The scheduler's IMAGEGEN_SCHEDULER_ADMISSION_FLEET_WINDOW_S has the same default.",
    )
    backlog_every_s: float = Field(
        default=5.0,
        gt=0,
        le=3600,
        description="Seconds between reads of the dead-letter topics' sizes and the consumer "
        "groups' lag (imagegen_dlq_records, imagegen_consumer_lag; ADR 0810).",
    )

"""Settings of the gpu-worker service (env prefix ``IMAGEGEN_GPU_WORKER_``)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from imagegen_runtime.settings import ServiceSettings

SERVICE = "gpu-worker"
# Topics this service consumes (catalog names, before the prefix).
SUBSCRIBES: tuple[str, ...] = (
    "imagegen.jobs.scheduled",
    "imagegen.jobs.requested",
    "imagegen.pool.commands",
)


class GpuWorkerSettings(ServiceSettings):
    """Every knob of the gpu-worker service; env ``IMAGEGEN_GPU_WORKER_*``."""

    model_config = SettingsConfigDict(
        env_prefix="IMAGEGEN_GPU_WORKER_", extra="ignore", frozen=True
    )

    http_port: int = Field(default=8102, ge=1, le=65535, description="Port of the HTTP server.")

    worker_id: str = Field(
        default="worker-local-1",
        pattern=r"^[A-Za-z0-9._\-]+$",
        description="Stable id of this worker; the Kafka key of its heartbeats.",
    )
    device: Literal["cpu", "cuda"] = Field(default="cpu", description="Torch device to run on.")
    models_dir: Path = Field(default=Path("models"), description="Folder of registered models.")
    blob_dir: Path = Field(
        default=Path("var/blobs"), description="Where generated images are written."
    )
    preload_model: str = Field(
        default="shapes-demo", description="Model loaded at start so the first job is warm."
    )
    heartbeat_interval_s: float = Field(
        default=2.0, gt=0, le=60, description="Seconds between heartbeats; loss is judged on it."
    )
    model_memory_budget_mb: int | None = Field(
        default=None,
        gt=0,
        description=(
            "Memory the worker's loaded pipelines may use together, in MiB. Before a model is"
            " loaded, the least recently used ones are unloaded until its estimated size fits;"
            " a model larger than the budget fails its job. Unset: on CUDA 90% of the device's"
            " total memory, on CPU no limit (nothing is ever unloaded)."
        ),
    )
    ram_cache_mb: int = Field(
        default=2048,
        ge=0,
        description=(
            "Host RAM, in MiB, that models evicted from the device (to make room, or on an"
            " EvictModel command) may keep using, so that their next load is a move back rather"
            " than a read from disk (ADR 0705). Least recently used leaves first; 0 disables it"
            " (an evicted model is freed). On CPU the device is host RAM too: the worker then"
            " holds up to model_memory_budget_mb plus this."
        ),
    )

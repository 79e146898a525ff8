"""Settings of the gpu-worker service (env prefix ``IMAGEGEN_GPU_WORKER_``)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from imagegen_runtime.settings import ServiceSettings

from .domain.accel import AccelSettings
from .domain.lora_usage import PremergeSettings

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
    storage: Literal["local", "s3"] = Field(
        default="local",
        description="Where images, pause states and uploads live: 'local' files (default) or "
        "'s3', the bucket IMAGEGEN_S3_* names (docs/storage.md).",
    )
    retention_images_s: int = Field(
        default=7 * 86400,
        ge=1,
        description="Generated images (blobs, *.png) older than this are deleted, in seconds.",
    )
    retention_pause_states_s: int = Field(
        default=7 * 86400,
        ge=1,
        description="Saved states of paused jobs (blobs, *.pt) older than this are deleted.",
    )
    retention_sweep_interval_s: float = Field(
        default=3600, gt=0, le=86400, description="Seconds between two retention sweeps."
    )
    files_dir: Path = Field(
        default=Path("var/files"),
        description="Where the API stores control images (file ids of ControlNet jobs); the"
        " same folder as the api's IMAGEGEN_API_FILES_DIR (ADR 0706).",
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
    # Pre-merged LoRAs of tier-1 models (issue 12; ADR 0704, "Pre-merging the top 5").
    lora_premerge: bool = Field(
        default=True,
        description=(
            "On a tier-1 model, keep the weight deltas of its lora_premerge_top most used LoRAs"
            " (and a pristine copy of the weights they touch) beside it, and run a job whose"
            " LoRAs are exactly one of them with that LoRA fused into the weights instead of as"
            " a peft adapter. Off: LoRAs are only ever toggled adapters."
        ),
    )
    lora_premerge_top: int = Field(
        default=5, ge=1, le=64, description="How many LoRAs per tier-1 model are pre-merged."
    )
    lora_premerge_window_s: float = Field(
        default=86400.0,
        gt=0,
        description="LoRA uses older than this many seconds do not count for the top.",
    )
    lora_premerge_window_jobs: int = Field(
        default=1000,
        ge=1,
        description="Only a model's last this many jobs count for its top LoRAs.",
    )

    def premerge_settings(self) -> PremergeSettings:
        """The LoRA pre-merging settings as the domain's :class:`PremergeSettings`."""
        return PremergeSettings(
            enabled=self.lora_premerge,
            top=self.lora_premerge_top,
            window_s=self.lora_premerge_window_s,
            window_jobs=self.lora_premerge_window_jobs,
        )

    # Accelerator settings (ADR 0709; the decisions are domain/accel.py's).
    dtype: Literal["auto", "fp32", "fp16", "bf16"] = Field(
        default="auto",
        description=(
            "The dtype models are loaded and run in. auto: float32 on CPU; on CUDA float16, or"
            " bfloat16 for sd3 and flux when the GPU computes it (else float16)."
        ),
    )
    attention: Literal["sdpa", "diffusers"] = Field(
        default="sdpa",
        description=(
            "sdpa: every attention layer uses torch's scaled_dot_product_attention (classic"
            " processors are replaced); diffusers: leave diffusers' choice. Logged at each load."
        ),
    )
    compile: bool = Field(
        default=False,
        description=(
            "torch.compile the denoiser (UNet or transformer) at load; the first run of each"
            " image size pays the compilation, and a LoRA switch may recompile."
        ),
    )
    compile_mode: Literal[
        "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"
    ] = Field(default="default", description="torch.compile's mode when compile is on.")
    vae_tiling: bool = Field(
        default=True,
        description="On CUDA, decode images above vae_tiling_above_pixels in tiles (never on CPU).",
    )
    vae_tiling_above_pixels: int = Field(
        default=1024 * 1024,
        ge=1,
        description="Width x height above which the VAE decodes in tiles (when vae_tiling is on).",
    )
    pin_ram_tier: bool = Field(
        default=True,
        description=(
            "On CUDA, keep models evicted to the RAM tier in pinned (page-locked) host memory, so"
            " the copy back to the device is fast; locked memory can reach twice the tier's bytes"
            " (PyTorch's pinned allocator rounds blocks up to powers of two and reuses them)."
        ),
    )

    def accel_settings(self) -> AccelSettings:
        """The accelerator settings as the domain's :class:`AccelSettings`."""
        return AccelSettings(
            dtype=self.dtype,
            attention=self.attention,
            compile=self.compile,
            compile_mode=self.compile_mode,
            vae_tiling=self.vae_tiling,
            vae_tiling_above_pixels=self.vae_tiling_above_pixels,
            pin_ram_tier=self.pin_ram_tier,
        )

    integrity_dir: Path = Field(
        default=Path("var/integrity"),
        description=(
            "Where the worker keeps its trust records (ADR 0707): the size, mtime and sha256 of"
            " each model file when it last hashed good, one JSON file per model folder. A load"
            " hashes only files whose size or mtime differ from their record."
        ),
    )
    integrity_interval_s: float = Field(
        default=3600.0,
        ge=0,
        description=(
            "Seconds between the periodic integrity checks, which hash every file of every"
            " registered model in the background and repair what does not match (ADR 0707);"
            " the first runs one interval after start. 0 disables them."
        ),
    )
    integrity_check_mb_s: float = Field(
        default=100.0,
        gt=0,
        description=(
            "Read rate, in MB/s, the periodic integrity check keeps to (it sleeps between blocks"
            " to stay under it), so it does not take the disk or the CPU from jobs."
        ),
    )

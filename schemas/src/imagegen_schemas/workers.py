"""Worker and model state (keyed by worker id) and pool commands."""

from __future__ import annotations

from enum import StrEnum
from typing import ClassVar

from pydantic import BaseModel, ConfigDict, Field

from .envelope import Payload


class WorkerStatus(StrEnum):
    IDLE = "idle"
    BUSY = "busy"
    DRAINING = "draining"
    STOPPED = "stopped"


class LoadedModel(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    model_id: str
    kind: str = Field(default="base", description="base, lora, controlnet, vae, safety")
    bytes: int = Field(ge=0)


class PremergedLora(BaseModel):
    """A LoRA pre-merged into a resident model (ADR 0704, "Pre-merging the top 5"): its weight
    deltas are ready beside that model, so a job naming this LoRA alone on it runs with the
    LoRA in the base weights (no per-step adapter cost)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    model_id: str = Field(description="The resident base model it is pre-merged into.")
    lora_id: str = Field(description="The LoRA's registry id (as in a kind 'lora' loaded entry).")
    bytes: int = Field(
        ge=0,
        description="Its weight deltas. The pristine copies of the base weights the model's "
        "pre-merged LoRAs touch are held once per model beside them and not counted here.",
    )


class WorkerHeartbeat(Payload):
    """Periodic state of one worker; the latest per worker is the worker's state (compacted)."""

    event_type: ClassVar[str] = "imagegen.worker.heartbeat"
    worker_id: str
    status: WorkerStatus
    gpu_type: str = Field(description="e.g. 'H100-80GB', 'A10G-24GB', 'cpu'.")
    memory_total_bytes: int = Field(ge=0)
    memory_free_bytes: int = Field(ge=0)
    largest_free_block_bytes: int | None = Field(default=None, ge=0)
    fragmentation_ratio: float | None = Field(
        default=None,
        ge=0,
        le=1,
        description="CUDA only: 1 - largest_free_block_bytes / free memory, where free memory is "
        "the driver's free memory plus what the caching allocator reserved but does not use. 0: "
        "all free memory is one block; towards 1: it is scattered (a DefragmentMemory helps). "
        "None on CPU.",
    )
    loaded: tuple[LoadedModel, ...] = ()
    premerged_loras: tuple[PremergedLora, ...] = Field(
        default=(),
        description="LoRAs pre-merged into resident models, per (model, LoRA); each is also "
        "listed in loaded as kind 'lora' (it is loaded as an adapter too). Empty from workers "
        "that pre-merge nothing, or that predate this field.",
    )
    running_job_id: str | None = None
    pinned: tuple[str, ...] = Field(
        default=(),
        description="Models the pool-manager pinned on this worker (LoadModel with pin), by id, "
        "resident or not: while one is resident the worker's own eviction passes it over unless "
        "a job cannot fit otherwise (ADR 0711). Empty from workers that predate this field.",
    )
    capabilities: tuple[str, ...] = Field(default=(), description="families, e.g. 'sd15', 'sdxl'.")
    interval_s: float = Field(
        default=2.0, gt=0, description="Heartbeat period; loss is judged on it."
    )


class ModelLoaded(Payload):
    """A model (or adapter) became resident on a worker: for a job, or on a pool command."""

    event_type: ClassVar[str] = "imagegen.model.loaded"
    worker_id: str
    model: LoadedModel
    load_ms: float = Field(ge=0)
    sha256_verified: bool = True
    source: str = Field(
        default="disk",
        description="Where the weights came from: disk, ram, or resident (already loaded; "
        "nothing read).",
    )
    command_id: str | None = Field(
        default=None, description="Event id of the LoadModel command; None for a job's load."
    )


class ModelEvicted(Payload):
    """A model (or adapter) left a worker's device memory."""

    event_type: ClassVar[str] = "imagegen.model.evicted"
    worker_id: str
    model_id: str
    kind: str = Field(
        default="base",
        description="What left, as ModelLoaded's model.kind says: base, lora, controlnet.",
    )
    reason: str = Field(
        default="",
        description="make_room (unloaded for a load), command (an EvictModel), not_resident (an "
        "EvictModel for a model that was not loaded: nothing unloaded), oom.",
    )
    command_id: str | None = Field(
        default=None, description="Event id of the command that caused it; None otherwise."
    )


class ModelLoadFailed(Payload):
    """A LoadModel command could not be carried out; nothing was unloaded for it."""

    event_type: ClassVar[str] = "imagegen.model.load_failed"
    worker_id: str
    model_id: str
    reason: str = Field(
        description="does_not_fit, in_use (fits only by unloading the running job's model), "
        "unknown_model, not_a_base_model (a LoRA's or a ControlNet's id: those load with a "
        "job's model), corrupted, out_of_memory, load_error."
    )
    message: str = Field(default="", max_length=4000)
    command_id: str = Field(description="Event id of the LoadModel command.")


class ModelCorrupted(Payload):
    event_type: ClassVar[str] = "imagegen.model.corrupted"
    worker_id: str
    model_id: str
    file: str
    expected_sha256: str
    actual_sha256: str


class LoadModel(Payload):
    """Command: load (preload) a model on a worker."""

    event_type: ClassVar[str] = "imagegen.pool.load_model"
    worker_id: str
    model_id: str
    reason: str = Field(default="", description="e.g. 'predicted_demand'.")
    pin: bool = Field(
        default=False,
        description="Pin the model on this worker (a tier-1 pin, ADR 0711): loaded, or already "
        "resident (answered source 'resident'), it stays while anything else can make room; a "
        "job that cannot fit beside it still unloads it, and it is protected again once loaded "
        "again. An EvictModel for it unpins it.",
    )


class EvictModel(Payload):
    """Command: evict a model from a worker (and unpin it there)."""

    event_type: ClassVar[str] = "imagegen.pool.evict_model"
    worker_id: str
    model_id: str
    reason: str = ""
    keep_resident: bool = Field(
        default=False,
        description="Only unpin it: the model stays loaded, and the worker's own eviction "
        "(least recently used, only what must go) decides when it leaves. Answered "
        "ModelLoaded(source 'resident') when it is loaded, ModelEvicted(reason 'not_resident') "
        "when it is not; never deferred by a run. The pool-manager releases pins this way "
        "(ADR 0714). Workers that predate this field unload the model.",
    )


class DefragmentMemory(Payload):
    """Command: compact a worker's GPU memory (reload resident models contiguously)."""

    event_type: ClassVar[str] = "imagegen.pool.defragment"
    worker_id: str
    reason: str = ""


class AutoscaleRecommended(Payload):
    """The pool-manager's autoscaling signal for one pool (a GPU class): how many workers it
    should have now, from queue depth and waits. For an HPA or KEDA (also exported as the
    Prometheus gauge ``imagegen_pool_desired_workers{pool}``) and for analytics."""

    event_type: ClassVar[str] = "imagegen.pool.autoscale_recommended"
    pool: str = Field(description="The pool: a GPU class, e.g. 'cpu' or 'H100-80GB'.")
    desired_workers: int = Field(ge=0)
    current_workers: int = Field(ge=0)
    queued_jobs: int = Field(ge=0, description="Jobs waiting that this pool can run.")
    oldest_wait_s: float = Field(ge=0, description="The longest wait among them, seconds.")
    reason: str = Field(default="", max_length=1000)


class RecordHeader(BaseModel):
    """One Kafka record header, as it was: its name and its value's bytes in base64."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    value_b64: str


class DeadLettered(Payload):
    """A record a consumer could not process; the original bytes are kept for a redrive by hand
    (``imagegen dlq``, docs/dlq.md). The letter's id is its envelope's event id."""

    event_type: ClassVar[str] = "imagegen.dead_lettered"
    source_topic: str
    source_partition: int
    source_offset: int
    consumer_group: str
    error: str = Field(max_length=8000)
    original_key_b64: str | None = None
    original_value_b64: str
    original_headers: tuple[RecordHeader, ...] = Field(
        default=(),
        description="The record's Kafka headers in order; a redrive publishes them again.",
    )
    redrive_of: str | None = Field(
        default=None,
        description="The id of the dead letter this record was redriven from (the record failed "
        "again after `imagegen dlq redrive`); None for a record's first failure.",
    )
    redrives: int = Field(
        default=0, ge=0, description="How many times the record had been redriven before this."
    )
    previous_errors: tuple[str, ...] = Field(
        default=(),
        description="The errors of the record's earlier dead letters, oldest first (the last "
        "10); `error` is the newest.",
    )


class DeadLetterRedriven(Payload):
    """An operator republished a dead letter's original record to its source topic, for the
    consumer group that had given up on it (``imagegen dlq redrive``, docs/dlq.md)."""

    event_type: ClassVar[str] = "imagegen.dead_letter.redriven"
    letter_id: str = Field(description="The event id of the DeadLettered that was redriven.")
    source_topic: str
    source_partition: int = Field(description="Where the record was when it failed.")
    source_offset: int
    consumer_group: str = Field(description="The group that failed it and handles the redrive.")
    redriven_partition: int = Field(description="Where the republished copy landed.")
    redriven_offset: int
    redrive: int = Field(ge=1, description="1 for the letter's first redrive, then 2, 3 (forced).")
    forced: bool = False
    by: str = Field(default="", max_length=200, description="Who redrove it (an API key id).")

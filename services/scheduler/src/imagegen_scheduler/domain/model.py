"""Value types the scheduling policy reasons about, and the memory-fit rule.

Everything here is pure data plus arithmetic: no clock, no I/O. Sizes are in GB (10**9 bytes),
times in seconds. The service maps its pydantic events (``imagegen_schemas``) onto these types.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum

from imagegen_runtime import budget


class Tier(StrEnum):
    """Service tier. Values equal ``imagegen_schemas.Tier`` so the service maps by value."""

    TURBO = "turbo"
    FAST = "fast"
    RELAX = "relax"


#: Highest tier first. Every tie between tiers is broken in this order.
TIERS: tuple[Tier, ...] = (Tier.TURBO, Tier.FAST, Tier.RELAX)
TIER_RANK: Mapping[Tier, int] = {tier: rank for rank, tier in enumerate(TIERS)}


class AdapterKind(StrEnum):
    LORA = "lora"
    CONTROLNET = "controlnet"


@dataclass(frozen=True, slots=True)
class ModelSpec:
    """A base model in the registry."""

    model_id: str  # registry id, e.g. "sdxl-base-1.0"
    family: str  # capability a worker must advertise to run it: "sdxl", "sd3", "flux"
    weights_gb: float  # resident VRAM of UNet/transformer + text encoders + VAE
    load_s: tuple[float, float]  # cold load time range (min, max) from local NVMe
    step_s: float  # seconds per denoising step for one 1-megapixel image on a speed-1.0 GPU
    activation_gb_per_mpix: float  # latents + attention workspace per megapixel per image


@dataclass(frozen=True, slots=True)
class AdapterSpec:
    """A LoRA or ControlNet usable with one model family."""

    adapter_id: str  # registry id, e.g. "lora/pixel-art" or "cn/sdxl-canny"
    kind: AdapterKind  # LoRA weights are small; a ControlNet is a second network
    family: str  # only models of this family can use it
    weights_gb: float  # resident VRAM
    load_s: tuple[float, float]  # cold load time range (min, max)
    step_overhead: float  # extra fraction of step time it costs (ControlNet ~0.2, LoRA 0)


@dataclass(frozen=True, slots=True)
class ModelCatalog:
    """Everything the policy knows about models; the service loads it from the registry."""

    models: Mapping[str, ModelSpec]  # by model_id
    adapters: Mapping[str, AdapterSpec]  # by adapter_id
    # (family, control type) -> the adapter id of the ControlNet a worker runs for it (``cn/<id>``,
    # the first registered by id, as the worker picks it); a job names nets by type only
    controlnets: Mapping[tuple[str, str], str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class JobRequest:
    """One generation job as the scheduler sees it (derived from ``GenerationRequested``)."""

    job_id: str  # correlation id of the job; unique
    user_id: str  # fairness is per user inside a tier
    tier: Tier  # fixed by the user's plan
    model_id: str  # base model; must be in the catalog
    adapters: tuple[str, ...]  # LoRA and ControlNet ids, in application order
    width: int  # pixels
    height: int  # pixels
    batch: int  # images generated together (num_images)
    steps: int  # denoising steps requested
    queued_at: float  # when the job first became schedulable (after prompt moderation)
    # Workers an earlier attempt failed on; never assigned this job (set only while another
    # capable worker exists, so a job is never left without a worker by this).
    avoid: frozenset[str] = frozenset()

    @property
    def megapixels(self) -> float:
        return self.width * self.height / 1_000_000


@dataclass(frozen=True, slots=True)
class WorkerView:
    """The scheduler's view of one GPU worker (from its latest heartbeat)."""

    worker_id: str  # stable id; the Kafka key of its events
    gpu_type: str  # e.g. "A10G-24GB", "A100-80GB"; informational
    budget_gb: float  # VRAM a job may use here: usable memory minus what the worker won't evict
    speed: float  # relative throughput; 1.0 = A10G. Used only for estimates
    capabilities: frozenset[str]  # model families it can run, e.g. {"sdxl", "sd3"}
    resident: frozenset[str] = field(default_factory=frozenset)  # model and adapter ids loaded
    accepting: bool = True  # False while draining or stopped: never assigned new work


class WarmLevel:
    """How much of a job a worker already holds; higher is better."""

    COLD = 0  # base model must be loaded (8-20 s)
    BASE = 1  # base model resident, some adapters must be loaded (0.5-4 s each)
    FULL = 2  # model and every adapter resident: generation starts at once


def footprint_gb(request: JobRequest, catalog: ModelCatalog) -> float:
    """VRAM a job needs, by the budget model the workers admit jobs with
    (``imagegen_runtime.budget.job_need_mb``, ADR 0708): base model + LoRA workspace (each
    LoRA's weights) + ControlNet reserve (each ControlNet's weights) + activations for its
    resolution and batch (the model's figure per megapixel and image).

    Raises KeyError for an unknown model or adapter (``admit`` refuses those first).
    """
    model = catalog.models[request.model_id]
    adapters = [catalog.adapters[a] for a in request.adapters]
    mb = budget.GB / budget.MIB  # MiB per GB
    need = budget.job_need_mb(
        model.weights_gb * mb,
        model.family,
        request.width,
        request.height,
        request.batch,
        activation_per_mpix=model.activation_gb_per_mpix * mb,
        loras_mb=[a.weights_gb * mb for a in adapters if a.kind is AdapterKind.LORA],
        controlnets_mb=[a.weights_gb * mb for a in adapters if a.kind is AdapterKind.CONTROLNET],
    )
    return need.total_mb / mb


def fits(family: str, need_gb: float, worker: WorkerView) -> bool:
    """A job fits a worker when the worker runs its family and the footprint fits the budget.

    The budget already counts resident models the worker would evict for this job, so fit is a
    property of the (job, worker) pair, not of the worker's momentary free memory. It is the
    worker's reported memory less the budget model's margin (``budget_fraction``, by default
    ``imagegen_runtime.budget.USABLE_FRACTION``): the rule the worker admits jobs by.
    """
    return family in worker.capabilities and need_gb <= worker.budget_gb


def warm_level(request: JobRequest, worker: WorkerView) -> int:
    """``WarmLevel`` of a job on a worker, from the worker's resident set."""
    if request.model_id not in worker.resident:
        return WarmLevel.COLD
    if all(a in worker.resident for a in request.adapters):
        return WarmLevel.FULL
    return WarmLevel.BASE


def denoise_s(request: JobRequest, steps: int, speed: float, catalog: ModelCatalog) -> float:
    """Expected denoising seconds for ``steps`` steps on a GPU of relative ``speed``.

    The batch factor 1 + 0.85 (b - 1) reflects that batched images share fixed costs; each
    ControlNet adds its ``step_overhead`` to every step.
    """
    model = catalog.models[request.model_id]
    overhead = 1.0 + sum(catalog.adapters[a].step_overhead for a in request.adapters)
    batch_factor = 1.0 + 0.85 * (request.batch - 1)
    return model.step_s * steps * request.megapixels * batch_factor * overhead / speed


def load_estimate_s(request: JobRequest, worker: WorkerView, catalog: ModelCatalog) -> float:
    """Expected seconds of loading before denoising starts (midpoint of each load range)."""
    load = 0.0
    if request.model_id not in worker.resident:
        load += sum(catalog.models[request.model_id].load_s) / 2
    for adapter_id in request.adapters:
        if adapter_id not in worker.resident:
            load += sum(catalog.adapters[adapter_id].load_s) / 2
    return load

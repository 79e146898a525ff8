"""Prometheus metrics of the gpu-worker service (the process's default registry, /metrics).

The seed's detection column for a worker: cache misses (warm hits against cold loads), load
times by where the weights came from, per-step denoising time by model family, and the memory
in use, free, and how contiguous the free memory is (ADR 0810).
"""

from __future__ import annotations

import time
from collections.abc import Callable

from prometheus_client import Counter, Gauge, Histogram

from imagegen_schemas.workers import WorkerHeartbeat

# One per pipeline unloaded to make room for another model under the memory budget
# (IMAGEGEN_GPU_WORKER_MODEL_MEMORY_BUDGET_MB); a steady rate means the budget holds fewer
# models than the jobs this worker gets use.
MODEL_EVICTIONS = Counter(
    "imagegen_gpu_worker_model_evictions_total",
    "Loaded pipelines unloaded to make room for another model under the memory budget.",
)
PIN_OVERRIDES = Counter(
    "imagegen_gpu_worker_pin_overrides_total",
    "Pinned models unloaded because a load or a job could not fit beside them (ADR 0711).",
)
# One per run started (each part of a split retry counts): warm when the job's model was
# resident on the device as the run began, cold when it had to be loaded (from disk or RAM).
WARM_HITS = Counter(
    "imagegen_warm_hits", "Runs whose model was resident on the device when they started."
)
COLD_LOADS = Counter(
    "imagegen_cold_loads", "Runs that had to load their model (from disk or the RAM tier) first."
)
# One per model load, labelled as ModelLoaded's ``source``: "disk" (read, sha256 checked) or
# "ram" (brought back from the worker's RAM tier, ADR 0705). Found-resident answers are not loads.
MODEL_LOAD_SECONDS = Histogram(
    "imagegen_model_load_seconds",
    "Time to load one model onto the device, by where its weights came from.",
    ["source"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0),
)
# One per denoising step: from the step's first denoiser (UNet/transformer) call to the end of
# the pipeline's step callback (scheduler step included; text encoding and VAE decode not).
DENOISE_STEP_SECONDS = Histogram(
    "imagegen_denoise_step_seconds",
    "Time of one denoising step, by model family (sd15, sdxl, sd3, flux).",
    ["family"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
)
# Set at every heartbeat, from what the heartbeat reports (ADR 0810 for the definitions).
MEMORY_USED = Gauge(
    "imagegen_worker_memory_used_bytes",
    "Memory in use on the worker: its budget (or device) total less what is free.",
    ["worker"],
)
MEMORY_FREE = Gauge(
    "imagegen_worker_memory_free_bytes",
    "Memory free for models and activations on the worker (within its budget, if any).",
    ["worker"],
)
FRAGMENTATION_RATIO = Gauge(
    "imagegen_worker_memory_fragmentation_ratio",
    "Largest free block / free memory (1 = all free memory in one block; alert below 0.7). "
    "CUDA: measured from the caching allocator; CPU: 1 (the budget model has no blocks).",
    ["worker"],
)
for _source in ("disk", "ram"):
    MODEL_LOAD_SECONDS.labels(_source)


def contiguity(hb: WorkerHeartbeat) -> float:
    """The exported fragmentation ratio: largest free block / free memory, in [0, 1].

    A heartbeat's own ``fragmentation_ratio`` is the complement (1 - largest / free, ADR 0709;
    CUDA only). Without it (CPU) the worker's memory is the budget model's single pool, which
    has no blocks to fragment: 1.0."""
    if hb.fragmentation_ratio is None:
        return 1.0
    return min(1.0, max(0.0, 1.0 - hb.fragmentation_ratio))


def record_memory(hb: WorkerHeartbeat) -> None:
    """Set the memory gauges of ``hb``'s worker from the heartbeat it publishes."""
    MEMORY_USED.labels(hb.worker_id).set(max(0, hb.memory_total_bytes - hb.memory_free_bytes))
    MEMORY_FREE.labels(hb.worker_id).set(hb.memory_free_bytes)
    FRAGMENTATION_RATIO.labels(hb.worker_id).set(contiguity(hb))


class StepTimer:
    """Times a run's denoising steps into :data:`DENOISE_STEP_SECONDS` under ``family``.

    :meth:`started` is called at each denoiser (UNet/transformer) call and keeps the first of a
    step (classifier-free guidance may call it twice per step); :meth:`ended` is called from the
    pipeline's step callback and observes the step's time. A step callback without a denoiser
    call before it (no hook could be set) is timed from the previous step's end (the first
    such step goes untimed)."""

    def __init__(self, family: str, clock: Callable[[], float] = time.perf_counter) -> None:
        self.histogram = DENOISE_STEP_SECONDS.labels(family)
        self.clock = clock
        self._start: float | None = None
        self._last_end: float | None = None

    def started(self, *_: object) -> None:
        if self._start is None:
            self._start = self.clock()

    def ended(self) -> None:
        now = self.clock()
        start = self._start if self._start is not None else self._last_end
        if start is not None:
            self.histogram.observe(max(0.0, now - start))
        self._start, self._last_end = None, now

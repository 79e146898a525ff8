"""Prometheus metrics of the gpu-worker service (the process's default registry, /metrics)."""

from __future__ import annotations

from prometheus_client import Counter

# One per pipeline unloaded to make room for another model under the memory budget
# (IMAGEGEN_GPU_WORKER_MODEL_MEMORY_BUDGET_MB); a steady rate means the budget holds fewer
# models than the jobs this worker gets use.
MODEL_EVICTIONS = Counter(
    "imagegen_gpu_worker_model_evictions_total",
    "Loaded pipelines unloaded to make room for another model under the memory budget.",
)

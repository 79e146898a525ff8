"""Reads the memory budget of the device the worker runs on."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class MemoryInfo:
    total_bytes: int  # device memory in all
    free_bytes: int  # memory available for models and latents now
    device_name: str  # e.g. "cpu" or "NVIDIA H100 80GB HBM3"
    # The largest single allocation that could succeed now (CUDA only; None on CPU).
    largest_free_block_bytes: int | None = None
    # 1 - largest free block / free memory (CUDA only; domain/fragmentation.py, ADR 0709).
    fragmentation_ratio: float | None = None


def read_memory(device: str) -> MemoryInfo:
    """GPU memory via torch when on CUDA, else the host's MemAvailable from /proc/meminfo."""
    if device == "cuda":
        import torch  # imported only on GPU workers: ~10 s and ~400 MB per process

        from .cuda_memory import read as read_cuda

        state = read_cuda(torch)
        return MemoryInfo(
            state.total,
            state.driver_free,
            torch.cuda.get_device_name(),
            state.largest_free_block,
            state.fragmentation_ratio,
        )
    fields: dict[str, int] = {}
    with open("/proc/meminfo") as f:
        for line in f:
            name, value = line.split(":", 1)
            fields[name] = int(value.split()[0]) * 1024
    return MemoryInfo(fields["MemTotal"], fields["MemAvailable"], "cpu")


def within_budget(mem: MemoryInfo, budget_bytes: int | None, resident_bytes: int) -> MemoryInfo:
    """The memory a worker with a model budget offers: the budget as its total, the budget less
    its resident models as free (never more than the device has free). Without a budget, the
    device as it is. A local fleet's workers differ by budget, so the pool-manager and the
    scheduler see them as GPU classes of those sizes (``IMAGEGEN_STACK_WORKER_BUDGETS_MB``)."""
    if budget_bytes is None:
        return mem
    free = max(0, min(budget_bytes - resident_bytes, mem.free_bytes))
    return MemoryInfo(
        budget_bytes,
        free,
        mem.device_name,
        mem.largest_free_block_bytes,
        mem.fragmentation_ratio,
    )


def largest_free_block(device_free: int, torch: Any) -> int:
    """The largest block one allocation could get now: either a new segment from the driver
    (up to ``device_free``: the driver maps physical pages into one virtual range, so its free
    memory is not fragmented for a new allocation) or the largest free block inside a segment
    PyTorch's caching allocator already holds (``memory_snapshot``: blocks ``inactive``).
    Fragmentation shows as memory that is reserved and free but only in small blocks; a
    DefragmentMemory command (``DiffusersRunner.defragment``) gives it back to the driver."""
    cached = max(
        (
            block["size"]
            for segment in torch.cuda.memory_snapshot()
            for block in segment.get("blocks", ())
            if block.get("state") == "inactive"
        ),
        default=0,
    )
    return max(int(device_free), int(cached))

"""Reads the memory budget of the device the worker runs on."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class MemoryInfo:
    total_bytes: int  # device memory in all
    free_bytes: int  # memory available for models and latents now
    device_name: str  # e.g. "cpu" or "NVIDIA H100 80GB HBM3"


def read_memory(device: str) -> MemoryInfo:
    """GPU memory via torch when on CUDA, else the host's MemAvailable from /proc/meminfo."""
    if device == "cuda":
        import torch  # imported only on GPU workers: ~10 s and ~400 MB per process

        free, total = torch.cuda.mem_get_info()
        return MemoryInfo(total, free, torch.cuda.get_device_name())
    fields: dict[str, int] = {}
    with open("/proc/meminfo") as f:
        for line in f:
            name, value = line.split(":", 1)
            fields[name] = int(value.split()[0]) * 1024
    return MemoryInfo(fields["MemTotal"], fields["MemAvailable"], "cpu")

"""Device memory fragmentation, as heartbeats report it, and what a defragmentation did (pure).

On CUDA the memory a new allocation can use is the driver's free memory plus what PyTorch's
caching allocator has reserved but not allocated (freed blocks it keeps for reuse). The driver's
free memory is one block for a new allocation (it maps physical pages into one virtual range);
the allocator's free blocks are usable only one at a time, each as large as it is. So:

- ``largest_free_block`` = max(driver free, largest free block inside a reserved segment);
- ``free_total`` = driver free + (reserved - allocated);
- **fragmentation ratio** = 1 - largest_free_block / free_total, in [0, 1]: 0 when every free
  byte could be taken by one allocation, towards 1 when the free memory is scattered in small
  blocks. 0 when nothing is free (there is nothing to fragment).

A ``DefragmentMemory`` command moves the idle pipelines off the device, returns the allocator's
free blocks to the driver (``empty_cache``) and moves them back side by side: afterwards the
reserved-but-unallocated memory is near 0 and so is the ratio.
"""

from __future__ import annotations

from dataclasses import dataclass


def fragmentation_ratio(largest_free_block: int, free_total: int) -> float:
    """1 - largest_free_block / free_total, clamped to [0, 1]; 0.0 when nothing is free."""
    if largest_free_block < 0 or free_total < 0:
        raise ValueError(
            f"memory sizes must be >= 0: largest_free_block={largest_free_block},"
            f" free_total={free_total}"
        )
    if free_total == 0:
        return 0.0
    return min(1.0, max(0.0, 1.0 - largest_free_block / free_total))


@dataclass(frozen=True)
class MemoryState:
    """One reading of a CUDA device's memory (bytes)."""

    total: int  # the device's memory
    driver_free: int  # free for the driver (cudaMemGetInfo)
    reserved: int  # held by PyTorch's caching allocator
    allocated: int  # in tensors now
    largest_free_block: int  # see the module docstring

    @property
    def reserved_free(self) -> int:
        """Reserved by the allocator but in no tensor: reusable only block by block."""
        return max(0, self.reserved - self.allocated)

    @property
    def free_total(self) -> int:
        return self.driver_free + self.reserved_free

    @property
    def fragmentation_ratio(self) -> float:
        return fragmentation_ratio(self.largest_free_block, self.free_total)


@dataclass(frozen=True)
class DefragOutcome:
    """What a DefragmentMemory command did on this worker (logged by the command handler)."""

    device: str  # "cpu" or "cuda"
    compacted: bool  # False: nothing to compact (CPU), only garbage collection ran
    moved: tuple[str, ...] = ()  # models moved off the device and back
    skipped_in_use: tuple[str, ...] = ()  # resident models a run was using: not touched
    unloaded: tuple[str, ...] = ()  # models that could not come back (unloaded, reason oom)
    before: MemoryState | None = None  # CUDA only
    after: MemoryState | None = None
    ms: float = 0.0

    def summary(self) -> dict[str, object]:
        """A flat dict for the log line."""
        out: dict[str, object] = {
            "device": self.device,
            "compacted": self.compacted,
            "moved": list(self.moved),
            "skipped_in_use": list(self.skipped_in_use),
            "unloaded": list(self.unloaded),
            "ms": round(self.ms, 1),
        }
        for name, state in (("before", self.before), ("after", self.after)):
            if state is not None:
                out[f"{name}_largest_free_block_bytes"] = state.largest_free_block
                out[f"{name}_reserved_free_bytes"] = state.reserved_free
                out[f"{name}_fragmentation_ratio"] = round(state.fragmentation_ratio, 4)
        return out

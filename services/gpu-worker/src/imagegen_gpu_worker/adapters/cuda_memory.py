"""Reads a CUDA device's memory as :class:`~..domain.fragmentation.MemoryState` (ADR 0709).

``torch`` is passed in (the worker's one import, ``ml.torch_module``; a stand-in in tests): the
driver's view from ``torch.cuda.mem_get_info``, the caching allocator's from
``torch.cuda.memory_stats`` (``reserved_bytes.all.current``, ``allocated_bytes.all.current``)
and its free blocks from ``torch.cuda.memory_snapshot`` (blocks in state ``inactive``).
"""

from __future__ import annotations

from typing import Any

from ..domain.fragmentation import MemoryState


def largest_cached_free_block(torch: Any) -> int:
    """The largest free block inside the segments the caching allocator holds (0 if none)."""
    return max(
        (
            int(block["size"])
            for segment in torch.cuda.memory_snapshot()
            for block in segment.get("blocks", ())
            if block.get("state") == "inactive"
        ),
        default=0,
    )


def read(torch: Any, device: Any = None) -> MemoryState:
    """The memory of CUDA ``device`` (the current one when None) now."""
    free, total = torch.cuda.mem_get_info(device)
    stats = torch.cuda.memory_stats(device)
    return MemoryState(
        total=int(total),
        driver_free=int(free),
        reserved=int(stats.get("reserved_bytes.all.current", 0)),
        allocated=int(stats.get("allocated_bytes.all.current", 0)),
        largest_free_block=max(int(free), largest_cached_free_block(torch)),
    )

"""Which resident weights a worker unloads to make room for a job: least recently used first,
and only what must go.

Shared by the gpu-worker (its pipeline cache under a memory budget) and the fleet simulator's
workers, so the simulator models the eviction the service does. Pure: sizes in, names out, in
whatever unit the caller uses (bytes, GB).

Plain LRU unloads the least recently used items one by one until the job fits. When the items
it meets first are small (LoRAs) and a larger one further on (a ControlNet, a base model) has to
go anyway, the small ones were unloaded for nothing, and the next job that uses them pays their
load again. ``evictions`` walks the same LRU order, then gives back, most recently used first,
every victim that still fits beside the job: what remains is a set the job needs gone, chosen
oldest first (ADR 0110).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable


def evictions(
    resident: Iterable[tuple[str, float]],
    keep: Collection[str],
    need: float,
    budget: float,
) -> list[str] | None:
    """Items to unload so that a job needing ``need`` fits in ``budget``.

    ``resident``: (name, size) of what is loaded now, least recently used first. ``keep``: the
    names the job itself uses (never unloaded; their sizes are part of ``need``). ``need``:
    everything the job holds while it runs (its weights, resident or not, and its
    activations). Returns the names to unload, least recently used first, or None when the job
    cannot fit even with everything else unloaded.

    Guarantees (tested): after unloading, ``need`` plus what stays fits in ``budget``; no
    returned item could stay without breaking that (given the others go); items in ``keep`` are
    never returned; with room to spare nothing is returned.
    """
    others = [(name, size) for name, size in resident if name not in keep]
    held = sum(size for _, size in others)
    if need > budget:
        return None
    victims: list[tuple[str, float]] = []
    for name, size in others:  # least recently used first, until the job fits
        if need + held <= budget:
            break
        victims.append((name, size))
        held -= size
    stays: set[str] = set()
    for name, size in reversed(victims):  # give back what did not have to go, newest first
        if need + held + size <= budget:
            held += size
            stays.add(name)
    return [name for name, _ in victims if name not in stays]

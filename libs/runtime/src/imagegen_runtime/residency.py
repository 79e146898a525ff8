"""Which resident weights a worker unloads to make room for a job: least recently used first,
and only what must go.

Shared by the gpu-worker (its pipeline cache under a memory budget) and the fleet simulator's
workers, so the simulator models the eviction the service does. Pure: sizes in, names out, in
whatever unit the caller uses (bytes, GB). ``ResidencyFacts`` (below) is the other side: what
a worker holds, as the scheduler and the pool-manager read it from the log.

Plain LRU unloads the least recently used items one by one until the job fits. When the items
it meets first are small (LoRAs) and a larger one further on (a ControlNet, a base model) has to
go anyway, the small ones were unloaded for nothing, and the next job that uses them pays their
load again. ``evictions`` walks the same LRU order, then gives back, most recently used first,
every victim that still fits beside the job: what remains is a set the job needs gone, chosen
oldest first (ADR 0110).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from typing import Generic, TypeVar

D = TypeVar("D")


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


class ResidencyFacts(Generic[D]):
    """Which models each worker holds, folded from the facts the log carries about it.

    Heartbeats are snapshots (each listed model is resident, each other one known is not, as of
    the beat); ``ModelLoaded`` and ``ModelEvicted`` are single facts. Per (worker, model) the
    newest fact by event time wins, so the result does not depend on the order in which a
    replay reads the heartbeat and residency topics. Shared by the scheduler (its workers'
    warm sets) and the pool-manager (its fleet projection): both must agree on what is warm.
    A fact may carry a detail (the pool-manager keeps each model's kind and bytes).
    """

    def __init__(self) -> None:
        # worker id -> model id -> (time of the newest fact, resident?, detail)
        self._facts: dict[str, dict[str, tuple[float, bool, D | None]]] = {}

    def snapshot(self, worker_id: str, resident: Mapping[str, D | None], at: float) -> None:
        """A heartbeat listing ``resident`` (model id -> detail) at ``at``."""
        known = set(self._facts.get(worker_id, {})) | set(resident)
        for model_id in known:
            listed = model_id in resident
            self.fact(worker_id, model_id, listed, at, resident.get(model_id))

    def fact(
        self, worker_id: str, model_id: str, resident: bool, at: float, detail: D | None = None
    ) -> bool:
        """One fact (a load or an eviction); True when it is now the newest for that model."""
        held = self._facts.setdefault(worker_id, {})
        current = held.get(model_id)
        if current is not None and at < current[0]:
            return False
        held[model_id] = (at, resident, detail if resident else None)
        return True

    def resident(self, worker_id: str) -> dict[str, D | None]:
        """Model id -> detail of the models resident on ``worker_id``, by id."""
        facts = self._facts.get(worker_id, {})
        return {m: d for m, (_, r, d) in sorted(facts.items()) if r}

"""The fleet as the scheduler knows it: latest worker views and who holds which weights."""

from __future__ import annotations

from dataclasses import dataclass, field

from .model import WorkerView


@dataclass(slots=True)
class Fleet:
    """Every known worker's latest view, kept with two indexes the policy reads often.

    Invariants: ``accepting`` counts the views with ``accepting`` set; ``holders[item]`` is the set
    of workers whose view lists ``item`` (a model or adapter id) as resident, and is never empty.
    """

    workers: dict[str, WorkerView] = field(default_factory=dict)  # by worker id
    holders: dict[str, set[str]] = field(default_factory=dict)  # model/adapter id -> worker ids
    accepting: int = 0  # workers that accept new work

    def record(self, worker: WorkerView) -> None:
        """Replace a worker's view; keep the accepting count and the holders index in step."""
        old = self.workers.get(worker.worker_id)
        self.accepting += worker.accepting - (old is not None and old.accepting)
        self._forget_residents(old)
        self.workers[worker.worker_id] = worker
        for item in worker.resident:
            self.holders.setdefault(item, set()).add(worker.worker_id)

    def forget(self, worker_id: str) -> None:
        """Drop a worker (lost); its residents leave the holders index."""
        old = self.workers.pop(worker_id, None)
        self.accepting -= old is not None and old.accepting
        self._forget_residents(old)

    def _forget_residents(self, old: WorkerView | None) -> None:
        if old is None:
            return
        for item in old.resident:
            holders = self.holders.get(item)
            if holders is not None:
                holders.discard(old.worker_id)
                if not holders:
                    del self.holders[item]

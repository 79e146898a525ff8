"""The fleet as the scheduler knows it: latest worker views and who holds which weights."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .model import WorkerView

if TYPE_CHECKING:
    from .state import SchedulerState


def record_worker(state: SchedulerState, worker: WorkerView) -> None:
    """Replace a worker's view; keep the accepting count and the holders index in step."""
    old = state.workers.get(worker.worker_id)
    state.accepting += worker.accepting - (old is not None and old.accepting)
    _forget_residents(state, old)
    state.workers[worker.worker_id] = worker
    for item in worker.resident:
        state.holders.setdefault(item, set()).add(worker.worker_id)


def forget_worker(state: SchedulerState, worker_id: str) -> None:
    old = state.workers.pop(worker_id, None)
    state.accepting -= old is not None and old.accepting
    _forget_residents(state, old)


def _forget_residents(state: SchedulerState, old: WorkerView | None) -> None:
    if old is None:
        return
    for item in old.resident:
        holders = state.holders.get(item)
        if holders is not None:
            holders.discard(old.worker_id)
            if not holders:
                del state.holders[item]

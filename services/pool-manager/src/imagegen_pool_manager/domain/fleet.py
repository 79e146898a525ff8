"""Worker state as a fold over heartbeats and assignments, and the loss rule (pure).

A worker is *lost* when its last heartbeat is older than ``timeout_s`` at ``now``. Each job
assigned to it and not finished is then handed back for re-queueing, once per loss: a worker
that beats again is alive again, and a later loss is a new loss.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from imagegen_schemas import jobs as ev
from imagegen_schemas.workers import WorkerHeartbeat


@dataclass
class Worker:
    worker_id: str
    last_seen: float  # unix time of the newest heartbeat
    last_beat_id: str  # event id of that heartbeat (identifies one loss)
    heartbeat: WorkerHeartbeat  # newest state: status, memory, resident models
    lost: bool = False


@dataclass
class InFlight:
    worker_id: str
    fencing_token: int
    attempt: int


@dataclass
class Fleet:
    workers: dict[str, Worker] = field(default_factory=dict)
    in_flight: dict[str, InFlight] = field(default_factory=dict)  # job id -> current assignment


def evolve(fleet: Fleet, payload: object, at: float, event_id: str) -> Fleet:
    match payload:
        case WorkerHeartbeat():
            current = fleet.workers.get(payload.worker_id)
            if current is None or at >= current.last_seen:
                fleet.workers[payload.worker_id] = Worker(payload.worker_id, at, event_id, payload)
        case ev.JobScheduled():
            held = fleet.in_flight.get(payload.job_id)
            if held is None or payload.fencing_token > held.fencing_token:
                fleet.in_flight[payload.job_id] = InFlight(
                    payload.worker_id, payload.fencing_token, payload.attempt
                )
        case ev.ImageGenerated() | ev.GenerationCancelled() | ev.GenerationFailed():
            fleet.in_flight.pop(payload.job_id, None)
        case ev.GenerationPaused():  # the worker no longer runs it: its loss orphans nothing
            held = fleet.in_flight.get(payload.job_id)
            if held is not None and held.fencing_token == payload.fencing_token:
                del fleet.in_flight[payload.job_id]
    return fleet


@dataclass(frozen=True)
class Loss:
    worker_id: str  # the silent worker
    beat_id: str  # its last heartbeat's event id: the loss's identity
    jobs: tuple[tuple[str, InFlight], ...]  # (job id, assignment) to re-queue


def detect_losses(fleet: Fleet, now: float, timeout_s: float) -> list[Loss]:
    """Workers newly silent for longer than ``timeout_s``, by worker id; marks them lost."""
    losses = []
    for wid in sorted(fleet.workers):
        worker = fleet.workers[wid]
        if worker.lost or now - worker.last_seen <= timeout_s:
            continue
        worker.lost = True
        jobs = tuple(sorted((j, f) for j, f in fleet.in_flight.items() if f.worker_id == wid))
        losses.append(Loss(wid, worker.last_beat_id, jobs))
    return losses

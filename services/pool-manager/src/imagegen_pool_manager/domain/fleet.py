"""Worker state as a fold over heartbeats and assignments, and the loss rule (pure).

A worker is *lost* when it has been silent for longer than ``timeout_s`` of the time the
pool-manager itself was listening (``awake_since``: its start, or its resumption after a stall;
heartbeats sent while it was stopped are still in Kafka). Each job assigned to it and not
finished is then handed back for re-queueing, once per loss: a worker that beats again is alive
again, and a later loss is a new loss.

The fold does not depend on the order of topics: replay reads the scheduled, results and ended
topics in no fixed order across them, so a job's end may be folded before its assignment. Ends
are kept as facts (``Ended``) and an assignment they cover is never in flight.
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
class Ended:
    """What is known to have ended for one job, whatever order it was folded in."""

    job: bool = False  # the job is over for the pool (images made, cancelled, failed for good)
    token: int = 0  # assignments up to this fencing token ended (images, paused, failed)
    attempt: int = 0  # attempts up to this number failed (failures that name no token)

    def covers(self, flight: InFlight) -> bool:
        return self.job or flight.fencing_token <= self.token or flight.attempt <= self.attempt


@dataclass
class Fleet:
    workers: dict[str, Worker] = field(default_factory=dict)
    in_flight: dict[str, InFlight] = field(default_factory=dict)  # job id -> current assignment
    ended: dict[str, Ended] = field(default_factory=dict)  # job id -> what ended


def evolve(fleet: Fleet, payload: object, at: float, event_id: str) -> Fleet:
    match payload:
        case WorkerHeartbeat():
            current = fleet.workers.get(payload.worker_id)
            if current is None or at >= current.last_seen:
                fleet.workers[payload.worker_id] = Worker(payload.worker_id, at, event_id, payload)
            return fleet
        case ev.JobScheduled():
            held = fleet.in_flight.get(payload.job_id)
            if held is None or payload.fencing_token > held.fencing_token:
                fleet.in_flight[payload.job_id] = InFlight(
                    payload.worker_id, payload.fencing_token, payload.attempt
                )
        case ev.ImageGenerated() | ev.GenerationPaused():  # that assignment no longer runs
            ended = fleet.ended.setdefault(payload.job_id, Ended())
            ended.token = max(ended.token, payload.fencing_token)
        case ev.GenerationCancelled():
            fleet.ended.setdefault(payload.job_id, Ended()).job = True
        case ev.GenerationFailed():  # terminal: the job is over; else one attempt failed
            ended = fleet.ended.setdefault(payload.job_id, Ended())
            if payload.terminal:
                ended.job = True
            elif payload.fencing_token is not None:  # names the assignment that failed
                ended.token = max(ended.token, payload.fencing_token)
            else:
                ended.attempt = max(ended.attempt, payload.attempt)
        case _:
            return fleet
    _settle(fleet, payload.job_id)
    return fleet


def _settle(fleet: Fleet, job_id: str) -> None:
    """The job's assignment leaves the in-flight set once a known end covers it."""
    held, ended = fleet.in_flight.get(job_id), fleet.ended.get(job_id)
    if held is not None and ended is not None and ended.covers(held):
        del fleet.in_flight[job_id]


@dataclass(frozen=True)
class Loss:
    worker_id: str  # the silent worker
    beat_id: str  # its last heartbeat's event id: the loss's identity
    jobs: tuple[tuple[str, InFlight], ...]  # (job id, assignment) to re-queue


def detect_losses(
    fleet: Fleet, now: float, timeout_s: float, awake_since: float = float("-inf")
) -> list[Loss]:
    """Workers newly silent for longer than ``timeout_s`` of the time since ``awake_since``, by
    worker id; marks them lost."""
    losses = []
    for wid in sorted(fleet.workers):
        worker = fleet.workers[wid]
        if worker.lost or now - max(worker.last_seen, awake_since) <= timeout_s:
            continue
        worker.lost = True
        jobs = tuple(sorted((j, f) for j, f in fleet.in_flight.items() if f.worker_id == wid))
        losses.append(Loss(wid, worker.last_beat_id, jobs))
    return losses

"""Worker state as a fold over heartbeats and assignments, and the loss rule (pure).

A worker is *lost* when it has been silent for longer than ``timeout_s`` of the time the
pool-manager itself was listening (``awake_since``: its start, or its resumption after a stall;
heartbeats sent while it was stopped are still in Kafka). Each job assigned to it and not
finished is then handed back for re-queueing, once per loss: a worker that beats again is alive
again, and a later loss is a new loss.

The fold does not depend on the order of topics: replay reads the scheduled, results and ended
topics in no fixed order across them, so a job's end may be folded before its assignment. Ends
are kept as facts (``Ended``) and an assignment they cover is never in flight.

Residency (which models and adapters a worker holds) is folded the same way, from heartbeats
(a snapshot: each listed model is resident, each other one is not, as of the beat) and from
``ModelLoaded`` / ``ModelEvicted`` / ``ModelCorrupted`` (not resident: the worker drops a
corrupted model and loads it again, once repaired, on demand): per (worker, model) the newest
fact wins, whatever order the topics were read in. :func:`project` is the fleet as operators
read it (``imagegen fleet``, ``/v1/workers``, the persisted projection).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from imagegen_runtime.residency import ResidencyFacts
from imagegen_schemas import jobs as ev
from imagegen_schemas.workers import (
    LoadedModel,
    ModelCorrupted,
    ModelEvicted,
    ModelLoaded,
    WorkerHeartbeat,
)


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
    # what each worker holds: the newest fact per (worker, model), with its kind and bytes
    residency: ResidencyFacts[LoadedModel] = field(default_factory=ResidencyFacts)
    # the most memory any worker reported a model or adapter taking loaded (heartbeats'
    # ``loaded[].bytes``, ``ModelLoaded.model.bytes``), kept after it is unloaded (ADR 0717)
    measured: dict[str, int] = field(default_factory=dict)


def evolve(fleet: Fleet, payload: object, at: float, event_id: str) -> Fleet:
    match payload:
        case WorkerHeartbeat():
            current = fleet.workers.get(payload.worker_id)
            if current is None or at >= current.last_seen:
                fleet.workers[payload.worker_id] = Worker(payload.worker_id, at, event_id, payload)
            listed = {m.model_id: m for m in payload.loaded}
            fleet.residency.snapshot(payload.worker_id, listed, at)
            for m in payload.loaded:
                _measure(fleet, m)
            return fleet
        case ModelLoaded():
            model = payload.model
            fleet.residency.fact(payload.worker_id, model.model_id, True, at, model)
            _measure(fleet, model)
            return fleet
        case ModelEvicted():
            fleet.residency.fact(payload.worker_id, payload.model_id, False, at)
            return fleet
        case ModelCorrupted():  # its files failed their sha256 there: not usable (ADR 0707)
            fleet.residency.fact(payload.worker_id, payload.model_id, False, at)
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


def _measure(fleet: Fleet, model: LoadedModel) -> None:
    """Keep the largest size reported for ``model`` (the order facts are read in is no
    matter)."""
    if model.bytes > fleet.measured.get(model.model_id, 0):
        fleet.measured[model.model_id] = model.bytes


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


def resident(fleet: Fleet, worker_id: str) -> list[LoadedModel]:
    """The models and adapters resident on ``worker_id`` now, by id."""
    held = fleet.residency.resident(worker_id).items()
    return [m or LoadedModel(model_id=model_id, bytes=0) for model_id, m in held]


def project(fleet: Fleet) -> dict[str, dict[str, Any]]:
    """The fleet as operators read it, one JSON document per worker (by worker id).

    ``state`` is ``lost``, ``busy`` or ``idle``; ``models`` are the resident base models and
    ``adapters`` the LoRAs and ControlNets (``{"model_id", "kind", "bytes"}``);
    ``memory_used_bytes`` is the device memory in use (total minus free, as the worker measured
    it); ``fragmentation_ratio`` is the heartbeat's (CUDA only, else null; the pool asks for a
    ``DefragmentMemory`` at 0.3, ADR 0714); ``pinned`` are the models the pool-manager pinned
    there, as its newest heartbeat lists them, resident or not (ADR 0711); ``in_flight`` are the
    jobs assigned to it and not ended.
    """
    out: dict[str, dict[str, Any]] = {}
    for wid in sorted(fleet.workers):
        w = fleet.workers[wid]
        hb = w.heartbeat
        held = [m.model_dump(mode="json") for m in resident(fleet, wid)]
        out[wid] = {
            "worker_id": wid,
            "state": "lost" if w.lost else str(hb.status),
            "gpu_type": hb.gpu_type,
            "capabilities": sorted(hb.capabilities),
            "memory_total_bytes": hb.memory_total_bytes,
            "memory_free_bytes": hb.memory_free_bytes,
            "memory_used_bytes": max(0, hb.memory_total_bytes - hb.memory_free_bytes),
            "largest_free_block_bytes": hb.largest_free_block_bytes,
            "fragmentation_ratio": hb.fragmentation_ratio,
            "models": [m for m in held if m["kind"] == "base"],
            "adapters": [m for m in held if m["kind"] != "base"],
            "pinned": sorted(hb.pinned),
            "running_job_id": hb.running_job_id,
            "in_flight": sorted(j for j, f in fleet.in_flight.items() if f.worker_id == wid),
            "last_seen": w.last_seen,
        }
    return out

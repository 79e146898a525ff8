"""What the warm pool plans from, folded from the log (pure): demand, the queue, each model's
uses per worker, and the pool's own load commands still under way.

- **Arrivals**: every ``GenerationRequested`` as (time, model): the recent ones are the demand
  (``policy.predict_demand``), all of them teach the hourly weights.
- **Queue**: jobs requested and not yet assigned or over (an image made, cancelled, failed for
  good, or their prompt refused). A job whose attempt failed is queued again until it is
  assigned again.
- **Uses**: each assignment is a use of its model on its worker (``last_used``, uses in the
  last 24 h: the eviction score's inputs).
- **Run times**: each image made (``ImageGenerated``) gives its model's run time on the worker,
  load excluded (``timings_ms`` total less load); the last ``RUN_SAMPLES`` per model give the
  mean work of one request (``mean_run_s``, the policy's ``ModelInfo.work_s``) and the seconds
  per step and megapixel (``run_s_per_step_mp``: what a queued job of that model will take).
- **Loads under way**: each ``LoadModel`` the pool sent, until the worker answers it
  (``ModelLoaded`` / ``ModelLoadFailed`` naming the command) or it times out. Rebuilt by the
  replay, so a restarted pool-manager knows what it already asked for and asks nothing twice.
- **Pins answered**: per (worker, model), when a pin command (``LoadModel.pin``) for it was last
  answered by a ``ModelLoaded`` (ADR 0711): the planner does not ask again for a pin that the
  worker's heartbeats may not show yet.
- **Evictions**: each ``EvictModel`` the pool sent, under way until the worker answers it
  (``ModelEvicted`` naming the command), then when it was answered per (worker, model): the
  planner does not ask again while a heartbeat may still list the pin it dropped (ADR 0714).
- **Defragmentations**: when the pool last sent each worker a ``DefragmentMemory`` (ADR 0714).

Order-independent like the fleet fold: an end folded before its request still ends it.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from imagegen_schemas import jobs as ev
from imagegen_schemas.workers import (
    DefragmentMemory,
    EvictModel,
    LoadModel,
    ModelEvicted,
    ModelLoaded,
    ModelLoadFailed,
)

DAY_S = 24 * 3600.0
RUN_SAMPLES = 50  # run times kept per model: the mean follows the recent requests


@dataclass(frozen=True, slots=True)
class Requested:
    at: float
    model_id: str
    tier: str  # service tier: turbo, fast, relax
    steps: int
    megapixels: float


@dataclass(frozen=True, slots=True)
class Pending:
    """A load the pool asked for and no worker has answered yet."""

    command_id: str
    worker_id: str
    model_id: str
    at: float
    pin: bool = False  # a tier-1 pin (LoadModel.pin)


@dataclass
class Demand:
    requests: dict[str, Requested] = field(default_factory=dict)  # job id -> request (queued)
    over: set[str] = field(default_factory=set)  # jobs assigned now or over
    assigned: dict[str, int] = field(default_factory=dict)  # job id -> latest token in force
    failed: dict[str, int] = field(default_factory=dict)  # job id -> latest token failed
    arrivals: deque[tuple[float, str]] = field(default_factory=deque)  # (time, model), by time
    uses: dict[tuple[str, str], deque[float]] = field(default_factory=dict)  # (worker, model)
    pending: dict[str, Pending] = field(default_factory=dict)  # command id -> load
    answered: set[str] = field(default_factory=set)  # command ids answered
    # (worker, model) -> the newest ModelLoaded answering a pin command for it (its time)
    pins_answered: dict[tuple[str, str], float] = field(default_factory=dict)
    # command id -> time of a ModelLoaded folded before its command (pin or not: unknown yet)
    loaded_early: dict[str, float] = field(default_factory=dict)
    run_s: dict[str, deque[float]] = field(default_factory=dict)  # model -> recent run seconds
    run_size: dict[str, deque[float]] = field(default_factory=dict)  # their steps x megapixels
    evicting: dict[str, Pending] = field(default_factory=dict)  # command id -> eviction asked
    # (worker, model) -> when the newest EvictModel for it was answered (ModelEvicted)
    evictions_answered: dict[tuple[str, str], float] = field(default_factory=dict)
    evicted_early: dict[str, float] = field(default_factory=dict)  # answer folded before command
    defragmented: dict[str, float] = field(default_factory=dict)  # worker -> last Defragment sent


def fold_demand(demand: Demand, payload: object, at: float, event_id: str) -> None:
    match payload:
        case ev.GenerationRequested():
            _arrive(demand, at, payload.params.model)
            if payload.job_id in demand.over:
                return
            p = payload.params
            demand.requests[payload.job_id] = Requested(
                at, p.model, str(payload.tier), p.steps, p.width * p.height * p.num_images / 1e6
            )
        case ev.PromptModerated() if payload.verdict != ev.Verdict.ALLOWED:
            _over(demand, payload.job_id)
        case ev.JobScheduled():
            token = demand.assigned.get(payload.job_id, 0)
            demand.assigned[payload.job_id] = max(token, payload.fencing_token)
            if payload.params is not None:
                uses = demand.uses.setdefault((payload.worker_id, payload.params.model), deque())
                uses.append(at)
                while uses and uses[0] < at - DAY_S:
                    uses.popleft()
        case ev.ImageGenerated():
            _ran(demand, payload)
            _over(demand, payload.job_id)
        case ev.GenerationCancelled():
            _over(demand, payload.job_id)
        case ev.GenerationFailed(terminal=True):
            _over(demand, payload.job_id)
        case ev.GenerationFailed() | ev.GenerationPaused() | ev.AssignmentRevoked():
            token = payload.fencing_token or 0
            demand.failed[payload.job_id] = max(demand.failed.get(payload.job_id, 0), token)
        case LoadModel():
            loaded_at = demand.loaded_early.pop(event_id, None)  # its answer, folded first
            if payload.pin and loaded_at is not None:
                _pin_answered(demand, payload.worker_id, payload.model_id, loaded_at)
            if event_id not in demand.answered and event_id not in demand.pending:
                demand.pending[event_id] = Pending(
                    event_id, payload.worker_id, payload.model_id, at, payload.pin
                )
        case EvictModel():
            answered_at = demand.evicted_early.pop(event_id, None)  # its answer, folded first
            if answered_at is None and payload.keep_resident:  # an unpin answered "resident"
                answered_at = demand.loaded_early.pop(event_id, None)
            if answered_at is not None:
                _evict_answered(demand, payload.worker_id, payload.model_id, answered_at)
            elif event_id not in demand.answered and event_id not in demand.evicting:
                demand.evicting[event_id] = Pending(
                    event_id, payload.worker_id, payload.model_id, at
                )
        case ModelEvicted(command_id=str() as evict_id):  # only an EvictModel's answer
            if evict_id in demand.answered:
                return  # a duplicate answer: already taken
            demand.answered.add(evict_id)
            asked = demand.evicting.pop(evict_id, None)
            if asked is None:  # its command is not folded yet: keep the answer's time
                demand.evicted_early[evict_id] = at
            else:
                _evict_answered(demand, asked.worker_id, asked.model_id, at)
        case DefragmentMemory():
            demand.defragmented[payload.worker_id] = max(
                demand.defragmented.get(payload.worker_id, at), at
            )
        case ModelLoaded(command_id=str() as unpin_id) if unpin_id in demand.evicting:
            # an EvictModel with keep_resident answered: the pin is gone, the model stays
            demand.answered.add(unpin_id)
            asked = demand.evicting.pop(unpin_id)
            _evict_answered(demand, asked.worker_id, asked.model_id, at)
        case ModelLoaded() | ModelLoadFailed():
            command_id = payload.command_id
            if command_id is not None:
                again = command_id in demand.answered  # a duplicate answer: already taken
                demand.answered.add(command_id)
                asked = demand.pending.pop(command_id, None)
                if isinstance(payload, ModelLoaded) and not again:
                    if asked is None:  # its command is not folded yet: keep the answer's time
                        demand.loaded_early[command_id] = at
                    elif asked.pin:
                        _pin_answered(demand, asked.worker_id, asked.model_id, at)


def _pin_answered(demand: Demand, worker_id: str, model_id: str, at: float) -> None:
    key = (worker_id, model_id)
    demand.pins_answered[key] = max(demand.pins_answered.get(key, at), at)


def _evict_answered(demand: Demand, worker_id: str, model_id: str, at: float) -> None:
    key = (worker_id, model_id)
    demand.evictions_answered[key] = max(demand.evictions_answered.get(key, at), at)


def _ran(demand: Demand, payload: ev.ImageGenerated) -> None:
    request = demand.requests.get(payload.job_id)
    total = payload.timings_ms.get("total")
    if request is None or total is None:  # not requested in this log, or no timings
        return
    run_s = max(0.0, total - payload.timings_ms.get("load", 0.0)) / 1000
    demand.run_s.setdefault(request.model_id, deque(maxlen=RUN_SAMPLES)).append(run_s)
    size = demand.run_size.setdefault(request.model_id, deque(maxlen=RUN_SAMPLES))
    size.append(step_mp(request.steps, request.megapixels))


def step_mp(steps: int, megapixels: float) -> float:
    """A request's size for run time estimates: steps x megapixels (images included), with at
    least 0.01 MP (a tiny image still costs the fixed work of a step)."""
    return steps * max(megapixels, 0.01)


def run_s_per_step_mp(demand: Demand, model_id: str) -> float:
    """Measured seconds per step and megapixel of ``model_id``'s recent images; 0: none yet."""
    runs, sizes = demand.run_s.get(model_id), demand.run_size.get(model_id)
    if not runs or not sizes or sum(sizes) <= 0:
        return 0.0
    return sum(runs) / sum(sizes)


def mean_run_s(demand: Demand, model_id: str) -> float:
    """Mean run time (seconds, load excluded) of ``model_id``'s recent images; 0: none yet."""
    runs = demand.run_s.get(model_id)
    return sum(runs) / len(runs) if runs else 0.0


def _over(demand: Demand, job_id: str) -> None:
    demand.over.add(job_id)
    demand.requests.pop(job_id, None)
    demand.assigned.pop(job_id, None)
    demand.failed.pop(job_id, None)


def _arrive(demand: Demand, at: float, model_id: str) -> None:
    demand.arrivals.append((at, model_id))
    if len(demand.arrivals) > 1 and demand.arrivals[-2][0] > at:  # replay out of order
        demand.arrivals = deque(sorted(demand.arrivals))
    while demand.arrivals and demand.arrivals[0][0] < at - 7 * DAY_S:  # a week teaches hours
        demand.arrivals.popleft()


def queued(demand: Demand) -> dict[str, Requested]:
    """Jobs waiting for a worker: requested, not over, and no assignment in force (never
    assigned, or the latest one failed, paused or was revoked)."""
    return {
        job_id: r
        for job_id, r in demand.requests.items()
        if job_id not in demand.over
        and demand.assigned.get(job_id, 0) <= demand.failed.get(job_id, 0)
    }


def loads_under_way(demand: Demand, now: float, timeout_s: float) -> list[Pending]:
    """Loads asked for, not answered, and younger than ``timeout_s``."""
    return [p for p in demand.pending.values() if now - p.at <= timeout_s]


def evictions_under_way(demand: Demand, now: float, timeout_s: float) -> list[Pending]:
    """Evictions asked for, not answered, and younger than ``timeout_s``."""
    return [p for p in demand.evicting.values() if now - p.at <= timeout_s]


def uses_24h(demand: Demand, worker_id: str, model_id: str, now: float) -> tuple[float, int]:
    """(last use, uses in the 24 h before ``now``) of ``model_id`` on ``worker_id``."""
    uses = demand.uses.get((worker_id, model_id), ())
    recent = [t for t in uses if t > now - DAY_S]
    return (max(uses) if uses else 0.0, len(recent))

"""Warm pool policy (issue 13): tiers, eviction score, predictive preloading, cold-start storms
and the autoscaling signal. Pure: plain values in, decisions out; inputs are never mutated.

Shared by the pool-manager and the fleet simulator (``tools/fleet-sim``, ``--pool ours``), so the
simulator measures the policy the service runs. ADR 0701 records the choices and the figures.

Tiers (the seed design, "Warm Pool Architecture"):

- **Tier 1** is pinned: a tier-1 model is never evicted from the workers that hold it for the
  per-model minimum (``PoolConfig.tier1_min_workers``, chosen by :func:`pin_targets`); a copy
  beyond the minimum scores -1000 and goes last.
- **Tier 2** is kept by score (LRU weighted by priority: -100).
- **Tier 3** (the default for anything unlisted) loads on demand.

Times are seconds on one clock (unix time in the service, simulated time in the simulator);
sizes are in one unit (GB, bytes) chosen by the caller.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

TIER_PINNED, TIER_FREQUENT, TIER_ON_DEMAND = 1, 2, 3
HOUR_S = 3600.0
DAY_S = 24 * HOUR_S


@dataclass(frozen=True, slots=True)
class PoolConfig:
    """Knobs of the pool policy (ADR 0701 says how each was chosen)."""

    tier1_min_workers: int = 10  # workers that keep each tier-1 model pinned
    # a worker may pin a model only if the model takes at most this share of its budget (an A10G
    # pinning SDXL would have 6.5 of 20 GB left for every other job)
    pin_max_budget_share: float = 0.25
    preload_top: int = 5  # the seed's "top 5 predicted"
    demand_window_s: float = HOUR_S  # "requests of the last 60 minutes"
    demand_horizon_s: float = 1800.0  # the seed's time_window_minutes=30: the window predicted
    # quiet: at most this many queued jobs per accepting worker, and at least one idle worker
    quiet_queue_per_worker: float = 0.5
    storm_min_queue: int = 8  # a model needs this many queued jobs to be a storm
    storm_cold_ratio: float = 0.5  # storm while holders < this x its fair share of the workers
    storm_max_parallel: int = 8  # parallel storm preloads per model and round
    # a storm needs a queue its holders cannot drain within its most urgent job's wait target
    storm_wait_targets_s: Mapping[str, float] = field(
        default_factory=lambda: {"turbo": 15.0, "fast": 60.0, "relax": 300.0}
    )
    # a predictive preload is wanted while the holders are fewer than the predicted work needs
    # at this utilisation (models whose ``work_s`` is known)
    preload_utilisation: float = 0.85
    # scheduled defragmentation (live only: the simulator has no allocator): an idle worker
    # whose largest free block is under 70% of its free memory (the seed's "fragmentation ratio
    # < 0.7"; our heartbeat's ratio is 1 - that, so >= 0.3), at most once per ``defrag_every_s``
    defrag_ratio: float = 0.3
    defrag_every_s: float = 600.0


class Resident(NamedTuple):
    """One model or adapter loaded on a worker (a worker's cache entry)."""

    name: str
    size: float
    last_used: float  # when a job last used it (or it was loaded)
    uses_24h: int = 0  # jobs that used it on this worker in the last 24 h


@dataclass(frozen=True, slots=True)
class WorkerState:
    """What the pool policy knows of one worker."""

    worker_id: str
    pool: str  # its GPU class (one capability set and memory size), e.g. "A100-80GB"
    capabilities: frozenset[str]  # model families it can run
    budget: float  # memory for weights and activations
    resident: tuple[Resident, ...]  # least recently used first
    idle: bool  # accepting, running nothing, loading nothing
    pinned: frozenset[str] = frozenset()  # tier-1 models it keeps for the minimum
    speed: float = 1.0  # relative throughput (denoising seconds of a speed-1.0 GPU per second)
    # what a job may use: the budget less the worker's margin (None: the whole budget). A job
    # runs only once what stays beside it fits here, so weights above it are unloaded by the
    # next job (the worker's admission, ADR 0708)
    usable: float | None = None

    @property
    def free(self) -> float:
        return self.budget - sum(item.size for item in self.resident)

    @property
    def free_for_jobs(self) -> float:
        """What is left of ``usable`` beside the resident weights (may be negative)."""
        usable = self.budget if self.usable is None else self.usable
        return usable - sum(item.size for item in self.resident)

    def holds(self, name: str) -> bool:
        return any(item.name == name for item in self.resident)


@dataclass(frozen=True, slots=True)
class ModelInfo:
    model_id: str
    family: str  # capability a worker needs to run it
    size: float  # resident weights
    tier: int = TIER_ON_DEMAND
    work_s: float = 0.0  # mean denoising seconds of one request on a speed-1.0 GPU; 0: unknown


@dataclass(frozen=True, slots=True)
class QueuedWork:
    """One queued job as the pool sees it."""

    model_id: str
    tier: str  # service tier: "turbo", "fast", "relax"
    work_s: float  # denoising seconds on a speed-1.0 GPU
    waited_s: float  # time queued so far
    pool: str  # the pool that should serve it (the smallest GPU class it fits)


class Load(NamedTuple):
    """A load command: make ``model_id`` resident on ``worker_id``."""

    worker_id: str
    model_id: str
    reason: str  # "predictive" or "storm"


@dataclass(frozen=True, slots=True)
class StormPlan:
    loads: tuple[Load, ...]
    promoted: frozenset[str]  # models whose queued jobs the scheduler should serve first


class Evict(NamedTuple):
    """An eviction command: unload ``model_id`` from ``worker_id`` (and drop its pin)."""

    worker_id: str
    model_id: str
    reason: str  # "unpin"


@dataclass(frozen=True, slots=True)
class MemoryReading:
    """A worker's device memory as its newest heartbeat reports it, and the pool's last
    ``DefragmentMemory`` for it."""

    fragmentation: float | None  # 1 - largest free block / free memory; None: not measured
    last_defrag: float | None = None  # when the pool last asked it to defragment; None: never


def tier_of(name: str, tiers: Mapping[str, int]) -> int:
    """A model's or adapter's tier; anything not listed is tier 3 (on demand)."""
    return tiers.get(name, TIER_ON_DEMAND)


# --- eviction ---------------------------------------------------------------------------------


def eviction_score(item: Resident, *, tier: int, queued: int, now: float) -> float:
    """The seed's ``eviction_score``; higher = evict first.

    hours idle x 10 (fractional hours), - uses in the last 24 h x 5, - 1000 for tier 1,
    - 100 for tier 2, - queued requests for it x 20.
    """
    score = 0.0
    hours_idle = max(0.0, now - item.last_used) / HOUR_S
    score += hours_idle * 10
    score -= item.uses_24h * 5
    if tier == TIER_PINNED:
        score -= 1000
    elif tier == TIER_FREQUENT:
        score -= 100
    score -= queued * 20
    return score


def pick_victims(
    resident: Sequence[Resident],
    keep: Collection[str],
    need: float,
    budget: float,
    *,
    now: float,
    tiers: Mapping[str, int],
    queued: Mapping[str, int],
    pinned: Collection[str] = (),
) -> list[str] | None:
    """Items to unload so that a job needing ``need`` fits in ``budget``, highest eviction score
    first; the contract of ``imagegen_runtime.residency.evictions``.

    ``resident``: least recently used first (breaks ties of score). ``keep``: what the job uses
    (part of ``need``, never returned). ``pinned``: tier-1 models this worker holds for the
    minimum: never returned, and their memory is not available. Returns None when the job
    cannot fit with everything else unloaded. After walking the score order until the job fits,
    victims that still fit beside it are given back, lowest score first (only what must go, as
    ADR 0110), so nothing is unloaded for nothing.
    """
    fixed = sum(item.size for item in resident if item.name in pinned and item.name not in keep)
    if need + fixed > budget:
        return None
    others = [item for item in resident if item.name not in keep and item.name not in pinned]
    held = sum(item.size for item in others)
    order = sorted(
        range(len(others)),
        key=lambda i: -eviction_score(
            others[i],
            tier=tier_of(others[i].name, tiers),
            queued=queued.get(others[i].name, 0),
            now=now,
        ),
    )  # stable: equal scores keep least recently used first
    victims: list[Resident] = []
    for i in order:
        if need + fixed + held <= budget:
            break
        victims.append(others[i])
        held -= others[i].size
    stays: set[str] = set()
    for item in reversed(victims):  # give back the most protected first
        if need + fixed + held + item.size <= budget:
            held += item.size
            stays.add(item.name)
    return [item.name for item in victims if item.name not in stays]


def pin_targets(
    workers: Sequence[WorkerState], models: Mapping[str, ModelInfo], config: PoolConfig
) -> dict[str, frozenset[str]]:
    """Which workers pin which tier-1 models: ``tier1_min_workers`` per model (fewer if the fleet
    has fewer eligible workers). Eligible: it can run the model and the model takes at most
    ``pin_max_budget_share`` of its budget. Workers that already pin or hold it come first, then
    the largest budgets, then by id (stable across calls). Returns worker id -> pinned models
    (workers without pins left out)."""
    pins: dict[str, set[str]] = {}
    for model in sorted(models.values(), key=lambda m: m.model_id):
        if model.tier != TIER_PINNED:
            continue
        eligible = [
            w
            for w in workers
            if model.family in w.capabilities
            and model.size <= config.pin_max_budget_share * w.budget
        ]
        eligible.sort(
            key=lambda w: (
                model.model_id not in w.pinned,
                not w.holds(model.model_id),
                -w.budget,
                w.worker_id,
            )
        )
        for worker in eligible[: config.tier1_min_workers]:
            pins.setdefault(worker.worker_id, set()).add(model.model_id)
    return {w: frozenset(names) for w, names in pins.items()}


def pins_to_release(
    held: Mapping[str, Collection[str]],
    targets: Mapping[str, frozenset[str]],
    models: Mapping[str, ModelInfo],
) -> list[Evict]:
    """The pins workers hold that :func:`pin_targets` no longer gives them, as evictions (an
    ``EvictModel`` is how a worker drops a pin, ADR 0711). ``held``: worker -> the models its
    heartbeat lists as pinned. A surplus pin arises when a worker declared lost comes back after
    another took its pin, when a model leaves tier 1 or the registry, or when a worker can no
    longer hold it. A pin of a tier-1 model is released only once every worker the targets give
    it already holds its pin, so the model is never pinned on fewer workers than the minimum
    while a new pin loads. Sorted by worker, then model."""
    pinning: dict[str, set[str]] = {}  # model -> workers that pin it now
    for worker_id, names in held.items():
        for name in names:
            pinning.setdefault(name, set()).add(worker_id)
    wanted: dict[str, set[str]] = {}  # model -> workers the targets give it
    for worker_id, names in targets.items():
        for name in names:
            wanted.setdefault(name, set()).add(worker_id)
    out = []
    for worker_id in sorted(held):
        for name in sorted(held[worker_id]):
            if name in targets.get(worker_id, frozenset()):
                continue
            model = models.get(name)
            still_tier_1 = model is not None and model.tier == TIER_PINNED
            if still_tier_1 and not wanted.get(name, set()) <= pinning.get(name, set()):
                continue  # its new pin is not held yet: keep this one meanwhile
            out.append(Evict(worker_id, name, "unpin"))
    return out


def defrag_plan(
    workers: Sequence[WorkerState],
    readings: Mapping[str, MemoryReading],
    now: float,
    config: PoolConfig,
) -> list[str]:
    """Scheduled defragmentation (the seed's "fragmentation ratio < 0.7 -> scheduled
    defragmentation"): the idle workers whose memory is fragmented (ratio >= ``defrag_ratio``)
    and that the pool has not asked to defragment in the last ``defrag_every_s``. A worker
    that does not measure fragmentation (CPU) is never asked. Sorted by id."""
    out = []
    for w in sorted(workers, key=lambda w: w.worker_id):
        reading = readings.get(w.worker_id)
        if not w.idle or reading is None or reading.fragmentation is None:
            continue
        if reading.fragmentation < config.defrag_ratio:
            continue
        if reading.last_defrag is not None and now - reading.last_defrag < config.defrag_every_s:
            continue
        out.append(w.worker_id)
    return out


# --- predictive preloading --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class HourlyWeights:
    """Per-model arrivals per hour of day, learned from a log (:func:`learn_hourly_weights`)."""

    per_hour: Mapping[str, tuple[float, ...]]  # model -> 24 mean arrivals per hour of day
    smoothing: float = 1.0  # arrivals added to both hours of a ratio (an unseen hour is not 0)

    def weight(self, model_id: str, recent_at: float, predicted_at: float) -> float:
        """The time-of-day factor from the recent window (centred on ``recent_at``) to the
        predicted one: the model's learned rate in the hour of ``predicted_at`` over its rate
        in the hour of ``recent_at``. 1.0 for a model the log never saw."""
        rates = self.per_hour.get(model_id)
        if rates is None:
            return 1.0
        to = rates[_hour(predicted_at)] + self.smoothing
        since = rates[_hour(recent_at)] + self.smoothing
        return to / since


def _hour(t: float) -> int:
    return int((t % DAY_S) // HOUR_S)


def learn_hourly_weights(arrivals: Iterable[tuple[float, str]]) -> HourlyWeights:
    """Mean arrivals per model and hour of day from past ``(time, model)`` arrivals (times in
    seconds; the hour of day is ``time mod 24 h``). Days are counted from the log's span."""
    counts: dict[str, list[int]] = {}
    first = last = None
    for at, model_id in arrivals:
        counts.setdefault(model_id, [0] * 24)[_hour(at)] += 1
        first = at if first is None else min(first, at)
        last = at if last is None else max(last, at)
    if first is None or last is None:
        return HourlyWeights({})
    days = max(1, math.ceil((last - first + 1) / DAY_S))
    return HourlyWeights({m: tuple(c / days for c in hours) for m, hours in counts.items()})


def predict_demand(
    recent: Iterable[tuple[float, str]],
    now: float,
    weights: HourlyWeights,
    config: PoolConfig | None = None,
) -> list[tuple[str, float]]:
    """The seed's ``predict_demand``: requests per model in the last ``demand_window_s`` times
    the learned time-of-day weight for the next ``demand_horizon_s``; highest first (ties by
    name). Models with no recent request are not predicted (as in the seed)."""
    config = config or PoolConfig()
    since = now - config.demand_window_s
    counts: dict[str, int] = {}
    for at, model_id in recent:
        if since < at <= now:
            counts[model_id] = counts.get(model_id, 0) + 1
    recent_at = now - config.demand_window_s / 2
    predicted_at = now + config.demand_horizon_s / 2
    predictions = [(m, n * weights.weight(m, recent_at, predicted_at)) for m, n in counts.items()]
    return sorted(predictions, key=lambda p: (-p[1], p[0]))


def is_quiet(
    queued_jobs: int, accepting_workers: int, idle_workers: int, config: PoolConfig
) -> bool:
    """Quiet period: the queue holds at most ``quiet_queue_per_worker`` jobs per accepting worker
    and some worker is idle (preloading then costs no job a wait)."""
    return idle_workers > 0 and queued_jobs <= config.quiet_queue_per_worker * accepting_workers


def preload_plan(
    workers: Sequence[WorkerState],
    models: Mapping[str, ModelInfo],
    demand: Sequence[tuple[str, float]],
    *,
    queued_jobs: int,
    loading: Mapping[str, int] | None = None,
    config: PoolConfig | None = None,
) -> list[Load]:
    """The seed's ``preload_models``: in a quiet period, for each of the top ``preload_top``
    predicted models that should be preloaded, one load onto an idle worker that lacks it.

    ``should_preload``: the model's holders (``loading`` counts loads under way) are fewer than
    its share of the predicted demand times the workers that can run it and, for a model whose
    ``work_s`` is known, fewer than the workers its predicted work needs
    (:func:`holders_needed`): a model already warm on enough workers for its demand gets no
    preload. Target
    (``select_best_preload_target``): an idle worker that can run it and has room for it in
    free memory (a predictive preload never evicts anything), the most free memory first, then
    by id. A worker gets at most one load per call."""
    config = config or PoolConfig()
    loading = loading or {}
    idle = [w for w in workers if w.idle]
    accepting = len(workers)
    if not is_quiet(queued_jobs, accepting, len(idle), config):
        return []
    top = [(m, d) for m, d in demand if m in models and d > 0][: config.preload_top]
    total = sum(d for _, d in top)
    taken: set[str] = set()
    loads: list[Load] = []
    for model_id, predicted in top:
        model = models[model_id]
        capable = [w for w in workers if model.family in w.capabilities]
        holders = sum(1 for w in capable if w.holds(model_id)) + loading.get(model_id, 0)
        wanted = math.ceil(predicted / total * len(capable))
        if model.work_s > 0:
            wanted = min(wanted, holders_needed(model, predicted, capable, config))
        if holders >= wanted:
            continue
        targets = [
            w
            for w in idle
            if w.worker_id not in taken
            and model.family in w.capabilities
            and not w.holds(model_id)
            and w.free_for_jobs >= model.size
        ]
        if not targets:
            continue
        best = min(targets, key=lambda w: (-w.free, w.worker_id))
        taken.add(best.worker_id)
        loads.append(Load(best.worker_id, model_id, "predictive"))
    return loads


def holders_needed(
    model: ModelInfo, predicted: float, capable: Sequence[WorkerState], config: PoolConfig
) -> int:
    """Workers the predicted demand for ``model`` keeps busy: ``predicted`` requests per
    ``demand_window_s`` x ``work_s`` over the capable workers' mean speed, at
    ``preload_utilisation``; at least 1."""
    if not capable:
        return 1
    speed = sum(w.speed for w in capable) / len(capable)
    busy = predicted / config.demand_window_s * model.work_s / speed
    return max(1, math.ceil(busy / config.preload_utilisation - 1e-9))


# --- cold-start storm -------------------------------------------------------------------------


def storm_plan(
    workers: Sequence[WorkerState],
    models: Mapping[str, ModelInfo],
    queue: Sequence[QueuedWork],
    *,
    now: float,
    tiers: Mapping[str, int] | None = None,
    queued_uses: Mapping[str, int] | None = None,
    loading: Mapping[str, int] | None = None,
    config: PoolConfig | None = None,
) -> StormPlan:
    """Parallel preloads for models whose queue spiked while few workers hold them.

    A model's fair share is its share of the queued work times the workers that can run it. It
    is in a storm when it has at least ``storm_min_queue`` queued jobs, fewer holders (loads
    under way included) than ``storm_cold_ratio`` x its fair share, and more queued work than
    its holders can drain within the wait target of its most urgent queued job
    (``storm_wait_targets_s``; a load under way counts at the capable workers' mean speed): a
    queue its holders will serve in time needs no load. It then gets
    ``ceil(storm_cold_ratio x fair share) - holders`` loads (at most ``storm_max_parallel``),
    proportional to its queued work, onto idle workers that can run it, most free memory first;
    a storm load may evict (by :func:`pick_victims`, never a pinned model). Storm models are
    returned as ``promoted``, largest queued work first in ``loads``."""
    config = config or PoolConfig()
    tiers, queued_uses, loading = tiers or {}, queued_uses or {}, loading or {}
    work: dict[str, float] = {}
    count: dict[str, int] = {}
    target: dict[str, float] = {}
    for job in queue:
        work[job.model_id] = work.get(job.model_id, 0.0) + job.work_s
        count[job.model_id] = count.get(job.model_id, 0) + 1
        wait = config.storm_wait_targets_s.get(job.tier, max(config.storm_wait_targets_s.values()))
        target[job.model_id] = min(target.get(job.model_id, math.inf), wait)
    total = sum(work.values())
    if total <= 0:
        return StormPlan((), frozenset())
    taken: set[str] = set()
    loads: list[Load] = []
    promoted: set[str] = set()
    for model_id in sorted(work, key=lambda m: (-work[m], m)):
        model = models.get(model_id)
        if model is None or count[model_id] < config.storm_min_queue:
            continue
        capable = [w for w in workers if model.family in w.capabilities]
        fair = work[model_id] / total * len(capable)
        holding = [w for w in capable if w.holds(model_id)]
        holders = len(holding) + loading.get(model_id, 0)
        if holders >= config.storm_cold_ratio * fair:
            continue
        mean_speed = sum(w.speed for w in capable) / len(capable) if capable else 1.0
        speed = sum(w.speed for w in holding) + loading.get(model_id, 0) * mean_speed
        if speed > 0 and work[model_id] / speed <= target[model_id]:
            continue  # its holders drain the queue within its most urgent job's target
        promoted.add(model_id)
        wanted = min(math.ceil(config.storm_cold_ratio * fair) - holders, config.storm_max_parallel)
        targets = [
            w
            for w in capable
            if w.idle
            and w.worker_id not in taken
            and not w.holds(model_id)
            and pick_victims(
                w.resident,
                (),
                model.size,
                w.budget,
                now=now,
                tiers=tiers,
                queued=queued_uses,
                pinned=w.pinned,
            )
            is not None
        ]
        targets.sort(key=lambda w: (-w.free, w.worker_id))
        for worker in targets[: max(0, wanted)]:
            taken.add(worker.worker_id)
            loads.append(Load(worker.worker_id, model_id, "storm"))
    return StormPlan(tuple(loads), frozenset(promoted))


def pool_round(
    workers: Sequence[WorkerState],
    models: Mapping[str, ModelInfo],
    queue: Sequence[QueuedWork],
    demand: Sequence[tuple[str, float]] | None,
    *,
    now: float,
    queued_jobs: int,
    tiers: Mapping[str, int] | None = None,
    queued_uses: Mapping[str, int] | None = None,
    loading: Mapping[str, int] | None = None,
    config: PoolConfig | None = None,
) -> StormPlan:
    """One round of the pool's loads, as the pool-manager and the simulator both run it: storm
    loads first (priority promotion: a storm model gets its workers before any prediction),
    then, with ``demand`` given (``None``: preloading off), predictive preloads onto the idle
    workers no storm load took. Returns the loads in that order and the storm's ``promoted``."""
    storm = storm_plan(
        workers,
        models,
        queue,
        now=now,
        tiers=tiers,
        queued_uses=queued_uses,
        loading=loading,
        config=config,
    )
    if demand is None:
        return storm
    taken = {load.worker_id for load in storm.loads}
    preloads = preload_plan(
        [w for w in workers if w.worker_id not in taken],
        models,
        demand,
        queued_jobs=queued_jobs,
        loading=loading,
        config=config,
    )
    return StormPlan(storm.loads + tuple(preloads), storm.promoted)


# --- autoscaling ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PoolLoad:
    """One pool (GPU class) now."""

    workers: int  # accepting workers
    busy: int  # of them running or loading
    speed: float = 1.0  # relative throughput of its GPUs


@dataclass(frozen=True, slots=True)
class AutoscaleConfig:
    wait_targets_s: Mapping[str, float] = field(
        default_factory=lambda: {"turbo": 15.0, "fast": 60.0, "relax": 300.0}
    )
    utilisation: float = 0.85
    min_workers: int = 1


def desired_workers(
    pools: Mapping[str, PoolLoad],
    queue: Sequence[QueuedWork],
    config: AutoscaleConfig | None = None,
) -> dict[str, int]:
    """Workers each pool should have (the autoscaling signal).

    desired = max(min_workers, ceil(busy / utilisation + sum over its queued jobs of
    work_s / speed / target_tier x max(1, waited_s / target_tier)))

    Each queued job asks for the GPU share that would finish it within its tier's wait target
    (a 9 s relax job: 0.03 GPU), scaled up by how far past the target it has already waited;
    busy workers are kept with the utilisation headroom. Grows with queue depth and with
    waits; with an empty queue it is the busy workers plus headroom (scale-in)."""
    config = config or AutoscaleConfig()
    need: dict[str, float] = {name: 0.0 for name in pools}
    for job in queue:
        pool = pools.get(job.pool)
        if pool is None:
            continue
        target = config.wait_targets_s.get(job.tier, 300.0)
        need[job.pool] += job.work_s / pool.speed / target * max(1.0, job.waited_s / target)
    return {
        name: max(
            config.min_workers,
            math.ceil(pool.busy / config.utilisation + need[name] - 1e-9),  # float noise
        )
        for name, pool in pools.items()
    }

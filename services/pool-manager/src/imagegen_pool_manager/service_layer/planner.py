"""The warm pool, live: the pool policy (``domain/policy.py``) run on the fleet projection and
the demand folded from the log, its loads sent as ``LoadModel`` commands (ADR 0701, 0703).

Every ``plan_every_s`` once caught up with the log:

1. the workers as the policy sees them: each live worker's pool (its GPU class: device and
   memory), families, memory budget (what its heartbeat reports as total), resident models with
   their sizes, last use and uses in 24 h, whether it is idle (accepting, running nothing, no
   load under way), and the tier-1 models it pins;
2. loads: pins, then one round of ``policy.pool_round`` (as the simulator runs it): cold-start
   storm preloads first (priority promotion: a storm model takes its workers before any
   prediction; ``imagegen_pool_storm{model}`` is 1 while it lasts), then predictive preloads in
   quiet periods (top 5 predicted models, onto the idle workers no storm load took, while fewer
   workers hold a model than its predicted work needs: each model's ``work_s`` is the mean run
   time of its recent images, as the log reports them); a (worker, model) with a load under way
   is never asked again. A pin is a ``LoadModel`` with ``pin`` (ADR 0711), asked when the
   pinning worker does not hold the tier-1 model, or holds it and its newest heartbeat does not
   list it in ``pinned`` -- unless a pin command for it was answered (``ModelLoaded``) no more
   than one heartbeat interval before that heartbeat, which may predate the pin (a heartbeat
   clearly newer that lacks it: the worker restarted and lost the pin). Each load is one
   ``LoadModel`` on ``imagegen.pool.commands``; the worker answers ``ModelLoaded``
   (``source`` resident for a pin on a model it holds) or ``ModelLoadFailed`` naming the
   command. The commands and answers are in the log, so a restarted pool-manager replays them
   and sends no duplicate;
3. upkeep (ADR 0714): an ``EvictModel`` (reason ``unpin``) for each pin a worker holds that
   the pin rule no longer gives it (``policy.pins_to_release``: a worker back after being
   declared lost while another took its pin, a model no longer tier 1 or no longer
   registered), once the pin's new holders hold it; and a ``DefragmentMemory`` for each idle
   worker whose heartbeat reports its memory fragmented (``policy.defrag_plan``: ratio >= 0.3,
   the seed's "largest free block under 70% of free memory", at most once in 10 minutes per
   worker). An eviction under way, or answered no more than one heartbeat interval before the
   worker's newest heartbeat, is not asked again; both commands are in the log, so a
   restarted pool-manager knows them too;
4. the autoscaling signal: desired workers per pool, exported as the gauge
   ``imagegen_pool_desired_workers{pool}`` and published as ``AutoscaleRecommended`` when it
   or the pool's live workers change (ADR 0716). It speaks for the pool of every worker heard
   from within ``autoscale_pool_window_s`` (900 s), lost ones too, so a pool whose workers all
   crashed is asked for again while its jobs wait; each queued job counts in the smallest pool
   whose memory less the margin holds its model's weights. A pool no such worker belongs to any
   more is withdrawn: its series removed, a last signal of 0.

Eviction to make room stays with the workers ("LRU, only what must go"): the simulator
measured the seed's score as worse at peak (ADR 0701), so the pool sends ``EvictModel`` only to
release pins.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass, replace

from prometheus_client import Counter, Gauge

from imagegen_runtime import budget
from imagegen_runtime.publishing import Publisher
from imagegen_schemas.workers import (
    AutoscaleRecommended,
    DefragmentMemory,
    EvictModel,
    LoadModel,
    WorkerStatus,
)

from ..domain import policy
from ..domain.demand import (
    Demand,
    Requested,
    evictions_under_way,
    fold_demand,
    loads_under_way,
    mean_run_s,
    queued,
    run_s_per_step_mp,
    step_mp,
    uses_24h,
)
from ..domain.fleet import Fleet, resident

log = logging.getLogger(__name__)

DESIRED = Gauge(
    "imagegen_pool_desired_workers",
    "Workers each pool should have now (the autoscaling signal), from queue depth and waits.",
    ["pool"],
)
LOADS_SENT = Gauge("imagegen_pool_loads_under_way", "LoadModel commands sent and not yet answered.")
COMMANDS_SENT = Counter(
    "imagegen_pool_commands_sent_total",
    "Pool commands the pool-manager published, by command and reason.",
    ["command", "reason"],
)
STORM = Gauge(
    "imagegen_pool_storm",
    "1 while a model is in a cold-start storm (its loads go before any prediction), else 0.",
    ["model"],
)
GIB = float(1 << 30)


@dataclass(frozen=True)
class Round:
    """What one planning round asks of the workers."""

    loads: list[policy.Load]
    evictions: list[policy.Evict]
    defrags: list[tuple[str, float]]  # (worker, its fragmentation ratio)


@dataclass(frozen=True)
class PlannerConfig:
    plan_every_s: float = 5.0
    load_timeout_s: float = 120.0  # a load unanswered this long may be asked again
    # denoising seconds per step per megapixel: a queued job's work until its model has images
    step_s: float = 0.05
    policy: policy.PoolConfig = policy.PoolConfig(tier1_min_workers=1)
    # the autoscaling signal covers the pools of the workers heard from within this window, lost
    # ones too (a pool whose workers all crashed is asked for again); the scheduler admits jobs
    # against the workers of the same window (admission_fleet_window_s, ADR 0715)
    autoscale_pool_window_s: float = 900.0
    # a worker is planned on only while its newest heartbeat is at most this old (the loss
    # timeout): after a restart the log still holds heartbeats of workers long gone, which the
    # loss rule gives a timeout from the pool-manager's start before declaring them lost
    fresh_s: float = 10.0


@dataclass(frozen=True)
class PoolSeen:
    """A pool (GPU class) as the planner knows it: the memory its workers report (its name
    rounds them alike) and the families they run."""

    pool: str
    budget: float
    capabilities: frozenset[str]


def pool_of(gpu_type: str, memory_total_bytes: int) -> str:
    """A worker's pool: its device and memory, e.g. ``cpu-0.5GiB`` or ``NVIDIA H100-80GiB``."""
    gib = memory_total_bytes / GIB
    size = f"{gib:.1f}" if gib < 10 else f"{math.floor(gib)}"
    return f"{gpu_type}-{size}GiB"


class Planner:
    def __init__(
        self,
        publisher: Publisher,
        fleet: Fleet,
        demand: Demand,
        models: Mapping[str, policy.ModelInfo],
        config: PlannerConfig | None = None,
    ) -> None:
        self.publisher = publisher
        self.fleet = fleet
        self.demand = demand
        self.models = dict(models)
        self.config = config or PlannerConfig()
        self.tiers = {m.model_id: m.tier for m in self.models.values()}
        self._changed: dict[str, tuple[int, int]] = {}  # pool -> (desired, current), changed
        self._signalled: dict[str, tuple[int, int]] = {}  # pool -> (desired, current) last sent
        self._queue_by_pool: dict[str, list[policy.QueuedWork]] = {}
        self.sent = 0  # pool commands published by this process
        self.promoted: frozenset[str] = frozenset()  # models in a storm at the last round

    def workers(
        self,
        now: float,
        loading: set[tuple[str, str]],
        pins_asked: frozenset[tuple[str, str]] = frozenset(),
    ) -> list[policy.WorkerState]:
        """The live workers as the policy sees them (not lost, idle or busy, a heartbeat within
        ``fresh_s``), each with the pins ``pin_targets`` gives it. A pin counts as the worker's
        for that choice once it is asked for (``pins_asked``: a pin load under way) or
        answered, before its heartbeats list it, so a pin does not move to a worker that joins
        meanwhile."""
        out = []
        busy_loading = {w for w, _ in loading}
        for wid, w in sorted(self.fleet.workers.items()):
            hb = w.heartbeat
            if w.lost or hb.status not in (WorkerStatus.IDLE, WorkerStatus.BUSY):
                continue
            if now - w.last_seen > self.config.fresh_s:
                continue  # not heard from lately: a replayed heartbeat of a worker maybe gone
            items = []
            for m in resident(self.fleet, wid):
                last, uses = uses_24h(self.demand, wid, m.model_id, now)
                items.append(policy.Resident(m.model_id, float(m.bytes), last, uses))
            items.sort(key=lambda r: (r.last_used, r.name))  # least recently used first
            running = any(f.worker_id == wid for f in self.fleet.in_flight.values())
            idle = hb.status == WorkerStatus.IDLE and not running and wid not in busy_loading
            out.append(
                policy.WorkerState(
                    worker_id=wid,
                    pool=pool_of(hb.gpu_type, hb.memory_total_bytes),
                    capabilities=frozenset(hb.capabilities),
                    budget=float(hb.memory_total_bytes),
                    resident=tuple(items),
                    idle=idle,
                    # pin_targets keeps pins where they are, or are being made
                    pinned=frozenset(hb.pinned) | self._pins_made(wid, pins_asked),
                    # a job runs within the memory less the margin (ADR 0708)
                    usable=hb.memory_total_bytes * budget.USABLE_FRACTION,
                )
            )
        pins = policy.pin_targets(out, self.sized_models(), self.config.policy)
        return [replace(w, pinned=pins.get(w.worker_id, frozenset())) for w in out]

    def queue(self, now: float, pools: list[PoolSeen]) -> list[policy.QueuedWork]:
        """Queued jobs as the pool sees them, each in the smallest of ``pools`` that can run
        it: its workers run the model's family and a job there may use (the memory less the
        margin, ADR 0708) at least the model's weights, as registered or as a worker measured
        them loaded, whichever is larger. A job no pool can run is left out."""
        models = self.sized_models()
        out = []
        for r in queued(self.demand).values():
            info = models.get(r.model_id)
            if info is None:
                continue
            fits = sorted(
                (p.budget, p.pool)
                for p in pools
                if info.family in p.capabilities and p.budget * budget.USABLE_FRACTION >= info.size
            )
            if not fits:
                continue
            out.append(
                policy.QueuedWork(
                    r.model_id, r.tier, self._work_s(r), max(0.0, now - r.at), fits[0][1]
                )
            )
        return out

    def pools_seen(self, now: float) -> dict[str, PoolSeen]:
        """The pools of the workers heard from within ``autoscale_pool_window_s``, lost or not,
        by name: the pools the autoscaling signal speaks for."""
        out: dict[str, PoolSeen] = {}
        for w in self.fleet.workers.values():
            if now - w.last_seen > self.config.autoscale_pool_window_s:
                continue
            hb = w.heartbeat
            name = pool_of(hb.gpu_type, hb.memory_total_bytes)
            seen = out.get(name)
            caps = frozenset(hb.capabilities) | (seen.capabilities if seen else frozenset())
            out[name] = PoolSeen(name, float(hb.memory_total_bytes), caps)
        return out

    def _work_s(self, r: Requested) -> float:
        """A queued job's work: its steps x megapixels at its model's measured seconds per step
        and megapixel (``run_s_per_step_mp``), or at ``step_s`` until the model has an image."""
        rate = run_s_per_step_mp(self.demand, r.model_id) or self.config.step_s
        return rate * step_mp(r.steps, r.megapixels)

    def plan(self, now: float) -> Round:
        """The commands to send now: loads (none already under way, pins first), evictions
        that release pins, defragmentations."""
        cfg = self.config
        under_way = loads_under_way(self.demand, now, cfg.load_timeout_s)
        loading_pairs = {(p.worker_id, p.model_id) for p in under_way}
        loading: dict[str, int] = {}
        for _, model_id in loading_pairs:
            loading[model_id] = loading.get(model_id, 0) + 1
        pins_asked = frozenset((p.worker_id, p.model_id) for p in under_way if p.pin)
        workers = self.workers(now, loading_pairs, pins_asked)
        live = {w.pool: PoolSeen(w.pool, w.budget, w.capabilities) for w in workers}
        queue = self.queue(now, list(live.values()))
        loads: list[policy.Load] = []
        for w in workers:
            for model_id in sorted(w.pinned):
                if not w.holds(model_id) or not self._pinned_there(w.worker_id, model_id):
                    loads.append(policy.Load(w.worker_id, model_id, "pin"))
        weights = policy.learn_hourly_weights(self.demand.arrivals)
        demand = policy.predict_demand(self.demand.arrivals, now, weights, cfg.policy)
        planned = policy.pool_round(
            workers,
            self.measured_models(),
            queue,
            demand,
            now=now,
            queued_jobs=len(queue),
            tiers=self.tiers,
            loading=loading,
            config=cfg.policy,
        )
        loads += planned.loads
        self._storm(planned.promoted, queue)
        self._autoscale(now, workers)
        seen: set[tuple[str, str]] = set()
        fresh = []
        for load in loads:
            pair = (load.worker_id, load.model_id)
            if pair in loading_pairs or pair in seen:
                continue
            seen.add(pair)
            fresh.append(load)
        loaded_now = {load.worker_id for load in fresh}
        readings = {
            w.worker_id: policy.MemoryReading(
                self.fleet.workers[w.worker_id].heartbeat.fragmentation_ratio,
                self.demand.defragmented.get(w.worker_id),
            )
            for w in workers
        }
        defrags = [
            (wid, readings[wid].fragmentation or 0.0)
            for wid in policy.defrag_plan(workers, readings, now, cfg.policy)
            if wid not in loaded_now
        ]
        return Round(fresh, self._releases(now, workers), defrags)

    def _releases(self, now: float, workers: list[policy.WorkerState]) -> list[policy.Evict]:
        """The pins to release by ``EvictModel``, less those asked for already: under way, or
        answered no more than one heartbeat interval before the worker's newest heartbeat
        (which may still list the pin)."""
        held = {w.worker_id: self.fleet.workers[w.worker_id].heartbeat.pinned for w in workers}
        targets = {w.worker_id: w.pinned for w in workers}
        under_way = {
            (p.worker_id, p.model_id)
            for p in evictions_under_way(self.demand, now, self.config.load_timeout_s)
        }
        out = []
        for evict in policy.pins_to_release(held, targets, self.sized_models()):
            pair = (evict.worker_id, evict.model_id)
            worker = self.fleet.workers[evict.worker_id]
            answered_at = self.demand.evictions_answered.get(pair)
            if pair in under_way or (
                answered_at is not None
                and worker.last_seen <= answered_at + worker.heartbeat.interval_s
            ):
                continue
            out.append(evict)
        return out

    def _storm(self, promoted: frozenset[str], queue: list[policy.QueuedWork]) -> None:
        """Export and log the models in a cold-start storm this round (priority promotion:
        their loads went ahead of every prediction)."""
        for model_id in self.promoted - promoted:
            STORM.labels(model_id).set(0)
        for model_id in sorted(promoted - self.promoted):
            log.warning(
                "cold-start storm",
                extra={
                    "model_id": model_id,
                    "queued_jobs": sum(1 for q in queue if q.model_id == model_id),
                },
            )
        for model_id in promoted:
            STORM.labels(model_id).set(1)
        self.promoted = promoted

    def sized_models(self) -> dict[str, policy.ModelInfo]:
        """The registered models, each at the larger of its registered size (its files) and the
        largest size a worker ever reported it at loaded (``Fleet.measured``, from heartbeats'
        ``loaded[].bytes`` and ``ModelLoaded``, kept after an unload, so a worker that restarts
        empty does not make the model look small again): on CPU float16 files load as float32,
        twice their size. The pin rule (a quarter of the memory), a preload's room and the pool
        a queued job asks for read it, as the scheduler routes by it (ADR 0715, 0716)."""
        measured = self.fleet.measured
        return {
            model_id: replace(info, size=measured[model_id])
            if measured.get(model_id, 0.0) > info.size
            else info
            for model_id, info in self.models.items()
        }

    def measured_models(self) -> dict[str, policy.ModelInfo]:
        """The models with ``work_s`` measured: the mean run time of each model's recent images
        (``mean_run_s``; workers report speed 1.0, so seconds on this fleet), as the simulator
        gives the policy each model's mean work. A model with no image yet keeps the registry's
        (0: unknown, the share rule alone)."""
        out = {}
        for model_id, info in self.sized_models().items():
            work = mean_run_s(self.demand, model_id)
            out[model_id] = replace(info, work_s=work) if work > 0 else info
        return out

    def _pins_made(self, worker_id: str, pins_asked: frozenset[tuple[str, str]]) -> set[str]:
        """The pins of ``worker_id`` asked for and under way, or answered and maybe not in its
        heartbeats yet (``_pinned_there``)."""
        asked = {m for w, m in pins_asked if w == worker_id}
        answered = {
            m
            for w, m in self.demand.pins_answered
            if w == worker_id and self._pinned_there(worker_id, m)
        }
        return asked | answered

    def _pinned_there(self, worker_id: str, model_id: str) -> bool:
        """Whether ``model_id`` is pinned on ``worker_id`` as far as the pool knows: its newest
        heartbeat lists it, or a pin command for it was answered no more than one heartbeat
        interval before that heartbeat (which may predate the pin)."""
        worker = self.fleet.workers[worker_id]
        hb = worker.heartbeat
        if model_id in hb.pinned:
            return True
        answered_at = self.demand.pins_answered.get((worker_id, model_id))
        return answered_at is not None and worker.last_seen <= answered_at + hb.interval_s

    def _autoscale(self, now: float, workers: list[policy.WorkerState]) -> None:
        """Desired workers for every pool seen within the window: its live workers (busy ones
        kept with headroom) and the queued jobs it is the smallest pool to run, whether or not
        any of its workers is alive. A pool that no worker heard from within the window
        belongs to any more (scaled away, or a worker back with another memory size) is
        withdrawn: its gauge series removed and a last signal with 0 desired published."""
        seen = self.pools_seen(now)
        pools = {name: policy.PoolLoad(0, 0) for name in seen}
        for w in workers:
            p = pools.get(w.pool, policy.PoolLoad(0, 0))
            pools[w.pool] = policy.PoolLoad(p.workers + 1, p.busy + (0 if w.idle else 1))
        queue = self.queue(now, list(seen.values()))
        desired = policy.desired_workers(pools, queue)
        for pool, n in desired.items():
            DESIRED.labels(pool).set(n)
        now_signals = {pool: (n, pools[pool].workers) for pool, n in desired.items()}
        self._changed = {
            pool: signal
            for pool, signal in now_signals.items()
            if self._signalled.get(pool) != signal  # desired or current workers changed
        }
        for pool in sorted(set(self._signalled) - set(desired)):
            DESIRED.remove(pool)
            self._changed[pool] = (0, 0)
        self._signalled = now_signals
        self._queue_by_pool = {pool: [q for q in queue if q.pool == pool] for pool in desired}

    def _reason(self, pool: str, current: int) -> str:
        window = f"{self.config.autoscale_pool_window_s:.0f} s"
        if pool not in self._signalled:
            return f"withdrawn: no worker heard from in the last {window} belongs to this pool"
        if current == 0:
            return (
                f"no live worker (lost or stopped, heard from within {window}); "
                "queue depth and waits (policy.desired_workers)"
            )
        return "queue depth and waits (policy.desired_workers)"

    async def run_once(self, now: float) -> int:
        """Plan, then publish the commands and any changed autoscaling signal; returns the
        number of commands sent."""
        planned = self.plan(now)
        loads = planned.loads
        for load in loads:
            command = LoadModel(
                worker_id=load.worker_id,
                model_id=load.model_id,
                reason=load.reason,
                pin=load.reason == "pin",
            )
            env = await self.publisher.publish(command, key=load.worker_id)
            # Under way at once; the consumer folds the same command again when it reads it
            # back (same event id: one pending load).
            fold_demand(self.demand, command, now, env.event_id)
            log.info(
                "load asked",
                extra={"worker_id": load.worker_id, "model_id": load.model_id, "why": load.reason},
            )
            COMMANDS_SENT.labels("LoadModel", load.reason).inc()
        for evict in planned.evictions:
            eviction = EvictModel(  # only the pin goes: the warm model stays (ADR 0714)
                worker_id=evict.worker_id,
                model_id=evict.model_id,
                reason=evict.reason,
                keep_resident=True,
            )
            env = await self.publisher.publish(eviction, key=evict.worker_id)
            fold_demand(self.demand, eviction, now, env.event_id)  # under way at once
            COMMANDS_SENT.labels("EvictModel", evict.reason).inc()
            log.info(
                "pin released",
                extra={"worker_id": evict.worker_id, "model_id": evict.model_id},
            )
        for worker_id, ratio in planned.defrags:
            defrag = DefragmentMemory(
                worker_id=worker_id,
                reason=f"fragmentation {ratio:.2f} >= {self.config.policy.defrag_ratio:.2f}",
            )
            env = await self.publisher.publish(defrag, key=worker_id)
            fold_demand(self.demand, defrag, now, env.event_id)
            COMMANDS_SENT.labels("DefragmentMemory", "fragmentation").inc()
            log.info("defragmentation asked", extra={"worker_id": worker_id, "ratio": ratio})
        sent = len(loads) + len(planned.evictions) + len(planned.defrags)
        self.sent += sent
        LOADS_SENT.set(len(loads_under_way(self.demand, now, self.config.load_timeout_s)))
        for pool, (n, current) in sorted(self._changed.items()):
            waiting = self._queue_by_pool.get(pool, [])
            signal = AutoscaleRecommended(
                pool=pool,
                desired_workers=n,
                current_workers=current,
                queued_jobs=len(waiting),
                oldest_wait_s=round(max((q.waited_s for q in waiting), default=0.0), 3),
                reason=self._reason(pool, current),
            )
            await self.publisher.publish(signal, key=pool)
        return sent

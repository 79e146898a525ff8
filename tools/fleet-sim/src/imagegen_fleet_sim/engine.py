"""Discrete-event fleet simulation driving the scheduler's own policy functions.

Each event becomes a domain event folded with ``evolve``; after it, the policy's ``decide`` runs
and every decision is both carried out on the simulated fleet and folded back as its event,
exactly as the scheduler service does with Kafka in between.
"""

from __future__ import annotations

import heapq
import random
from collections import Counter, deque
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace

from imagegen_pool_manager.domain import policy as pool
from imagegen_scheduler.domain import (
    Assign,
    Decision,
    FleetCapabilities,
    JobAssigned,
    JobFinished,
    JobPreempted,
    JobQueued,
    JobRequest,
    ModelCatalog,
    Refused,
    SchedulerConfig,
    SchedulerState,
    Tier,
    WorkerUpdated,
    admit,
    as_event,
    decide,
    denoise_s,
    estimate_waits,
    evolve,
    fifo_decide,
    fits,
    footprint_gb,
    weighted_decide,
    weighted_warm_decide,
)

from .fleet import SimWorker
from .metrics import Counters, JobRecord, SimResult, summarize
from .scenario import SEED_TIERS, Scenario, seed_catalog
from .workload import RequestSampler, arrivals, capacity_jobs_per_s, model_history

Policy = Callable[[SchedulerState, float], list[Decision]]
POLICIES: dict[str, Policy] = {
    "fifo": fifo_decide,
    "weighted": weighted_decide,
    "weighted-warm": weighted_warm_decide,
    "ours": decide,
}
_FINISH, _PAUSED, _ARRIVE, _LOADED = 0, 1, 2, 3
ETA_EVERY_S = 60.0
POOL_EVERY_S = 15.0  # the pool policy's round (storms, predictive preloads)
AUTOSCALE_EVERY_S = 60.0  # samples of the autoscaling signal
POOLS = ("none", "ours")
EVICTIONS = ("score", "lru")
DEFAULT_EVICTION = "lru"  # measured better than the seed's score on seeds 1-10 (ADR 0701)


@dataclass(frozen=True, slots=True)
class PlatformLatency:
    """The platform's own reaction times, measured on a real fleet and replayed (``bench fleet``,
    ADR 0713). Without them the simulated scheduler learns of an arrival and of a finished job at
    the instant they happen; the real one learns of them over Kafka hops and its own loop
    (milliseconds, with a tail of stalls), which is most of a sub-second wait."""

    reaction_s: Sequence[float]  # schedulable -> assigned, for jobs the policy starts on arrival
    turnaround_s: Sequence[float]  # images stored -> the worker's next assignment, work queued


def mean_work_s(sampler: RequestSampler, catalog: ModelCatalog) -> dict[str, float]:
    """Mean denoising seconds of one request per base model on a speed-1.0 GPU, over 3,000
    requests drawn from the scenario's mixes (sizes, batches, ControlNets): the pool's
    ``ModelInfo.work_s``."""
    rng = random.Random(0)
    total: dict[str, float] = {}
    count: Counter[str] = Counter()
    for i in range(3000):
        request = sampler.request(f"w{i}", Tier.RELAX, "u", 0.0, rng)
        work = denoise_s(request, request.steps, 1.0, catalog)
        total[request.model_id] = total.get(request.model_id, 0.0) + work
        count[request.model_id] += 1
    return {m: total[m] / count[m] for m in count}


def pool_config(gpus: int) -> pool.PoolConfig:
    """The pool policy's knobs for a fleet: SDXL base pinned on 10% of the workers (ADR 0701)."""
    return pool.PoolConfig(tier1_min_workers=max(1, round(0.1 * gpus)))


class Simulation:
    def __init__(
        self,
        scenario: Scenario,
        policy: str,
        seed: int,
        config: SchedulerConfig,
        pool_mode: str = "none",
        eviction: str = DEFAULT_EVICTION,
        preload: bool = True,
        perturb: int = 0,
        *,
        guard: bool | None = None,
        catalog: ModelCatalog | None = None,
        tiers: Mapping[str, int] | None = None,
        trace: Sequence[JobRequest] | None = None,
        latency: PlatformLatency | None = None,
        resident: Mapping[str, Sequence[str]] | None = None,
        load_samples: Mapping[str, Sequence[float]] | None = None,
        pool_every_s: float = POOL_EVERY_S,
    ) -> None:
        """``catalog``, ``tiers`` and ``trace`` replay a recorded run (``bench fleet``): its
        models, their warm-pool tiers and its arrivals instead of the scenario's generated ones;
        the fleet then starts idle and empty but for the tier-1 pins (as a live fleet does).
        ``guard``: the scheduler's switch guard (ADR 0712); None: on with the pool (``ours``),
        off without it, as the platform runs them. ``latency``: replay measured reaction times
        (each arrival reaches the scheduler, and each finished worker becomes free, a draw from
        them later; waits still count from the arrival); None: the scheduler reacts at once.
        ``resident``: base models each worker (by id) holds at t = 0 of a replayed run, besides
        its pins (the real fleet's state where the replay starts). ``load_samples``: load times
        measured on a real fleet per model or adapter id, drawn from as they are instead of the
        catalog's ``load_s`` range (``SimWorker``). ``pool_every_s``: how often the pool policy
        plans (a replay uses the live pool-manager's ``plan_every_s``)."""
        self.scenario, self.policy_name, self.policy = scenario, policy, POLICIES[policy]
        self.perturb = perturb
        self.pool_every_s = pool_every_s
        assert pool_mode in POOLS and eviction in EVICTIONS
        self.pool_mode, self.eviction, self.preload_on = pool_mode, eviction, preload
        self.rng = random.Random(seed)
        self.catalog = catalog if catalog is not None else seed_catalog()
        self.tiers: Mapping[str, int] = tiers if tiers is not None else SEED_TIERS
        self.trace = trace
        self.latency = latency
        self.resident_at_start = resident or {}
        self.latency_rng = random.Random(seed * 104729 + 3)  # not the jobs' stream
        self.guard = pool_mode == "ours" if guard is None else guard
        if self.guard != config.guard_switches:
            config = replace(config, guard_switches=self.guard)
        self.state = SchedulerState(config, self.catalog)
        self.end = scenario.hours * 3600
        self.workers: dict[str, SimWorker] = {}
        for gpu, count in scenario.fleet:
            for _ in range(count):
                worker_id = f"gpu-{len(self.workers):03d}-{gpu.name}"
                self.workers[worker_id] = SimWorker(worker_id, gpu, self.catalog, load_samples)
        self.fleet = FleetCapabilities.of(w.view() for w in self.workers.values())
        self.sampler = RequestSampler(scenario, self.catalog)
        self.peak_rate = capacity_jobs_per_s(scenario, self.sampler) * scenario.load_factor
        self.records: dict[str, JobRecord] = {}
        self.counters = Counters()
        self.timeline: list[tuple[float, str, float]] = []
        self.heap: list[tuple[float, int, int, object]] = []
        self.seq = 0
        self.offered_work_s = 0.0
        self.now = 0.0
        self.queued_uses: Counter[str] = Counter()  # queued jobs per model and adapter id
        self.autoscale: dict[str, list[int]] = {g.name: [] for g, _ in scenario.fleet}
        self.shift_first_warm: float | None = None
        self.shift_holders: int | None = None  # workers holding the shifted model at the shift
        self.shift_jobs = [0, 0]  # shifted model's jobs started in 15 min after the shift, warm
        self.preloads: Counter[str] = Counter()
        self.loading: Counter[str] = Counter()  # preloads under way per model
        self.promoted_rounds = 0
        self.pin_overrides = 0  # jobs that could not fit beside a pinned model (see _evict_for)
        if pool_mode == "ours":
            self._pool_setup(seed)

    def _pool_setup(self, seed: int) -> None:
        self.pool_config = pool_config(self.scenario.gpus)
        self.pool_rng = random.Random(seed * 7919 + 17)  # preload times: not the jobs' stream
        work = mean_work_s(self.sampler, self.catalog)
        self.models = {
            m.model_id: pool.ModelInfo(
                m.model_id,
                m.family,
                m.weights_gb,
                pool.tier_of(m.model_id, self.tiers),
                work.get(m.model_id, 0.0),
            )
            for m in self.catalog.models.values()
        }
        clock0 = self.scenario.start_hour * 3600
        history = (  # a replayed run brings no previous day to learn from
            []
            if self.trace is not None
            else model_history(self.scenario, self.peak_rate, self.pool_rng)
        )
        self.weights = pool.learn_hourly_weights((at - 86400.0, m) for at, m in history)
        self.recent: deque[tuple[float, str]] = deque()
        self.clock0 = clock0
        pins = pool.pin_targets(
            [self._pool_view(w) for w in self.workers.values()], self.models, self.pool_config
        )
        for worker in self.workers.values():
            worker.track = True
            worker.evict = self._evict_for(worker)
            if worker.worker_id in pins:
                worker.pin(pins[worker.worker_id])

    def _evict_for(self, worker: SimWorker) -> Callable[..., list[str] | None]:
        if self.eviction == "lru":

            def lru(
                resident: Iterable[tuple[str, float]],
                keep: Collection[str],
                need: float,
                budget: float,
            ) -> list[str] | None:
                items = [pool.Resident(n, s, 0.0) for n, s in resident]
                victims = pool.pick_victims(
                    items, keep, need, budget, now=0.0, tiers={}, queued={}, pinned=worker.pinned
                )  # every score equal: least recently used first, only what must go
                if victims is None and worker.pinned:
                    self.pin_overrides += 1
                    victims = pool.pick_victims(
                        items, keep, need, budget, now=0.0, tiers={}, queued={}
                    )
                return victims

            return lru

        def score(
            resident: Iterable[tuple[str, float]],
            keep: Collection[str],
            need: float,
            budget: float,
        ) -> list[str] | None:
            now = self.now
            items = [
                pool.Resident(n, s, worker.last_used.get(n, now), worker.uses_24h(n, now))
                for n, s in resident
            ]
            victims = pool.pick_victims(
                items,
                keep,
                need,
                budget,
                now=now,
                tiers=self.tiers,
                queued=self.queued_uses,
                pinned=worker.pinned,
            )
            if victims is None and worker.pinned:
                # the scheduler does not know the pins (its view keeps the full budget, so as not
                # to split the A100 class): a job that cannot fit beside the pin unpins it
                self.pin_overrides += 1
                victims = pool.pick_victims(
                    items, keep, need, budget, now=now, tiers=self.tiers, queued=self.queued_uses
                )
            return victims

        return score

    def _pool_view(self, worker: SimWorker) -> pool.WorkerState:
        now = self.now
        return pool.WorkerState(
            worker.worker_id,
            worker.gpu.name,
            worker.gpu.capabilities,
            worker.gpu.residency_gb,  # the whole memory, as a worker's heartbeat reports it
            tuple(
                pool.Resident(n, s, worker.last_used.get(n, now), worker.uses_24h(n, now))
                for n, s in worker.resident.items()
            ),
            worker.run is None and worker.loading is None and worker.worker_id in self.state.idle,
            worker.pinned,
            worker.gpu.speed,
            worker.gpu.budget_gb,  # what a job may use (the same as the above but in a replay)
        )

    def push(self, at: float, kind: int, payload: object) -> None:
        self.seq += 1
        heapq.heappush(self.heap, (at, self.seq, kind, payload))

    def run(self) -> SimResult:
        if self.trace is None:
            self._warm_start()
        else:
            self._idle_start()
        generated = self.trace is None
        for request in (
            arrivals(self.scenario, self.sampler, self.peak_rate, self.rng)
            if generated
            else self.trace or ()
        ):
            lag = self._lag(self.latency.reaction_s) if self.latency else 0.0
            self.push(request.queued_at + lag, _ARRIVE, request)
        for _ in range(self.perturb):  # same demand, another draw of load and denoising times
            self.rng.random()
        next_eta = next_pool = next_scale = 0.0
        state = self.state
        pool_on = self.pool_mode == "ours"
        while self.heap and self.heap[0][0] <= self.end:
            now, _, kind, payload = heapq.heappop(self.heap)
            self.now = now
            if kind == _ARRIVE:
                assert isinstance(payload, JobRequest)
                self._arrive(payload, now)
            elif kind == _LOADED:
                assert isinstance(payload, str)
                self._loaded(payload, now)
            else:
                assert isinstance(payload, tuple)
                self._stop(kind, payload, now)
            if self.policy_name == "ours" and now >= next_eta:
                self._predict(now)
                next_eta = now + ETA_EVERY_S
            if state.idle or (self.policy_name == "ours" and len(state.queues[Tier.TURBO])):
                for decision in self.policy(state, now):
                    self._carry_out(decision, now)
            if now >= next_scale:
                self._sample_autoscale()
                next_scale = now + AUTOSCALE_EVERY_S
            if pool_on and now >= next_pool:
                self._pool_round(now)
                next_pool = now + self.pool_every_s
        for worker in self.workers.values():
            worker.account_until(self.end)
        return self._result()

    def _warm_start(self) -> None:
        """t = 0 at peak: every GPU is busy with a job of the mix and holds its weights."""
        tiers = list(self.scenario.tier_mix)
        weights = list(self.scenario.tier_mix.values())
        for i, worker in enumerate(self.workers.values()):
            if "flux" in worker.gpu.capabilities:  # large GPUs keep the popular models warm
                for model in ("flux-dev", "sdxl-base-1.0"):
                    worker.preload(JobRequest("w", "w", Tier.RELAX, model, (), 1024, 1024, 1, 1, 0))
            for model in sorted(worker.pinned - set(worker.resident)):
                worker.preload(JobRequest("w", "w", Tier.RELAX, model, (), 1024, 1024, 1, 1, 0))
            while True:
                tier = self.rng.choices(tiers, weights)[0]
                request = self.sampler.request(f"pre-{i}", tier, "pre", -60.0, self.rng)
                family = self.catalog.models[request.model_id].family
                if fits(family, footprint_gb(request, self.catalog), worker.view()):
                    break
            worker.preload(request)
            evolve(self.state, WorkerUpdated(worker.view(), 0.0))
            evolve(self.state, JobQueued(request, -60.0))
            full = denoise_s(request, request.steps, worker.gpu.speed, self.catalog)
            started = -self.rng.uniform(0.0, full)
            info = worker.start(request, request.steps, i + 1, started, self.rng)
            evolve(self.state, JobAssigned(request.job_id, worker.worker_id, i + 1, started))
            self.push(max(info.end, 0.0), _FINISH, (worker.worker_id, i + 1, 0))

    def _idle_start(self) -> None:
        """t = 0 of a replayed run: every worker idle, holding its tier-1 pins (the live
        pool-manager pins them before the first job) and what ``resident`` gives it."""
        for worker in self.workers.values():
            held = [*self.resident_at_start.get(worker.worker_id, ()), *sorted(worker.pinned)]
            for model in dict.fromkeys(m for m in held if m not in worker.resident):
                worker.preload(JobRequest("w", "w", Tier.RELAX, model, (), 64, 64, 1, 1, 0))
            evolve(self.state, WorkerUpdated(worker.view(), 0.0))

    def _arrive(self, request: JobRequest, now: float) -> None:
        if isinstance(admit(request, self.fleet, self.catalog), Refused):
            self.counters.refused += 1
            return
        shift = self.scenario.shift
        if shift is not None and self.shift_holders is None and now >= shift.at_s:
            self.shift_holders = sum(
                shift.model_id in w.resident and w.loading is None for w in self.workers.values()
            )
        self.offered_work_s += denoise_s(request, request.steps, 1.0, self.catalog)
        arrived = request.queued_at if self.latency else now  # a replayed reaction counts as wait
        self.records[request.job_id] = JobRecord(request.tier, request.user_id, arrived, arrived)
        evolve(self.state, JobQueued(request, now))
        self._count_queued(request, 1)
        if self.pool_mode == "ours":
            self.recent.append((self.clock0 + now, request.model_id))

    def _lag(self, samples: Sequence[float]) -> float:
        return self.latency_rng.choice(samples) if samples else 0.0

    def _count_queued(self, request: JobRequest, step: int) -> None:
        uses = self.queued_uses
        uses[request.model_id] += step
        for adapter in request.adapters:
            uses[adapter] += step

    def _stop(self, kind: int, payload: tuple[str, int, int], now: float) -> None:
        worker_id, token, done = payload
        worker = self.workers[worker_id]
        run = worker.run
        if run is None or run.token != token or (kind == _FINISH) != (run.paused_at is None):
            return  # stale: the run was paused, or this is an old assignment
        worker.stop(now, self.end)
        evolve(self.state, WorkerUpdated(worker.view(), now))
        job_id = run.request.job_id
        if kind == _FINISH:
            self.counters.finished += 1
            evolve(self.state, JobFinished(job_id, worker_id, token, now))
            return
        record = self.records.get(job_id)
        if record is not None:
            record.queued, record.enqueued_at = True, now
        evolve(self.state, JobPreempted(job_id, worker_id, token, done, now))
        if job_id in self.state.queued:
            self._count_queued(run.request, 1)

    def _carry_out(self, decision: Decision, now: float) -> None:
        worker = self.workers[decision.worker_id]
        if isinstance(decision, Assign):
            job = self.state.queued[decision.job_id]
            self._count_queued(job.request, -1)
            info = worker.start(
                job.request, job.remaining_steps, decision.fencing_token, now, self.rng
            )
            shift = self.scenario.shift
            if (
                shift is not None
                and job.request.model_id == shift.model_id
                and job.request.queued_at >= shift.at_s
            ):
                if self.shift_first_warm is None and not info.cold:
                    self.shift_first_warm = now - shift.at_s
                if now < shift.at_s + 900:
                    self.shift_jobs[0] += 1
                    self.shift_jobs[1] += not info.cold
            lag = self._lag(self.latency.turnaround_s) if self.latency else 0.0
            self.push(info.end + lag, _FINISH, (worker.worker_id, decision.fencing_token, 0))
            c = self.counters
            c.starts += 1
            c.warm_full += info.warm_full
            c.cold += info.cold
            c.base_loads += info.base_loads
            c.adapter_loads += info.adapter_loads
            c.reasons[decision.reason] = c.reasons.get(decision.reason, 0) + 1
            record = self.records.get(decision.job_id)
            if record is not None:
                if record.first_cold is None:
                    record.first_cold = bool(info.cold)
                record.wait_s += now - record.enqueued_at
                record.queued = False
                record.starts += 1
                if record.first_start is None:
                    record.first_start = now
                self.timeline.append((now, record.tier.value, record.wait_s))
        else:
            run = worker.run
            if run is not None and run.token == decision.fencing_token and run.paused_at is None:
                point = worker.pause_point(now)
                if point is not None:
                    run.paused_at = point[0]
                    self.push(point[0], _PAUSED, (worker.worker_id, run.token, point[1]))
                    self.counters.preemptions += 1
        evolve(self.state, as_event(decision, now))

    # --- pool policy (--pool ours) and the autoscaling signal (both modes) -------------------

    def _job_pool(self, family: str, footprint: float) -> str:
        """The smallest GPU class that can run a job (where it should be served)."""
        for gpu, _ in sorted(self.scenario.fleet, key=lambda f: f[0].budget_gb):
            if family in gpu.capabilities and footprint <= gpu.budget_gb:
                return gpu.name
        return max(self.scenario.fleet, key=lambda f: f[0].budget_gb)[0].name

    def _queue_work(self, now: float) -> list[pool.QueuedWork]:
        return [
            pool.QueuedWork(
                job.request.model_id,
                job.request.tier.value,
                denoise_s(job.request, job.remaining_steps, 1.0, self.catalog),
                job.wait_s(now),
                self._job_pool(job.family, job.footprint_gb),
            )
            for job in self.state.queued.values()
        ]

    def _sample_autoscale(self) -> None:
        pools: dict[str, list[int]] = {}
        for worker in self.workers.values():
            counts = pools.setdefault(worker.gpu.name, [0, 0])
            counts[0] += 1
            counts[1] += worker.run is not None or worker.loading is not None
        speeds = {g.name: g.speed for g, _ in self.scenario.fleet}
        loads = {n: pool.PoolLoad(c[0], c[1], speeds[n]) for n, c in pools.items()}
        desired = pool.desired_workers(loads, self._queue_work(self.now))
        for name, count in desired.items():
            self.autoscale[name].append(count)

    def _pool_round(self, now: float) -> None:
        """Storm preloads first (priority promotion), then predictive preloads if quiet."""
        views = [self._pool_view(w) for w in self.workers.values() if w.loading is None]
        demand = None
        if self.preload_on:
            clock = self.clock0 + now
            while self.recent and self.recent[0][0] <= clock - self.pool_config.demand_window_s:
                self.recent.popleft()
            demand = pool.predict_demand(self.recent, clock, self.weights, self.pool_config)
        planned = pool.pool_round(
            views,
            self.models,
            self._queue_work(now),
            demand,
            now=now,
            queued_jobs=len(self.state.queued),
            tiers=self.tiers,
            queued_uses=self.queued_uses,
            loading=self.loading,
            config=self.pool_config,
        )
        self.promoted_rounds += bool(planned.promoted)
        loads = planned.loads
        for load in loads:
            worker = self.workers[load.worker_id]
            done = worker.begin_load(load.model_id, now, self.pool_rng)
            if done is None:
                continue
            self.preloads[load.reason] += 1
            self.loading[load.model_id] += 1
            evolve(self.state, WorkerUpdated(worker.view(), now))
            self.push(done, _LOADED, load.worker_id)

    def _loaded(self, worker_id: str, now: float) -> None:
        worker = self.workers[worker_id]
        assert worker.loading is not None
        self.loading[worker.loading[0]] -= 1
        worker.loading = None
        evolve(self.state, WorkerUpdated(worker.view(), now))

    def _pool_figures(self) -> dict[str, object]:
        hours = self.scenario.hours
        figures: dict[str, object] = {
            "pool": self.pool_mode,
            "switch_guard": self.guard,
            "autoscale_desired_workers": {
                name: {
                    "workers": sum(n for g, n in self.scenario.fleet if g.name == name),
                    "max": max(series, default=0),
                    "mean": round(sum(series) / len(series), 1) if series else 0.0,
                }
                for name, series in self.autoscale.items()
            },
        }
        if self.pool_mode == "ours":
            figures["eviction"] = self.eviction
            figures["preload"] = self.preload_on
            figures["preloads_per_hour"] = {
                r: round(self.preloads[r] / hours, 1) for r in ("predictive", "storm")
            }
            figures["on_demand_cold_loads_per_hour"] = round(self.counters.base_loads / hours, 1)
            figures["pinned_workers"] = sum(1 for w in self.workers.values() if w.pinned)
            figures["pin_overrides"] = self.pin_overrides
            figures["storm_rounds"] = self.promoted_rounds
        shift = self.scenario.shift
        if shift is not None:
            started, warm = self.shift_jobs
            figures["shift"] = {
                "model": shift.model_id,
                "at_s": shift.at_s,
                "first_warm_hit_after_s": (
                    round(self.shift_first_warm, 1) if self.shift_first_warm is not None else None
                ),
                "holders_at_shift": self.shift_holders,
                "jobs_started_15_min": started,
                "base_warm_hit_rate_15_min": round(warm / started, 4) if started else None,
            }
        return figures

    def _predict(self, now: float) -> None:
        for job_id, eta in estimate_waits(self.state, now).items():
            record = self.records.get(job_id)
            if record is not None and record.predicted_start is None and record.starts == 0:
                record.predicted_start = now + eta

    def _result(self) -> SimResult:
        speed = sum(g.speed * n for g, n in self.scenario.fleet)
        work_done = sum(w.denoise_s_total * w.gpu.speed for w in self.workers.values())
        busy = sum(w.denoise_s_total for w in self.workers.values())
        loads = {
            "offered_load": round(self.offered_work_s / (speed * self.end), 3),
            "served_load": round(work_done / (speed * self.end), 3),
            "capacity_jobs_per_s": round(self.peak_rate / self.scenario.load_factor, 2),
        }
        result = summarize(
            self.policy_name,
            self.scenario,
            self.records,
            self.counters,
            busy / (self.scenario.gpus * self.end),
            loads,
            self.timeline,
        )
        # cold loads: base-model loads, preloads included (a preload is a cold load too)
        result.cold_loads_per_hour += sum(self.preloads.values()) / self.scenario.hours
        result.extra.update(self._pool_figures())
        return result


def simulate(
    scenario: Scenario,
    policy: str,
    seed: int = 1,
    config: SchedulerConfig | None = None,
    *,
    pool: str = "none",
    eviction: str = DEFAULT_EVICTION,
    preload: bool = True,
    perturb: int = 0,
    guard: bool | None = None,
) -> SimResult:
    """One simulated run. ``perturb``: draw that many extra numbers from the job stream once the
    demand is drawn: the same arrivals, another draw of load and denoising times (the spread of
    a figure between such runs is its noise; ADR 0701). ``guard``: the switch guard (ADR 0712);
    None: on with ``pool="ours"``, off with ``"none"``."""
    return Simulation(
        scenario,
        policy,
        seed,
        config or SchedulerConfig(),
        pool,
        eviction,
        preload,
        perturb,
        guard=guard,
    ).run()

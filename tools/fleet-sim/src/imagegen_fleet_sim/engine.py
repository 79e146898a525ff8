"""Discrete-event fleet simulation driving the scheduler's own policy functions.

Each event becomes a domain event folded with ``evolve``; after it, the policy's ``decide`` runs
and every decision is both carried out on the simulated fleet and folded back as its event,
exactly as the scheduler service does with Kafka in between.
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Callable

from imagegen_scheduler.domain import (
    Assign,
    Decision,
    FleetCapabilities,
    JobAssigned,
    JobFinished,
    JobPreempted,
    JobQueued,
    JobRequest,
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
from .scenario import Scenario, seed_catalog
from .workload import RequestSampler, arrivals, capacity_jobs_per_s

Policy = Callable[[SchedulerState, float], list[Decision]]
POLICIES: dict[str, Policy] = {
    "fifo": fifo_decide,
    "weighted": weighted_decide,
    "weighted-warm": weighted_warm_decide,
    "ours": decide,
}
_FINISH, _PAUSED, _ARRIVE = 0, 1, 2
ETA_EVERY_S = 60.0


class Simulation:
    def __init__(self, scenario: Scenario, policy: str, seed: int, config: SchedulerConfig) -> None:
        self.scenario, self.policy_name, self.policy = scenario, policy, POLICIES[policy]
        self.rng = random.Random(seed)
        self.catalog = seed_catalog()
        self.state = SchedulerState(config, self.catalog)
        self.end = scenario.hours * 3600
        self.workers: dict[str, SimWorker] = {}
        for gpu, count in scenario.fleet:
            for _ in range(count):
                worker_id = f"gpu-{len(self.workers):03d}-{gpu.name}"
                self.workers[worker_id] = SimWorker(worker_id, gpu, self.catalog)
        self.fleet = FleetCapabilities.of(w.view() for w in self.workers.values())
        self.sampler = RequestSampler(scenario, self.catalog)
        self.peak_rate = capacity_jobs_per_s(scenario, self.sampler) * scenario.load_factor
        self.records: dict[str, JobRecord] = {}
        self.counters = Counters()
        self.timeline: list[tuple[float, str, float]] = []
        self.heap: list[tuple[float, int, int, object]] = []
        self.seq = 0
        self.offered_work_s = 0.0

    def push(self, at: float, kind: int, payload: object) -> None:
        self.seq += 1
        heapq.heappush(self.heap, (at, self.seq, kind, payload))

    def run(self) -> SimResult:
        self._warm_start()
        for request in arrivals(self.scenario, self.sampler, self.peak_rate, self.rng):
            self.push(request.queued_at, _ARRIVE, request)
        next_eta = 0.0
        state = self.state
        while self.heap and self.heap[0][0] <= self.end:
            now, _, kind, payload = heapq.heappop(self.heap)
            if kind == _ARRIVE:
                assert isinstance(payload, JobRequest)
                self._arrive(payload, now)
            else:
                assert isinstance(payload, tuple)
                self._stop(kind, payload, now)
            if self.policy_name == "ours" and now >= next_eta:
                self._predict(now)
                next_eta = now + ETA_EVERY_S
            if state.idle or (self.policy_name == "ours" and len(state.queues[Tier.TURBO])):
                for decision in self.policy(state, now):
                    self._carry_out(decision, now)
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

    def _arrive(self, request: JobRequest, now: float) -> None:
        if isinstance(admit(request, self.fleet, self.catalog), Refused):
            self.counters.refused += 1
            return
        self.offered_work_s += denoise_s(request, request.steps, 1.0, self.catalog)
        self.records[request.job_id] = JobRecord(request.tier, request.user_id, now, now)
        evolve(self.state, JobQueued(request, now))

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

    def _carry_out(self, decision: Decision, now: float) -> None:
        worker = self.workers[decision.worker_id]
        if isinstance(decision, Assign):
            job = self.state.queued[decision.job_id]
            info = worker.start(
                job.request, job.remaining_steps, decision.fencing_token, now, self.rng
            )
            self.push(info.end, _FINISH, (worker.worker_id, decision.fencing_token, 0))
            c = self.counters
            c.starts += 1
            c.warm_full += info.warm_full
            c.cold += info.cold
            c.base_loads += info.base_loads
            c.adapter_loads += info.adapter_loads
            c.reasons[decision.reason] = c.reasons.get(decision.reason, 0) + 1
            record = self.records.get(decision.job_id)
            if record is not None:
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
        return summarize(
            self.policy_name,
            self.scenario,
            self.records,
            self.counters,
            busy / (self.scenario.gpus * self.end),
            loads,
            self.timeline,
        )


def simulate(
    scenario: Scenario, policy: str, seed: int = 1, config: SchedulerConfig | None = None
) -> SimResult:
    return Simulation(scenario, policy, seed, config or SchedulerConfig()).run()

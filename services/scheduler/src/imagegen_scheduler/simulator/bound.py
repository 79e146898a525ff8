"""A fluid bound on what any policy can do with a scenario's actual demand (``--bound``).

The relaxation: the fleet (or one class of it) is a single pool of A10G-equivalents that divides
work freely between jobs, never loads a model, never idles and serves jobs in deadline order,
where a job's deadline is its arrival plus its tier's wait target (15 / 60 / 300 s). The GPUs
start busy exactly as in the simulation (the same warm start, so the same remaining work).
Any real policy does no better than this, so if the pool's capacity up to time ``t`` is less
than the work due by ``t``, no policy meets every deadline; where the capacity exceeds it, the
difference (the slack) is what a real policy may lose to loads, idle workers and placement
before it must miss deadlines. It requires every job to meet its target: the 5% each p95 lets
wait longer are not subtracted (see ``docs/scheduling.md`` for what that changes).

Two pools are checked: the whole fleet with all jobs, and the large workers with the jobs only
they can hold (Flux, or a footprint above the small workers' budget), which no policy can send
anywhere else.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from imagegen_scheduler.domain import (
    JobRequest,
    ModelCatalog,
    SchedulerConfig,
    Tier,
    WorkerView,
    denoise_s,
    fits,
    footprint_gb,
)

from .engine import Simulation
from .scenario import Scenario
from .workload import arrivals


@dataclass(frozen=True, slots=True)
class PoolBound:
    name: str
    gpus: int
    speed: float  # A10G-equivalents
    jobs: int  # jobs with a deadline inside the window
    work_due_s: float  # their denoising work, A10G-seconds
    min_slack_s: float  # min over t of (capacity - work due) / speed: seconds of the pool
    at_s: float  # where the minimum is
    loss_budget: float  # min over t >= 600 s of (capacity - work due) / capacity
    loss_budget_at_s: float  # where that minimum is
    slack_every_5_min: list[float]  # seconds of the pool's capacity left at t = 300, 600, ...

    def summary(self) -> dict[str, Any]:
        return {
            "pool": self.name,
            "gpus": self.gpus,
            "a10g_equivalents": round(self.speed, 1),
            "jobs_due_in_window": self.jobs,
            "work_due_a10g_s": round(self.work_due_s),
            "min_slack_s": round(self.min_slack_s, 1),
            "min_slack_at_s": self.at_s,
            "loss_budget": round(self.loss_budget, 4),
            "loss_budget_at_s": self.loss_budget_at_s,
            "slack_every_5_min_s": [round(s) for s in self.slack_every_5_min],
        }


def fluid_bound(scenario: Scenario, seed: int) -> dict[str, Any]:
    """The bound for the demand ``simulate(scenario, policy, seed)`` runs against."""
    sim = Simulation(scenario, "ours", seed, SchedulerConfig())
    sim._warm_start()  # same random draws as a run: the same warm start and the same arrivals
    jobs = arrivals(scenario, sim.sampler, sim.peak_rate, sim.rng)
    targets = SchedulerConfig().wait_targets_s
    catalog = sim.catalog
    views = [w.view() for w in sim.workers.values()]
    smallest = min(v.budget_gb for v in views)
    small = [v for v in views if v.budget_gb == smallest]
    busy_until = {
        w.worker_id: (w.run.end if w.run is not None else 0.0) for w in sim.workers.values()
    }

    def large_only(request: JobRequest) -> bool:
        family = catalog.models[request.model_id].family
        need = footprint_gb(request, catalog)
        return not any(fits(family, need, v) for v in small)

    end = scenario.hours * 3600
    pools = [
        ("fleet, all jobs", views, jobs),
        (
            "large workers, jobs only they can hold",
            [v for v in views if v.budget_gb > smallest],
            [j for j in jobs if large_only(j)],
        ),
    ]
    bounds = [
        _pool(name, pool, chosen, targets, busy_until, end, catalog) for name, pool, chosen in pools
    ]
    late_allowance = {t.value: sum(1 for j in jobs if j.tier is t) // 20 for t in Tier}
    return {"bounds": [b.summary() for b in bounds], "p95_allowance_jobs": late_allowance}


def _pool(
    name: str,
    pool: list[WorkerView],
    jobs: list[JobRequest],
    targets: Mapping[Tier, float],
    busy_until: dict[str, float],
    end: float,
    catalog: ModelCatalog,
) -> PoolBound:
    speed = sum(v.speed for v in pool)
    due = sorted(
        (j.queued_at + targets[j.tier], denoise_s(j, j.steps, 1.0, catalog))
        for j in jobs
        if j.queued_at + targets[j.tier] <= end
    )

    def capacity(t: float) -> float:
        return sum(v.speed * max(0.0, t - max(0.0, busy_until[v.worker_id])) for v in pool)

    work = 0.0
    min_slack, at, budget, budget_at = float("inf"), 0.0, float("inf"), 0.0
    for index, (deadline, size) in enumerate(due):
        work += size
        if index + 1 < len(due) and due[index + 1][0] == deadline:
            continue
        slack = capacity(deadline) - work
        if slack / speed < min_slack:
            min_slack, at = slack / speed, deadline
        if deadline >= 600 and slack / capacity(deadline) < budget:
            budget, budget_at = slack / capacity(deadline), deadline
    marks: list[float] = []
    for mark in range(300, int(end) + 1, 300):
        done = sum(size for deadline, size in due if deadline <= mark)
        marks.append((capacity(mark) - done) / speed)
    total = sum(size for _, size in due)
    return PoolBound(
        name, len(pool), speed, len(due), total, min_slack, at, budget, budget_at, marks
    )

"""Fluid bounds on what any policy can do with a scenario's actual demand (``--bound``).

The relaxation: the fleet (or one class of it) is a single pool of A10G-equivalents that divides
work freely between jobs, never loads a model, never idles and serves jobs in deadline order,
where a job's deadline is its arrival plus its tier's wait target (15 / 60 / 300 s). The GPUs
start busy exactly as in the simulation (the same warm start, so the same remaining work).

Two conditions are checked at every deadline ``d`` (``capacity(d)`` is the pool's work up to d):

* strict: ``capacity(d) >= work due by d``: every job *finishes* by its deadline. Where it holds,
  the slack is what a policy may lose to loads, idle workers and order before some job must
  finish late. It is neither necessary nor sufficient for the goals (a wait is measured to the
  start, and a p95 excuses 5%), so it only sizes the loss budget.
* goal: ``capacity(d) >= work due by d - forgiven(d)``, where ``forgiven(d)`` is the most work a
  policy meeting every p95 goal could leave undone at d: the largest ``n - ceil(0.95 n)`` jobs of
  each tier (``n``: the tier's jobs in the window; those may start late), plus the largest
  remaining job on each GPU of the pool (a job that started by its deadline may still be running).
  This is a necessary condition for the goals: where it fails, **no policy** meets them. Where
  it holds, the goals are not proven reachable (it forgives the largest jobs, and per pool
  the whole allowance).

Two pools are checked: the whole fleet with all jobs, and the large workers with the jobs only
they can hold (Flux, or a footprint above the small workers' budget), which no policy can send
anywhere else.
"""

from __future__ import annotations

import heapq
import math
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
    goal_min_slack_s: float  # min over t of (capacity - work due + forgiven) / speed
    goal_at_s: float  # where that minimum is
    goal_every_5_min: list[float]  # the same slack at t = 300, 600, ...

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
            "goal_min_slack_s": round(self.goal_min_slack_s, 1),
            "goal_min_slack_at_s": self.goal_at_s,
            "goal_slack_every_5_min_s": [round(s) for s in self.goal_every_5_min],
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
    counts = {t: sum(1 for j in jobs if j.tier is t) for t in Tier}
    allowance = {t: n - math.ceil(0.95 * n) for t, n in counts.items()}
    bounds = [
        _pool(name, pool, chosen, targets, busy_until, end, catalog, allowance)
        for name, pool, chosen in pools
    ]
    return {
        "bounds": [b.summary() for b in bounds],
        "p95_allowance_jobs": {t.value: k for t, k in allowance.items()},
    }


def _pool(
    name: str,
    pool: list[WorkerView],
    jobs: list[JobRequest],
    targets: Mapping[Tier, float],
    busy_until: dict[str, float],
    end: float,
    catalog: ModelCatalog,
    allowance: Mapping[Tier, int],
) -> PoolBound:
    speed = sum(v.speed for v in pool)
    due = sorted(
        (j.queued_at + targets[j.tier], denoise_s(j, j.steps, 1.0, catalog), j.tier)
        for j in jobs
        if j.queued_at + targets[j.tier] <= end
    )
    forgiven = _forgiven(due, allowance, len(pool))

    def capacity(t: float) -> float:
        return sum(v.speed * max(0.0, t - max(0.0, busy_until[v.worker_id])) for v in pool)

    work = 0.0
    min_slack, at, budget, budget_at = float("inf"), 0.0, float("inf"), 0.0
    goal_min, goal_at = float("inf"), 0.0
    for index, (deadline, size, _) in enumerate(due):
        work += size
        if index + 1 < len(due) and due[index + 1][0] == deadline:
            continue
        slack = capacity(deadline) - work
        if slack / speed < min_slack:
            min_slack, at = slack / speed, deadline
        if deadline >= 600 and slack / capacity(deadline) < budget:
            budget, budget_at = slack / capacity(deadline), deadline
        if (slack + forgiven[index]) / speed < goal_min:
            goal_min, goal_at = (slack + forgiven[index]) / speed, deadline
    marks: list[float] = []
    goal_marks: list[float] = []
    for mark in range(300, int(end) + 1, 300):
        inside = [i for i, (deadline, _, _) in enumerate(due) if deadline <= mark]
        done = sum(due[i][1] for i in inside)
        marks.append((capacity(mark) - done) / speed)
        excused = forgiven[inside[-1]] if inside else 0.0
        goal_marks.append((capacity(mark) - done + excused) / speed)
    total = sum(size for _, size, _ in due)
    return PoolBound(
        name,
        len(pool),
        speed,
        len(due),
        total,
        min_slack,
        at,
        budget,
        budget_at,
        marks,
        goal_min,
        goal_at,
        goal_marks,
    )


def _forgiven(
    due: list[tuple[float, float, Tier]], allowance: Mapping[Tier, int], gpus: int
) -> list[float]:
    """For each prefix ``due[: i + 1]``: the most work a policy meeting every p95 goal could
    leave undone at that deadline. Greedy, which is optimal here: the ``allowance[tier]`` largest
    jobs of each tier may start late, and of the rest the ``gpus`` largest may still be running
    (one per GPU). Both sets only grow with the prefix: a job that leaves a tier's top-k never
    returns to it, so it moves to the running candidates."""
    top: dict[Tier, list[float]] = {t: [] for t in allowance}  # min-heaps of the top-k sizes
    running: list[float] = []  # min-heap of the top ``gpus`` sizes outside those
    top_sum = running_sum = 0.0
    out: list[float] = []

    def to_running(size: float) -> None:
        nonlocal running_sum
        if len(running) < gpus:
            heapq.heappush(running, size)
            running_sum += size
        elif running and size > running[0]:
            running_sum += size - heapq.heappushpop(running, size)

    for _, size, tier in due:
        heap, k = top[tier], allowance[tier]
        if len(heap) < k:
            heapq.heappush(heap, size)
            top_sum += size
        elif heap and size > heap[0]:
            out_of_top = heapq.heappushpop(heap, size)
            top_sum += size - out_of_top
            to_running(out_of_top)
        else:
            to_running(size)
        out.append(top_sum + running_sum)
    return out

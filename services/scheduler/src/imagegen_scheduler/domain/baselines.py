"""Baseline policies with the same interface as ``policy.decide``, for the simulator's comparison.

Both are deliberately naive about placement: each idle worker (smallest budget first, then id)
takes the job the tier rule picks among the jobs that fit it, warm or not.

* ``fifo_decide``: the oldest queued job (fold order), whatever its tier or user.
* ``weighted_decide``: the seed design's example. A tier is drawn with probability proportional
  to ``weight x queue length`` (10/5/1 by default), then its oldest job that fits. The draw is
  deterministic: a Weyl sequence ``frac(token x golden ratio)`` over the fencing token about to
  be issued, so decisions replay exactly.
* ``weighted_warm_decide``: the same draw, then the warmest of the tier's first ``lookahead``
  jobs that fit (oldest on ties). It separates what our tier order buys from what placement
  buys.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Iterable
from itertools import islice

from .events import Decision, Reason
from .model import TIERS, Tier, WarmLevel, WorkerView, fits, warm_level
from .plan import Round
from .queues import QueuedJob
from .state import SchedulerState

__all__ = ["fifo_decide", "weighted_decide", "weighted_warm_decide"]

_GOLDEN = (math.sqrt(5) - 1) / 2


def fifo_decide(state: SchedulerState, now: float) -> list[Decision]:
    plan = Round(state, now)
    for worker in plan.free_workers():
        queues = [state.queues[t].arrivals.values() for t in TIERS]
        oldest = heapq.merge(*queues, key=lambda job: job.seq)
        job = _first_fitting(plan, oldest, worker)
        if job is not None:
            plan.assign(job, worker, Reason.BASELINE)
    return plan.decisions


def weighted_decide(state: SchedulerState, now: float, *, warm: bool = False) -> list[Decision]:
    plan = Round(state, now)
    weights = state.config.tier_weights
    for worker in plan.free_workers():
        shares = {t: weights[t] * (len(state.queues[t]) - plan.assigned_by_tier[t]) for t in TIERS}
        draw = (state.last_token + len(plan.decisions) + 1) * _GOLDEN % 1.0
        while any(share > 0 for share in shares.values()):
            tier = _pick(shares, draw)
            jobs = state.queues[tier].arrivals.values()
            job = _warmest(plan, jobs, worker) if warm else _first_fitting(plan, jobs, worker)
            if job is not None:
                plan.assign(job, worker, Reason.BASELINE)
                break
            shares[tier] = 0.0
    return plan.decisions


def weighted_warm_decide(state: SchedulerState, now: float) -> list[Decision]:
    return weighted_decide(state, now, warm=True)


def _pick(shares: dict[Tier, float], draw: float) -> Tier:
    total = sum(shares.values())
    point = draw * total
    for tier in TIERS:
        if shares[tier] > 0 and point < shares[tier]:
            return tier
        point -= shares[tier]
    return max(TIERS, key=lambda t: shares[t])


def _first_fitting(plan: Round, jobs: Iterable[QueuedJob], worker: WorkerView) -> QueuedJob | None:
    for job in islice(jobs, plan.state.config.max_scan):
        if (
            job.job_id not in plan.taken
            and fits(job.family, job.footprint_gb, worker)
            and worker.worker_id not in job.request.avoid
        ):
            return job
    return None


def _warmest(plan: Round, jobs: Iterable[QueuedJob], worker: WorkerView) -> QueuedJob | None:
    best: QueuedJob | None = None
    best_level = -1
    fitting = (
        j
        for j in islice(jobs, plan.state.config.max_scan)
        if j.job_id not in plan.taken
        and fits(j.family, j.footprint_gb, worker)
        and worker.worker_id not in j.request.avoid
    )
    for job in islice(fitting, plan.state.config.lookahead):
        level = warm_level(job.request, worker)
        if level > best_level:
            best, best_level = job, level
            if level == WarmLevel.FULL:
                break
    return best

"""What a simulation reports."""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from imagegen_scheduler.domain import Tier

from .scenario import Scenario


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of an ascending list (0.0 for an empty one)."""
    if not sorted_values:
        return 0.0
    rank = max(1, math.ceil(q * len(sorted_values)))
    return sorted_values[rank - 1]


@dataclass(slots=True)
class JobRecord:
    tier: Tier
    user_id: str
    arrived: float
    enqueued_at: float  # start of the current stay in the queue
    queued: bool = True
    wait_s: float = 0.0  # closed stays
    starts: int = 0
    predicted_start: float | None = None  # first ETA the scheduler gave, as an absolute time
    first_start: float | None = None  # when it was first assigned
    first_cold: bool | None = None  # whether its first start had to load its base model

    def total_wait(self, end: float) -> float:
        return self.wait_s + (max(0.0, end - self.enqueued_at) if self.queued else 0.0)


@dataclass(slots=True)
class Counters:
    starts: int = 0
    warm_full: int = 0
    cold: int = 0
    base_loads: int = 0
    adapter_loads: int = 0
    preemptions: int = 0
    refused: int = 0
    finished: int = 0
    reasons: dict[str, int] = field(default_factory=dict)


@dataclass(slots=True)
class SimResult:
    policy: str
    scenario: str
    gpus: int
    hours: float
    tiers: dict[str, dict[str, float]]
    gpu_utilization: float
    warm_hit_rate: float
    base_warm_hit_rate: float
    cold_loads_per_hour: float
    extra: dict[str, Any]
    timeline: list[tuple[float, str, float]]  # (assigned at, tier, wait) per assignment

    def summary(self) -> dict[str, Any]:
        """The JSON the CLI prints."""
        return {
            "policy": self.policy,
            "scenario": self.scenario,
            "gpus": self.gpus,
            "hours": self.hours,
            "tiers": self.tiers,
            "gpu_utilization": round(self.gpu_utilization, 4),
            "warm_hit_rate": round(self.warm_hit_rate, 4),
            "base_warm_hit_rate": round(self.base_warm_hit_rate, 4),
            "cold_loads_per_hour": round(self.cold_loads_per_hour, 1),
            **self.extra,
        }


def summarize(
    policy: str,
    scenario: Scenario,
    records: Mapping[str, JobRecord],
    counters: Counters,
    utilization: float,
    loads: dict[str, float],
    timeline: list[tuple[float, str, float]],
) -> SimResult:
    """Percentiles per tier over every job that arrived in the window (backlog included); a job
    still queued at the end counts with the wait it has had so far, so starvation shows."""
    end = scenario.hours * 3600
    tiers: dict[str, dict[str, float]] = {}
    per_tier: dict[str, dict[str, float | int | None]] = {}
    for tier in Tier:
        recs = [r for r in records.values() if r.tier is tier]
        waits = sorted(r.total_wait(end) for r in recs)
        tiers[tier.value] = {
            f"p{q}_wait_s": round(percentile(waits, q / 100), 1) for q in (50, 95, 99)
        }
        errors = [
            abs(r.first_start - r.predicted_start)
            for r in recs
            if r.predicted_start is not None and r.first_start is not None
        ]
        per_tier[tier.value] = {
            "jobs": len(recs),
            "never_started": sum(1 for r in recs if r.starts == 0),
            "eta_median_abs_error_s": round(statistics.median(errors), 1) if errors else None,
        }
    c, hours = counters, scenario.hours
    extra = {
        **loads,
        "jobs_finished": c.finished,
        "preemptions": c.preemptions,
        "refused": c.refused,
        "adapter_loads_per_hour": round(c.adapter_loads / hours, 1),
        "assign_reasons": dict(sorted(c.reasons.items())),
        "per_tier": per_tier,
    }
    return SimResult(
        policy=policy,
        scenario=scenario.name,
        gpus=scenario.gpus,
        hours=hours,
        tiers=tiers,
        gpu_utilization=utilization,
        warm_hit_rate=c.warm_full / c.starts if c.starts else 0.0,
        base_warm_hit_rate=1 - c.cold / c.starts if c.starts else 0.0,
        cold_loads_per_hour=c.base_loads / hours,
        extra=extra,
        timeline=timeline,
    )

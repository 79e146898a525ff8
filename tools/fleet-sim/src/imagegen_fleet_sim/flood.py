"""The flood scenario (issue #14): one user submits ``jobs`` jobs at once, another user submits
one job just after; how long does the second user wait, and how many of the flood's jobs start
ahead of it?

Runs the simulator's engine (``Simulation`` with a fixed arrival trace, an idle fleet of A10Gs)
with our policy twice on the same demand: with per-user rotation (ADR 0620) and without it
(oldest job first inside a tier, the order before), the baseline.

    imagegen simulate --scenario flood --json [--gpus 1] [--flood-jobs 60] [--tier relax]
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from imagegen_scheduler.domain import JobRequest, SchedulerConfig, Tier

from .engine import Simulation
from .scenario import A10G, Scenario, seed_peak

FLOODER = "flooder"
OTHER = "other-user"
OTHER_JOB = "other-1"
MODEL = "sdxl-base-1.0"  # both users ask for the same model: placement does not separate them


@dataclass(frozen=True, slots=True)
class FloodRun:
    """One run of the flood scenario."""

    rotation: bool  # per-user rotation on (ours) or off (the baseline)
    other_wait_s: float  # the other user's wait from submission to assignment
    flood_started_ahead: int  # the flooder's jobs assigned before the other user's job
    flood_last_start_s: float  # when the flood's last job was assigned (work-conserving check)
    jobs_finished: int


def flood_scenario(gpus: int, jobs: int, tier: Tier) -> Scenario:
    """An idle fleet of ``gpus`` A10Gs, no backlog, no random arrivals; long enough to run the
    whole flood on one GPU (about 10 s a job) twice over."""
    hours = max(0.05, 2 * 12.0 * (jobs + 1) / gpus / 3600)
    base = seed_peak(max(gpus, 1), hours)
    return dataclasses.replace(
        base,
        name="flood",
        fleet=((A10G, gpus),),
        backlog={t: 0 for t in Tier},
        tier_mix={tier: 1.0},
        load_factor=1e-9,
        bursts_per_hour=0.0,
        floods=(),
    )


def flood_trace(jobs: int, tier: Tier, other_after_s: float = 0.5) -> list[JobRequest]:
    """``jobs`` jobs of one user at t = 0, then one job of another user ``other_after_s`` later."""

    def request(job_id: str, user: str, at: float) -> JobRequest:
        return JobRequest(job_id, user, tier, MODEL, (), 1024, 1024, 1, 30, at)

    flood = [request(f"flood-{i:03d}", FLOODER, 0.0) for i in range(jobs)]
    return [*flood, request(OTHER_JOB, OTHER, other_after_s)]


def run_flood(
    *, rotation: bool, gpus: int = 1, jobs: int = 60, tier: Tier = Tier.RELAX, seed: int = 1
) -> FloodRun:
    """One simulated flood with our policy, rotation on or off."""
    if gpus < 1 or jobs < 1:
        raise ValueError("flood: need gpus >= 1 and jobs >= 1")
    scenario = flood_scenario(gpus, jobs, tier)
    config = SchedulerConfig(user_rotation=rotation)
    sim = Simulation(scenario, "ours", seed, config, trace=flood_trace(jobs, tier))
    sim.run()
    other = sim.records[OTHER_JOB]
    if other.first_start is None:
        raise RuntimeError("flood: the other user's job never started; lengthen the window")
    flood_starts = [
        r.first_start
        for r in sim.records.values()
        if r.user_id == FLOODER and r.first_start is not None
    ]
    return FloodRun(
        rotation=rotation,
        other_wait_s=round(other.first_start - other.arrived, 2),
        flood_started_ahead=sum(1 for s in flood_starts if s < other.first_start),
        flood_last_start_s=round(max(flood_starts), 2),
        jobs_finished=sim.counters.finished,
    )


def flood_figures(
    *, gpus: int = 1, jobs: int = 60, tier: Tier = Tier.RELAX, seed: int = 1
) -> dict[str, Any]:
    """Both runs on the same demand and the ratio of the other user's waits."""
    ours = run_flood(rotation=True, gpus=gpus, jobs=jobs, tier=tier, seed=seed)
    fifo = run_flood(rotation=False, gpus=gpus, jobs=jobs, tier=tier, seed=seed)
    ratio = ours.other_wait_s / fifo.other_wait_s if fifo.other_wait_s > 0 else None
    return {
        "scenario": "flood",
        "gpus": gpus,
        "flood_jobs": jobs,
        "tier": tier.value,
        "seed": seed,
        "rotation": dataclasses.asdict(ours),
        "baseline_no_rotation": dataclasses.asdict(fifo),
        "other_wait_s": ours.other_wait_s,
        "baseline_other_wait_s": fifo.other_wait_s,
        "wait_ratio_vs_baseline": None if ratio is None else round(ratio, 4),
    }

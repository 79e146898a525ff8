"""The flood figure (issue #14, ADR 0620): another user's wait during one user's flood.

    python -m bench flood [--jobs 60] [--gpus 1] [--seeds 1-5] [--tier relax] [--json]

For each seed, the fleet simulator's flood scenario (``imagegen simulate --scenario flood``):
one user submits ``--jobs`` jobs at once on ``--gpus`` idle A10Gs, another user one job 0.5 s
later; the scheduler's own policy runs with per-user rotation and, in the same process on the
same demand, without it (oldest job first inside a tier: the baseline). Prints the other user's
wait under each, how many of the flood's jobs started ahead of it, and the ratio of the waits.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections.abc import Sequence
from typing import Any

from .pool import _seeds  # "1-5,7"; a bad one names --seeds


def run(jobs: int, gpus: int, seeds: list[int], tier: str) -> dict[str, Any]:
    from imagegen_fleet_sim.flood import flood_figures
    from imagegen_scheduler.domain import Tier

    runs = [flood_figures(gpus=gpus, jobs=jobs, tier=Tier(tier), seed=s) for s in seeds]
    ours = [float(r["other_wait_s"]) for r in runs]
    base = [float(r["baseline_other_wait_s"]) for r in runs]
    mean_base = statistics.fmean(base)
    return {
        "bench": "flood",
        "flood_jobs": jobs,
        "gpus": gpus,
        "tier": tier,
        "seeds": seeds,
        "other_wait_s": round(statistics.fmean(ours), 2),
        "baseline_other_wait_s": round(mean_base, 2),
        "ratio_vs_baseline": round(statistics.fmean(ours) / mean_base, 4) if mean_base else None,
        "flood_started_ahead": [r["rotation"]["flood_started_ahead"] for r in runs],
        "baseline_flood_started_ahead": [
            r["baseline_no_rotation"]["flood_started_ahead"] for r in runs
        ],
        "runs": runs,
    }


def table(report: dict[str, Any]) -> str:
    lines = [
        f"flood: {report['flood_jobs']} {report['tier']} jobs from one user at t=0, one job from"
        f" another user at t=0.5 s, {report['gpus']} GPU(s)",
        f"{'seed':>4}  {'rotation wait s':>15}  {'ahead':>5}"
        f"  {'baseline wait s':>15}  {'ahead':>5}",
    ]
    for r in report["runs"]:
        ours, base = r["rotation"], r["baseline_no_rotation"]
        lines.append(
            f"{r['seed']:>4}  {ours['other_wait_s']:>15.2f}  {ours['flood_started_ahead']:>5}"
            f"  {base['other_wait_s']:>15.2f}  {base['flood_started_ahead']:>5}"
        )
    lines.append(
        f"mean: {report['other_wait_s']} s with rotation, {report['baseline_other_wait_s']} s"
        f" without; ratio {report['ratio_vs_baseline']}"
    )
    return "\n".join(lines)


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench flood", description=__doc__)
    parser.add_argument("--jobs", type=int, default=60, help="jobs in the flood")
    parser.add_argument("--gpus", type=int, default=1, help="idle A10G workers")
    parser.add_argument("--seeds", type=_seeds, default=list(range(1, 6)), help="e.g. 1-5")
    parser.add_argument("--tier", choices=("turbo", "fast", "relax"), default="relax")
    parser.add_argument("--json", action="store_true")
    options = parser.parse_args(list(argv))
    if options.jobs < 1 or options.gpus < 1:
        parser.error("need --jobs >= 1 and --gpus >= 1")
    report = run(options.jobs, options.gpus, options.seeds, options.tier)
    print(json.dumps(report) if options.json else table(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))

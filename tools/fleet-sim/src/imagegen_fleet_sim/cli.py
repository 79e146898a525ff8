"""``imagegen simulate``: run the fleet simulator and print its figures.

    simulate --scenario seed-peak|day-shift --policy ours --gpus 100 --json [--hours 1]
             [--seed N] [--load 0.95] [--plot waits.png] [--bound]
             [--pool none|ours] [--eviction score|lru] [--preload on|off] [--rotation on|off]

``--pool ours`` runs the warm pool policy (``imagegen_pool_manager.domain.policy``, ADR 0701)
on the simulated workers; ``--pool none`` (the default) is on-demand loading with LRU eviction,
only what must go (ADR 0110). ``--eviction`` and ``--preload`` apply to ``--pool ours``.

``--plot`` also runs the other policies on the same demand and draws them side by side.

``--scenario flood`` (issue #14, ADR 0620): one user submits ``--flood-jobs`` (60) jobs at once
and another user one job 0.5 s later, on ``--gpus`` (default 1) idle A10Gs; prints the other
user's wait with per-user rotation and without it (the baseline, same process).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from imagegen_scheduler.domain import SchedulerConfig, Tier

from .engine import DEFAULT_EVICTION, EVICTIONS, POLICIES, POOLS, simulate
from .metrics import SimResult
from .scenario import SCENARIOS


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="imagegen simulate", description=__doc__.splitlines()[0])
    parser.add_argument("--scenario", choices=sorted([*SCENARIOS, "flood"]), default="seed-peak")
    parser.add_argument("--policy", choices=sorted(POLICIES), default="ours")
    parser.add_argument(
        "--gpus", type=int, default=None, help="fleet size (60%% A10G, 40%% A100); default 100"
    )
    parser.add_argument(
        "--flood-jobs", type=int, default=60, help="with --scenario flood: jobs in the flood"
    )
    parser.add_argument(
        "--tier",
        choices=[t.value for t in Tier],
        default=Tier.RELAX.value,
        help="with --scenario flood: the tier of both users (relax = the free plan)",
    )
    parser.add_argument("--hours", type=float, default=1.0, help="simulated window")
    parser.add_argument("--seed", type=int, default=1, help="random seed of the demand")
    parser.add_argument(
        "--load", type=float, default=None, help="override the mean arrival rate / capacity"
    )
    parser.add_argument(
        "--pool", choices=POOLS, default="none", help="warm pool policy (ADR 0701) or none"
    )
    parser.add_argument(
        "--eviction",
        choices=EVICTIONS,
        default=DEFAULT_EVICTION,
        help="with --pool ours: the seed's eviction score, or LRU only what must go",
    )
    parser.add_argument(
        "--preload", choices=("on", "off"), default="on", help="with --pool ours: predictive"
    )
    parser.add_argument(
        "--switch-guard",
        choices=("on", "off"),
        default=None,
        help="the scheduler's switch guard (ADR 0712); default: on with --pool ours, off with none",
    )
    parser.add_argument(
        "--rotation",
        choices=("on", "off"),
        default="on",
        help="per-user rotation inside a tier (ADR 0620); off: oldest job first, as before",
    )
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    parser.add_argument("--plot", type=Path, default=None, help="write a PNG of waits over time")
    parser.add_argument(
        "--bound",
        action="store_true",
        help="print the fluid bound of the demand instead of simulating (simulator/bound.py)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["simulate"]:
        args = args[1:]
    options = _parser().parse_args(args)
    if options.scenario == "flood":
        return _flood(options)
    if options.gpus is None:
        options.gpus = 100
    if options.gpus < 2 or options.hours <= 0:
        print("simulate: need --gpus >= 2 and --hours > 0", file=sys.stderr)
        return 2
    scenario = SCENARIOS[options.scenario](options.gpus, options.hours)
    if options.load is not None:
        scenario = dataclasses.replace(scenario, load_factor=options.load)
    if options.bound:
        from .bound import fluid_bound

        print(json.dumps(fluid_bound(scenario, options.seed)))
        return 0
    started = time.perf_counter()
    guard = None if options.switch_guard is None else options.switch_guard == "on"
    pooling: dict[str, Any] = {
        "pool": options.pool,
        "eviction": options.eviction,
        "preload": options.preload == "on",
        "guard": guard,
    }
    config = SchedulerConfig(user_rotation=options.rotation == "on")
    result = simulate(scenario, options.policy, options.seed, config, **pooling)
    summary = result.summary()
    summary["wall_s"] = round(time.perf_counter() - started, 2)
    if options.plot is not None:
        from .plot import plot

        others = [
            simulate(scenario, p, options.seed, config, **pooling)
            for p in POLICIES
            if p != options.policy
        ]
        plot(_in_policy_order([result, *others]), options.plot)
    if options.json:
        print(json.dumps(summary))
    else:
        _print_table(summary)
    return 0


def _flood(options: argparse.Namespace) -> int:
    from .flood import flood_figures

    gpus = 1 if options.gpus is None else options.gpus
    if gpus < 1:
        print("simulate: --scenario flood needs --gpus >= 1", file=sys.stderr)
        return 2
    if options.flood_jobs < 1:
        print("simulate: --flood-jobs must be >= 1", file=sys.stderr)
        return 2
    started = time.perf_counter()
    figures = flood_figures(
        gpus=gpus, jobs=options.flood_jobs, tier=Tier(options.tier), seed=options.seed
    )
    figures["wall_s"] = round(time.perf_counter() - started, 2)
    if options.json:
        print(json.dumps(figures))
    else:
        print(
            f"flood of {figures['flood_jobs']} {figures['tier']} jobs on {gpus} GPU(s): the other"
            f" user's job waits {figures['other_wait_s']} s with rotation,"
            f" {figures['baseline_other_wait_s']} s without"
            f" (ratio {figures['wait_ratio_vs_baseline']})"
        )
    return 0


def _in_policy_order(results: list[SimResult]) -> list[SimResult]:
    order = list(POLICIES)
    return sorted(results, key=lambda r: order.index(r.policy))


def _print_table(summary: dict[str, object]) -> None:
    print(f"policy {summary['policy']}  scenario {summary['scenario']}  gpus {summary['gpus']}")
    tiers = summary["tiers"]
    assert isinstance(tiers, dict)
    for tier, waits in tiers.items():
        figures = "  ".join(f"{k} {v:>7.1f}" for k, v in waits.items())
        print(f"  {tier:<6} {figures}")
    for key in ("gpu_utilization", "warm_hit_rate", "cold_loads_per_hour", "offered_load"):
        print(f"  {key:<20} {summary[key]}")


if __name__ == "__main__":
    raise SystemExit(main())

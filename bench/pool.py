"""The warm pool in the fleet simulator (issue 13, ADR 0701): pool on vs off, seed by seed.

    python -m bench pool [--seeds 1-10] [--hours 1] [--gpus 100] [--noise 0] [--no-day-shift]
                         [--json]

For each seed of ``seed-peak`` (the same runs as ``imagegen simulate --scenario seed-peak
--policy ours --gpus 100 --json --hours 1 --seed N`` with ``--pool none``, ``--pool none
--switch-guard on``, ``--pool ours`` and ``--pool ours --eviction score``; the pool includes
the scheduler's switch guard, ADR 0712, and the second arm shows the guard alone) it prints one
row per run: warm hit, cold loads per hour
(preloads included, and how many of them were preloads), adapter loads, p95 waits per tier and
whether every wait goal was met. Then the issue's targets, checked against those rows, and the
day-shift runs (``--scenario day-shift``: none, ours with preloading off, ours with it on) with
the time to the shifted model's first warm hit.

``--noise K`` also re-runs ``--pool none`` and ``--pool ours`` K times per seed with the same
arrivals and another draw of load and denoising times (``simulate(..., perturb=k)``): the
spread of cold loads between those runs is what a single seed's pool-vs-none difference has
to beat, and the targets are also checked on each seed's mean over its K + 1 draws.

Runs are sequential (about 10-15 s each on one core for 100 GPUs and an hour).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from typing import Any

GOALS = {"turbo": 15.0, "fast": 60.0, "relax": 300.0}
ARMS = (
    ("none", "none (on demand, LRU)", {"pool": "none"}),
    ("guard", "none + switch guard only", {"pool": "none", "guard": True}),
    ("ours", "ours, LRU only-what-must-go (default)", {"pool": "ours", "eviction": "lru"}),
    ("score", "ours, seed eviction score", {"pool": "ours", "eviction": "score"}),
)
NOISY = ("none", "ours")  # the arms --noise draws again


def _seeds(text: str) -> list[int]:
    seeds: list[int] = []
    for part in text.split(","):
        low, _, high = part.partition("-")
        try:
            seeds += list(range(int(low), int(high or low) + 1))
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"--seeds: {text!r} is not like 1-10 or 1,3,5"
            ) from None
    if not seeds:
        raise argparse.ArgumentTypeError("--seeds: no seed given")
    return seeds


def _row(figures: dict[str, Any]) -> dict[str, Any]:
    p95 = {t: figures["tiers"][t]["p95_wait_s"] for t in GOALS}
    preloads = figures.get("preloads_per_hour", {})
    return {
        "warm_hit_rate": figures["warm_hit_rate"],
        "cold_loads_per_hour": figures["cold_loads_per_hour"],
        "preloads_per_hour": round(sum(preloads.values()), 1),
        "adapter_loads_per_hour": figures["adapter_loads_per_hour"],
        "p95_wait_s": p95,
        "goals_met": all(p95[t] <= goal for t, goal in GOALS.items()),
        "pin_overrides": figures.get("pin_overrides"),
    }


def run(
    seeds: Sequence[int],
    hours: float,
    gpus: int,
    noise: int,
    day_shift_runs: bool = True,
    log: Any = None,
) -> dict[str, Any]:
    from imagegen_fleet_sim import simulate
    from imagegen_fleet_sim.scenario import day_shift, seed_peak

    log = log or sys.stderr  # looked up now: a test may have replaced it since the import

    def one(scenario: Any, seed: int, **options: Any) -> dict[str, Any]:
        started = time.perf_counter()
        figures = simulate(scenario, "ours", seed, **options).summary()
        print(
            f"  {scenario.name} seed {seed} {options}: {time.perf_counter() - started:.0f} s",
            file=log,
            flush=True,
        )
        return figures

    peak = seed_peak(gpus, hours)
    rows: dict[str, dict[int, dict[str, Any]]] = {key: {} for key, _, _ in ARMS}
    spread: dict[str, dict[int, list[float]]] = {key: {} for key in NOISY}
    for seed in seeds:
        for key, _, options in ARMS:
            rows[key][seed] = _row(one(peak, seed, **options))
        for key in NOISY:
            options = next(o for k, _, o in ARMS if k == key)
            spread[key][seed] = [rows[key][seed]["cold_loads_per_hour"]] + [
                one(peak, seed, perturb=k, **options)["cold_loads_per_hour"]
                for k in range(1, noise + 1)
            ]
    shift = day_shift(gpus, hours)
    shifted: dict[str, dict[str, Any]] = {}
    runs: list[tuple[str, dict[str, Any]]] = [
        ("none", {"pool": "none"}),
        ("ours, preload off", {"pool": "ours", "preload": False}),
        ("ours, preload on", {"pool": "ours", "preload": True}),
    ]
    for name, options in runs if day_shift_runs else []:
        figures = one(shift, seeds[0], **options)
        shifted[name] = {
            **figures["shift"],
            "cold_loads_per_hour": figures["cold_loads_per_hour"],
            "preloads_per_hour": figures.get("preloads_per_hour", {}),
            "warm_hit_rate": figures["warm_hit_rate"],
            "p95_wait_s": {t: figures["tiers"][t]["p95_wait_s"] for t in GOALS},
        }
    none, ours = rows["none"], rows["ours"]
    targets = {
        "warm_hit_seed_1_at_least_95": (
            ours[seeds[0]]["warm_hit_rate"] >= 0.95 if seeds[0] == 1 else None
        ),
        "goals_met_seeds": sum(ours[s]["goals_met"] for s in seeds),
        "goals_met_at_least_9_of_10": sum(ours[s]["goals_met"] for s in seeds) >= 0.9 * len(seeds),
        "fewer_cold_loads_seeds": sum(
            ours[s]["cold_loads_per_hour"] < none[s]["cold_loads_per_hour"] for s in seeds
        ),
        "fewer_cold_loads_every_seed": all(
            ours[s]["cold_loads_per_hour"] < none[s]["cold_loads_per_hour"] for s in seeds
        ),
    }
    if noise:
        fewer_mean = [_mean(spread["ours"][s]) < _mean(spread["none"][s]) for s in seeds]
        targets["fewer_cold_loads_seeds_mean_of_draws"] = sum(fewer_mean)
        targets["fewer_cold_loads_every_seed_mean_of_draws"] = all(fewer_mean)
    return {
        "bench": "pool",
        "gpus": gpus,
        "hours": hours,
        "seeds": list(seeds),
        "rows": {key: {str(s): r for s, r in by_seed.items()} for key, by_seed in rows.items()},
        "none_cold_loads_noise": ({str(s): v for s, v in spread["none"].items()} if noise else {}),
        "ours_cold_loads_noise": ({str(s): v for s, v in spread["ours"].items()} if noise else {}),
        "targets": targets,
        "day_shift": shifted,
    }


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def table(report: dict[str, Any]) -> str:
    seeds = report["seeds"]
    lines = [
        "| seed | pool / eviction | warm hit | cold loads/h (preloads) | adapter loads/h "
        "| turbo p95 s | fast p95 s | relax p95 s | goals |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for seed in seeds:
        for key, label, _ in ARMS:
            r = report["rows"][key][str(seed)]
            p95 = r["p95_wait_s"]
            lines.append(
                f"| {seed} | {label} | {100 * r['warm_hit_rate']:.1f}% "
                f"| {r['cold_loads_per_hour']:.0f} ({r['preloads_per_hour']:.0f}) "
                f"| {r['adapter_loads_per_hour']:.0f} | {p95['turbo']:.1f} | {p95['fast']:.1f} "
                f"| {p95['relax']:.1f} | {'all met' if r['goals_met'] else 'miss'} |"
            )
    lines.append("")
    none = report["rows"]["none"]
    for key, label, _ in ARMS:
        rows = [report["rows"][key][str(s)] for s in seeds]
        fewer = sum(
            report["rows"][key][str(s)]["cold_loads_per_hour"] < none[str(s)]["cold_loads_per_hour"]
            for s in seeds
        )
        lines.append(
            f"{label}: goals met on {sum(r['goals_met'] for r in rows)} of {len(rows)}, "
            f"mean warm hit {100 * _mean([r['warm_hit_rate'] for r in rows]):.2f}%, "
            f"mean cold/h {_mean([r['cold_loads_per_hour'] for r in rows]):.1f}, "
            f"mean adapter loads/h {_mean([r['adapter_loads_per_hour'] for r in rows]):.0f}, "
            f"fewer cold loads than none on {fewer} seeds"
        )
    if report["none_cold_loads_noise"]:
        lines += [
            "",
            "cold loads/h over re-draws of load and denoising times (same arrivals; the table's "
            "run first):",
            "",
            "| seed | none, each draw | none, mean | ours, each draw | ours, mean |",
            "|---|---|---|---|---|",
        ]
        ours_noise = report.get("ours_cold_loads_noise", {})
        for seed, values in report["none_cold_loads_noise"].items():
            mine = ours_noise.get(seed, [])
            lines.append(
                f"| {seed} | {', '.join(f'{v:.0f}' for v in values)} | {_mean(values):.1f} "
                f"| {', '.join(f'{v:.0f}' for v in mine)} | {_mean(mine):.1f} |"
            )
    lines += ["", "targets: " + json.dumps(report["targets"]), ""]
    lines.append(
        "| day-shift run | holders at the shift | first warm hit after the shift s "
        "| base-warm rate, 15 min after "
        "| cold loads/h (predictive, storm) | warm hit | turbo / fast / relax p95 s |"
    )
    lines.append("|---|---|---|---|---|---|---|")
    if not report["day_shift"]:
        lines = lines[:-2]
    for name, r in report["day_shift"].items():
        pre = r["preloads_per_hour"]
        p95 = r["p95_wait_s"]
        lines.append(
            f"| {name} | {r['holders_at_shift']} | {r['first_warm_hit_after_s']} "
            f"| {r['base_warm_hit_rate_15_min']} "
            f"| {r['cold_loads_per_hour']:.0f} ({pre.get('predictive', 0):.0f}, "
            f"{pre.get('storm', 0):.0f}) | {100 * r['warm_hit_rate']:.1f}% "
            f"| {p95['turbo']} / {p95['fast']} / {p95['relax']} |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench pool", description=__doc__)
    parser.add_argument("--seeds", type=_seeds, default=list(range(1, 11)), help="e.g. 1-10")
    parser.add_argument("--hours", type=float, default=1.0)
    parser.add_argument("--gpus", type=int, default=100)
    parser.add_argument("--noise", type=int, default=0, help="extra none runs per seed")
    parser.add_argument("--no-day-shift", action="store_true", help="skip the day-shift runs")
    parser.add_argument("--json", action="store_true")
    options = parser.parse_args(list(argv))
    if options.gpus < 2 or options.hours <= 0 or options.noise < 0:
        parser.error("need --gpus >= 2, --hours > 0 and --noise >= 0")
    report = run(
        options.seeds, options.hours, options.gpus, options.noise, not options.no_day_shift
    )
    print(json.dumps(report) if options.json else table(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))

"""Per-tier wait over time, one panel per policy (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from .metrics import SimResult, percentile

BIN_S = 60.0
COLORS = {"turbo": "tab:red", "fast": "tab:orange", "relax": "tab:blue"}
TARGETS = {"turbo": 15.0, "fast": 60.0, "relax": 300.0}


def p95_per_bin(result: SimResult) -> dict[str, tuple[list[float], list[float]]]:
    """Per tier: (bin start in minutes, p95 wait in seconds of the jobs assigned in that bin)."""
    bins: dict[str, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    for at, tier, wait in result.timeline:
        bins[tier][int(at // BIN_S)].append(wait)
    series = {}
    for tier, by_bin in bins.items():
        keys = sorted(by_bin)
        series[tier] = (
            [k * BIN_S / 60 for k in keys],
            [max(0.1, percentile(sorted(by_bin[k]), 0.95)) for k in keys],
        )
    return series


def plot(results: list[SimResult], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(5 * len(results), 4), sharey=True)
    axes = axes if len(results) > 1 else [axes]
    for ax, result in zip(axes, results, strict=True):
        for tier, (minutes, p95) in sorted(p95_per_bin(result).items()):
            ax.plot(minutes, p95, label=f"{tier} p95", color=COLORS.get(tier))
            ax.axhline(TARGETS[tier], color=COLORS.get(tier), linestyle=":", linewidth=1)
        ax.set_yscale("log")
        ax.set_title(f"{result.policy} ({result.gpus} GPUs, {result.scenario})")
        ax.set_xlabel("simulated minute")
        ax.grid(True, which="both", alpha=0.3)
    axes[0].set_ylabel("wait of jobs assigned in the minute, p95 (s)")
    axes[0].legend(loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)

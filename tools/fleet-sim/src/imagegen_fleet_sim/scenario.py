"""Scenarios: the fleet, the model registry and the demand a simulation runs against.

Figures follow the seed design: A10G 24 GB and A100 80 GB workers; SDXL, SD3 and Flux with the
seed's load times (8-15 s, 10-18 s, 12-20 s), LoRAs 0.5-2 s, ControlNets 2-4 s; SDXL at
1024x1024, 30 steps takes ~9 s on an A10G. Every number here was fixed before the policies were
compared; docs/scheduling.md explains them.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from imagegen_scheduler.domain import (
    AdapterKind,
    AdapterSpec,
    ModelCatalog,
    ModelSpec,
    Tier,
)


@dataclass(frozen=True, slots=True)
class GpuType:
    name: str  # e.g. "A10G-24GB"
    budget_gb: float  # VRAM for models and activations: total minus safety models and CUDA
    speed: float  # relative throughput (A10G = 1.0)
    capabilities: frozenset[str]  # model families it can run
    # What the worker's own eviction keeps resident weights within, where it differs from the
    # scheduler's budget (a replayed CPU fleet: the whole memory setting, ADR 0713); None: same
    memory_gb: float | None = None

    @property
    def residency_gb(self) -> float:
        return self.budget_gb if self.memory_gb is None else self.memory_gb


A10G = GpuType("A10G-24GB", 20.0, 1.0, frozenset({"sdxl", "sd3"}))
A100 = GpuType("A100-80GB", 74.0, 1.6, frozenset({"sdxl", "sd3", "flux"}))

STEPS = {"sd15": 25, "sdxl": 30, "sd3": 28, "flux": 28}


def seed_catalog() -> ModelCatalog:
    models = [
        ModelSpec("sdxl-base-1.0", "sdxl", 13.5, (8.0, 15.0), 0.28, 2.0),
        ModelSpec("juggernaut-xl", "sdxl", 13.5, (8.0, 15.0), 0.28, 2.0),
        ModelSpec("dreamshaper-xl", "sdxl", 13.5, (8.0, 15.0), 0.28, 2.0),
        ModelSpec("sd3-medium", "sd3", 15.0, (10.0, 18.0), 0.34, 2.4),
        ModelSpec("flux-dev", "flux", 33.0, (12.0, 20.0), 0.55, 3.5),
    ]
    adapters: list[AdapterSpec] = []
    for family, count, low_gb in (("sdxl", 40, 0.15), ("sd3", 5, 0.2), ("flux", 10, 0.3)):
        for i in range(count):
            size = low_gb + 0.3 * ((i * 7) % 10) / 10
            adapters.append(
                AdapterSpec(
                    f"lora/{family}-{i:02d}", AdapterKind.LORA, family, size, (0.5, 2.0), 0.0
                )
            )
    for kind in ("canny", "depth", "openpose", "lineart"):
        adapters.append(
            AdapterSpec(f"cn/sdxl-{kind}", AdapterKind.CONTROLNET, "sdxl", 2.5, (2.0, 4.0), 0.2)
        )
    for kind in ("canny", "depth"):
        adapters.append(
            AdapterSpec(f"cn/flux-{kind}", AdapterKind.CONTROLNET, "flux", 3.5, (2.0, 4.0), 0.25)
        )
    return ModelCatalog(
        models={m.model_id: m for m in models}, adapters={a.adapter_id: a for a in adapters}
    )


@dataclass(frozen=True, slots=True)
class Flood:
    at_s: float  # one user's script submits ...
    tier: Tier  # ... in this tier ...
    count: int  # ... this many jobs at once


@dataclass(frozen=True, slots=True)
class Shift:
    """From ``at_s`` on, requests draw their base model from ``model_mix`` instead (and every day
    at that time of day, for the history the pool policy learns its hourly weights from)."""

    at_s: float
    model_mix: dict[str, float]
    model_id: str  # the model whose popularity rises (reported: time to its first warm hit)


@dataclass(frozen=True, slots=True)
class Scenario:
    name: str
    fleet: tuple[tuple[GpuType, int], ...]  # GPU types and counts
    hours: float  # simulated window
    start_hour: float  # time of day at t = 0 (10.0 = 10:00, the seed's peak snapshot)
    load_factor: float  # mean arrival rate at peak, bursts included / warm fleet capacity
    backlog: dict[Tier, int]  # jobs already queued at t = 0
    tier_mix: dict[Tier, float]  # share of arrivals per tier
    users: dict[Tier, int]  # distinct users per tier
    user_activity_sigma: float  # per-user request rates are log-normal with this sigma
    model_mix: dict[str, float]  # share of requests per base model
    sizes: dict[tuple[int, int], float]  # (width, height) -> share
    batches: dict[int, float]  # images per request -> share
    lora_counts: dict[int, float]  # LoRAs per request -> share (Zipf over the family's LoRAs)
    controlnet_counts: dict[int, float]  # ControlNets per request -> share
    bursts_per_hour: float  # Poisson rate of demand bursts
    burst: tuple[float, float]  # (duration s, rate factor) of each burst
    floods: tuple[Flood, ...] = field(default=())
    shift: Shift | None = None  # a change of model popularity during the window

    @property
    def gpus(self) -> int:
        return sum(n for _, n in self.fleet)


def seed_peak(gpus: int = 100, hours: float = 1.0) -> Scenario:
    """The seed's starvation snapshot at 10:00: 80 turbo, 260 fast, 1200 relax queued (per 100
    GPUs); arrivals go on at 95% of the fleet's warm capacity on average over the peak hour,
    bursts included; on top come two floods (one user submitting hundreds of jobs at once)."""
    a100 = round(gpus * 0.4)
    scale = gpus / 100
    backlog = {Tier.TURBO: 80, Tier.FAST: 260, Tier.RELAX: 1200}
    return Scenario(
        name="seed-peak",
        fleet=((A10G, gpus - a100), (A100, a100)),
        hours=hours,
        start_hour=10.0,
        load_factor=0.95,
        backlog={t: round(n * scale) for t, n in backlog.items()},
        tier_mix={t: n / 1540 for t, n in backlog.items()},
        users={
            t: max(5, round(n * scale))
            for t, n in ((Tier.TURBO, 200), (Tier.FAST, 800), (Tier.RELAX, 4000))
        },
        user_activity_sigma=1.0,
        model_mix={
            "sdxl-base-1.0": 0.52,
            "juggernaut-xl": 0.07,
            "dreamshaper-xl": 0.05,
            "sd3-medium": 0.16,
            "flux-dev": 0.20,
        },
        sizes={(1024, 1024): 0.70, (1152, 896): 0.12, (768, 768): 0.08, (1536, 1536): 0.10},
        batches={1: 0.85, 2: 0.10, 4: 0.05},
        lora_counts={0: 0.6, 1: 0.3, 2: 0.1},
        controlnet_counts={0: 0.82, 1: 0.15, 2: 0.03},
        bursts_per_hour=4.0,
        burst=(120.0, 1.4),
        floods=(
            Flood(600.0, Tier.RELAX, round(300 * scale)),
            Flood(1800.0, Tier.TURBO, round(40 * scale)),
        ),
    )


def day_shift(gpus: int = 100, hours: float = 1.0) -> Scenario:
    """A day profile with a popularity shift: from 08:30, no backlog, 60% of warm capacity (so
    there are quiet periods); at 09:00 (t = 30 min) SD3 goes from 2% to 40% of requests, every
    day. Exercises predictive preloading: the hourly weights learned from the previous day know
    the shift; LRU alone only loads SD3 when its jobs arrive. Fixed before measuring."""
    base = seed_peak(gpus, hours)
    before = {
        "sdxl-base-1.0": 0.62,
        "juggernaut-xl": 0.08,
        "dreamshaper-xl": 0.06,
        "sd3-medium": 0.02,
        "flux-dev": 0.22,
    }
    after = {
        "sdxl-base-1.0": 0.34,
        "juggernaut-xl": 0.05,
        "dreamshaper-xl": 0.04,
        "sd3-medium": 0.40,
        "flux-dev": 0.17,
    }
    return replace(
        base,
        name="day-shift",
        start_hour=8.5,
        load_factor=0.6,
        backlog={t: 0 for t in base.backlog},
        model_mix=before,
        floods=(),
        shift=Shift(1800.0, after, "sd3-medium"),
    )


# Pool tiers of the seed catalog (the seed's "Warm Pool Architecture"): SDXL base always hot, SD3
# and Flux frequently used, the fine-tunes on demand; the popular ControlNets (depth, canny) are
# tier 2, LoRAs tier 3. The scheduler's ModelSpec has no tier, so the map lives here.
SEED_TIERS: dict[str, int] = {
    "sdxl-base-1.0": 1,
    "sd3-medium": 2,
    "flux-dev": 2,
    "cn/sdxl-canny": 2,
    "cn/sdxl-depth": 2,
    "cn/flux-canny": 2,
    "cn/flux-depth": 2,
}

SCENARIOS = {"seed-peak": seed_peak, "day-shift": day_shift}

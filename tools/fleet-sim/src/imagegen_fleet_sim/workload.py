"""Demand: requests drawn from a scenario's mixes, arriving with a daily pattern and bursts."""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from itertools import accumulate
from typing import Generic, TypeVar

from imagegen_scheduler.domain import AdapterKind, JobRequest, ModelCatalog, Tier, denoise_s

from .scenario import STEPS, Scenario

T = TypeVar("T")


class _Choice(Generic[T]):
    """Weighted choice with precomputed cumulative weights."""

    def __init__(self, values: Sequence[T], weights: Sequence[float]) -> None:
        self.values = list(values)
        self.cum = list(accumulate(weights))

    def pick(self, rng: random.Random) -> T:
        return rng.choices(self.values, cum_weights=self.cum)[0]


def _zipf(names: Sequence[str], s: float) -> _Choice[str]:
    return _Choice(names, [1 / (rank + 1) ** s for rank in range(len(names))])


class RequestSampler:
    def __init__(self, scenario: Scenario, catalog: ModelCatalog) -> None:
        self.catalog = catalog
        self.models = _Choice(list(scenario.model_mix), list(scenario.model_mix.values()))
        shift = scenario.shift
        self.shift_at = shift.at_s if shift is not None else None
        self.shifted = (
            _Choice(list(shift.model_mix), list(shift.model_mix.values())) if shift else self.models
        )
        self.sizes = _Choice(list(scenario.sizes), list(scenario.sizes.values()))
        self.batches = _Choice(list(scenario.batches), list(scenario.batches.values()))
        self.loras = _Choice(list(scenario.lora_counts), list(scenario.lora_counts.values()))
        self.cns = _Choice(
            list(scenario.controlnet_counts), list(scenario.controlnet_counts.values())
        )
        activity = random.Random(7)
        self.users = {
            t: _Choice(
                [f"{t}-user-{i}" for i in range(n)],
                [activity.lognormvariate(0.0, scenario.user_activity_sigma) for _ in range(n)],
            )
            for t, n in scenario.users.items()
        }
        self.adapters: dict[tuple[str, AdapterKind], _Choice[str]] = {}
        for kind in AdapterKind:
            for family in {m.family for m in catalog.models.values()}:
                names = sorted(
                    a.adapter_id
                    for a in catalog.adapters.values()
                    if a.family == family and a.kind is kind
                )
                if names:
                    self.adapters[(family, kind)] = _zipf(names, 1.1)

    def user(self, tier: Tier, rng: random.Random) -> str:
        return self.users[tier].pick(rng)

    def request(
        self, job_id: str, tier: Tier, user: str, at: float, rng: random.Random
    ) -> JobRequest:
        shifted = self.shift_at is not None and at >= self.shift_at
        model_id = (self.shifted if shifted else self.models).pick(rng)
        family = self.catalog.models[model_id].family
        width, height = self.sizes.pick(rng)
        adapters: list[str] = []
        for kind, counts in ((AdapterKind.LORA, self.loras), (AdapterKind.CONTROLNET, self.cns)):
            choice = self.adapters.get((family, kind))
            wanted = counts.pick(rng)
            if choice is None:
                continue
            wanted = min(wanted, len(choice.values))
            picked: list[str] = []
            while len(picked) < wanted:
                name = choice.pick(rng)
                if name not in picked:
                    picked.append(name)
            adapters += picked
        batch = self.batches.pick(rng)
        return JobRequest(
            job_id, user, tier, model_id, tuple(adapters), width, height, batch, STEPS[family], at
        )


def daily_factor(hour_of_day: float) -> float:
    """Demand relative to the daily peak (11:00): 1.0 at peak, 0.1 at 23:00."""
    return 0.55 + 0.45 * math.cos(2 * math.pi * (hour_of_day - 11.0) / 24)


def capacity_jobs_per_s(scenario: Scenario, sampler: RequestSampler) -> float:
    """Jobs per second the fleet finishes when every GPU denoises warm jobs of the mix."""
    rng = random.Random(0)
    tiers = list(scenario.tier_mix)
    samples = [sampler.request("x", t, "u", 0.0, rng) for t in tiers * 1500]
    work = [denoise_s(r, r.steps, 1.0, sampler.catalog) for r in samples]
    mean_work = sum(work) / len(work)
    speed = sum(gpu.speed * n for gpu, n in scenario.fleet)
    return speed / mean_work


def arrivals(
    scenario: Scenario, sampler: RequestSampler, peak_rate: float, rng: random.Random
) -> list[JobRequest]:
    """Backlog at t = 0, then Poisson arrivals (thinned to the daily pattern and bursts), floods."""
    jobs: list[JobRequest] = []

    def add(tier: Tier, at: float, user: str | None = None) -> None:
        who = user if user is not None else sampler.user(tier, rng)
        jobs.append(sampler.request(f"{tier}-{len(jobs)}", tier, who, at, rng))

    for tier, count in scenario.backlog.items():
        for _ in range(count):
            add(tier, 0.0)
    end = scenario.hours * 3600
    bursts = []
    t = rng.expovariate(scenario.bursts_per_hour / 3600) if scenario.bursts_per_hour else end
    while t < end:
        bursts.append(t)
        t += rng.expovariate(scenario.bursts_per_hour / 3600)
    duration, factor = scenario.burst
    # peak_rate is the mean including bursts: the base rate leaves room for the expected bursts.
    burst_share = min(1.0, scenario.bursts_per_hour * duration / 3600)
    base_rate = peak_rate / (1 + burst_share * (factor - 1))
    top = base_rate * factor
    tiers = _Choice(list(scenario.tier_mix), list(scenario.tier_mix.values()))
    t = 0.0
    while True:
        t += rng.expovariate(top)
        if t >= end:
            break
        rate = base_rate * daily_factor(scenario.start_hour + t / 3600)
        if any(start <= t < start + duration for start in bursts):
            rate *= factor
        if rng.random() * top < rate:
            add(tiers.pick(rng), t)
    for flood in scenario.floods:
        for _ in range(flood.count):
            add(flood.tier, flood.at_s, f"{flood.tier}-flooder")
    jobs.sort(key=lambda job: job.queued_at)
    return jobs


def model_history(
    scenario: Scenario, peak_rate: float, rng: random.Random, sample: float = 0.1
) -> list[tuple[float, str]]:
    """A previous day's ``(time of day s, model)`` arrivals, ``sample`` of the scenario's rate,
    with its daily pattern and its popularity shift at the same time of day: the log the pool
    policy learns its hourly weights from (``learn_hourly_weights``)."""
    before = _Choice(list(scenario.model_mix), list(scenario.model_mix.values()))
    after = before
    shift_hour = 25.0
    if scenario.shift is not None:
        after = _Choice(list(scenario.shift.model_mix), list(scenario.shift.model_mix.values()))
        shift_hour = (scenario.start_hour + scenario.shift.at_s / 3600) % 24
    history: list[tuple[float, str]] = []
    for hour in range(24):
        mix = after if hour >= shift_hour else before
        count = round(peak_rate * 3600 * sample * daily_factor(hour + 0.5))
        for _ in range(count):
            at = (hour + rng.random()) * 3600
            history.append((at, mix.pick(rng)))
    return history

"""The policy's knobs. The service builds one from its settings; the simulator from a scenario."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from .model import Tier


def _tiers(turbo: float, fast: float, relax: float) -> dict[Tier, float]:
    return {Tier.TURBO: turbo, Tier.FAST: fast, Tier.RELAX: relax}


@dataclass(frozen=True, slots=True)
class SchedulerConfig:
    """Scheduling policy configuration; defaults are the seed design's numbers."""

    # Relative tier weights. A job's urgency is weight x (1 + wait / tau): the weights set how
    # much more urgent a higher tier's job is than a lower tier's job that waited as long.
    tier_weights: Mapping[Tier, float] = field(default_factory=lambda: _tiers(10, 5, 1))
    # Aging: a relax job that has waited this long ranks with a fresh turbo job (promotion).
    promote_after_s: float = 300.0
    # Share of accepting workers guaranteed to relax while relax has work that fits them.
    relax_reserve_fraction: float = 0.2
    # Most workers one user may occupy in one tier, as a share of accepting workers (at least 1).
    user_share: float = 0.05
    # Per-user rotation inside a tier (ADR 0620): the job a tier gives a free worker is the oldest
    # job of the user served least recently in that tier, so one user's flood interleaves with
    # everybody else's jobs. Only users who queue more jobs in a tier than ``user_share`` lets
    # them run at once take turns; the others keep age order.
    # False: oldest job first inside a tier (the order before ADR 0620).
    user_rotation: bool = True
    # Warm-model affinity looks at most this many of the chosen tier's jobs whose base model the
    # worker holds (oldest first).
    lookahead: int = 64
    # A tier's head job may be passed over for a warmer one only while it has waited less than
    # this; after that it takes the next worker it fits (cold jobs are not starved).
    affinity_patience_s: Mapping[Tier, float] = field(default_factory=lambda: _tiers(5, 30, 120))
    # Past its patience a job is still passed over by a colder worker while a worker that holds
    # it warmer is idle or expected to finish its job before the passed-over job has waited this
    # long (at most its wait target): an 8-20 s model load is not started for a job that a warm
    # worker will start within its target anyway. After this long, only the patience rule holds.
    warm_wait_s: Mapping[Tier, float] = field(default_factory=lambda: _tiers(10, 45, 120))
    # Wait targets (p95 goals). Preemption fires when a turbo job would exceed its target.
    wait_targets_s: Mapping[Tier, float] = field(default_factory=lambda: _tiers(15, 60, 300))
    # Pool preference: a worker leaves a job that a worker with a smaller memory budget can also
    # run to the smaller workers until the job has waited its tier's wait target (so large
    # workers serve the jobs only they can hold), unless it has no other candidate.
    pool_preference: bool = True
    # Relax pool balance (ADR 0108): for relax, pool preference releases a job to the larger
    # workers once it is at least as old as the oldest relax job only they can run, rather than
    # at the wait target: the relax queues of the two pools are served oldest first together, so
    # neither pool's relax work falls behind the other's.
    relax_pool_balance: bool = True
    # Relax cold deadline (ADR 0108): a relax head that has waited this long is not passed over
    # for a warm pick that arrived ``relax_cold_gap_s`` or more after it; the worker loads the
    # head's model instead, so the models with few holders do not fall behind the others. None
    # switches it off.
    relax_cold_after_s: float | None = 270.0
    relax_cold_gap_s: float = 90.0
    # Relax adapter wait (ADR 0109): past its warm wait, a relax job on a worker that holds its
    # base model but not all its adapters is passed over for a worker that holds them too only
    # while such a worker is idle or expected to finish within this many seconds; otherwise this
    # worker takes it and loads the adapters (0.5-4 s) rather than leaving it to wait for the
    # few workers that hold them. None switches it off (wait for any fully warm worker).
    relax_adapter_wait_s: float | None = 10.0
    # Switch guard (ADR 0712; part of the warm pool: on with ``--pool ours`` and in the
    # service): a cold head that a busy worker holds warmer waits for it up to its wait target
    # (instead of ``warm_wait_s``) when loading it here would unload a base model with at least
    # as many queued jobs per holder as the head's model would have with this worker added.
    # False: today's rule.
    guard_switches: bool = False
    # Whether a turbo job may pause a running relax job at a step boundary.
    preemption: bool = True
    # A tier scan stops after this many queued jobs; bounds the cost of one decision.
    max_scan: int = 512

    def __post_init__(self) -> None:
        if set(self.tier_weights) != set(Tier) or min(self.tier_weights.values()) <= 0:
            raise ValueError("tier_weights needs a positive weight for each of turbo, fast, relax")
        if self.tier_weights[Tier.TURBO] <= self.tier_weights[Tier.RELAX]:
            raise ValueError("tier_weights: turbo must weigh more than relax (e.g. 10/5/1)")
        if self.promote_after_s <= 0:
            raise ValueError("promote_after_s must be > 0 seconds (default 300)")
        if not 0.0 <= self.relax_reserve_fraction < 1.0:
            raise ValueError("relax_reserve_fraction must be in [0, 1), e.g. 0.2")
        if not 0.0 < self.user_share <= 1.0:
            raise ValueError("user_share must be in (0, 1], e.g. 0.05")
        if any(self.warm_wait_s[t] > self.wait_targets_s[t] for t in Tier):
            raise ValueError("warm_wait_s must not exceed wait_targets_s (bounded wait)")
        if self.relax_cold_after_s is not None and (
            self.relax_cold_after_s < 0 or self.relax_cold_gap_s < 0
        ):
            raise ValueError("relax_cold_after_s and relax_cold_gap_s must be >= 0 seconds")
        if self.relax_adapter_wait_s is not None and self.relax_adapter_wait_s < 0:
            raise ValueError("relax_adapter_wait_s must be >= 0 seconds (default 10)")
        if self.lookahead < 1 or self.max_scan < self.lookahead:
            raise ValueError("need 1 <= lookahead <= max_scan")

    @property
    def aging_scale_s(self) -> float:
        """tau in urgency = weight x (1 + wait / tau); 33.3 s by default.

        Chosen so that a relax job that has waited ``promote_after_s`` is as urgent as a turbo
        job that has just arrived: 1 x (1 + 300 / tau) = 10 x (1 + 0).
        """
        ratio = self.tier_weights[Tier.TURBO] / self.tier_weights[Tier.RELAX]
        return self.promote_after_s / (ratio - 1)

    def urgency(self, tier: Tier, waited_s: float) -> float:
        """The ordering key between tiers; larger is served first."""
        return self.tier_weights[tier] * (1 + max(0.0, waited_s) / self.aging_scale_s)

"""The warm pool policy (domain/policy.py, ADR 0701): pure functions, plain values in and out."""

from __future__ import annotations

from dataclasses import replace

import pytest

from imagegen_pool_manager.domain.policy import (
    HOUR_S,
    AutoscaleConfig,
    Load,
    ModelInfo,
    PoolConfig,
    PoolLoad,
    QueuedWork,
    Resident,
    WorkerState,
    desired_workers,
    eviction_score,
    holders_needed,
    is_quiet,
    learn_hourly_weights,
    pick_victims,
    pin_targets,
    predict_demand,
    preload_plan,
    storm_plan,
)

pytestmark = pytest.mark.unit

NOW = 100 * HOUR_S
TIERS = {"sdxl": 1, "sd3": 2, "flux": 2}
MODELS = {
    "sdxl": ModelInfo("sdxl", "sdxl", 13.5, 1),
    "sd3": ModelInfo("sd3", "sd3", 15.0, 2),
    "flux": ModelInfo("flux", "flux", 33.0, 2),
    "jugg": ModelInfo("jugg", "sdxl", 13.5, 3),
    "dream": ModelInfo("dream", "sdxl", 13.5, 3),
    "extra": ModelInfo("extra", "sdxl", 13.5, 3),
}


def worker(
    worker_id: str,
    *resident: Resident,
    idle: bool = True,
    budget: float = 74.0,
    caps: frozenset[str] = frozenset({"sdxl", "sd3", "flux"}),
    pinned: frozenset[str] = frozenset(),
) -> WorkerState:
    return WorkerState(worker_id, "A100", caps, budget, resident, idle, pinned)


def item(name: str, size: float = 10.0, idle_h: float = 0.0, uses: int = 0) -> Resident:
    return Resident(name, size, NOW - idle_h * HOUR_S, uses)


# --- eviction -----------------------------------------------------------------------------------


def test_the_eviction_score_is_the_seeds_formula() -> None:
    # 3 h idle x 10 - 4 uses x 5 - tier 2 100 - 2 queued x 20
    assert eviction_score(item("m", idle_h=3, uses=4), tier=2, queued=2, now=NOW) == pytest.approx(
        30 - 20 - 100 - 40
    )
    assert eviction_score(item("m", idle_h=1.5), tier=3, queued=0, now=NOW) == pytest.approx(15)
    assert eviction_score(item("m"), tier=1, queued=0, now=NOW) == -1000


def test_score_ordering_as_the_seed_writes_it() -> None:
    def score(**kw: float) -> float:
        tier = int(kw.pop("tier", 3))
        queued = int(kw.pop("queued", 0))
        return eviction_score(item("m", **kw), tier=tier, queued=queued, now=NOW)  # type: ignore[arg-type]

    assert score(idle_h=5) > score(idle_h=1)  # older goes first
    assert score(uses=1) > score(uses=10)  # less used goes first
    assert score(tier=3) > score(tier=2) > score(tier=1)  # lower tier goes first
    assert score(queued=0) > score(queued=3)  # queued demand protects


def test_victims_are_taken_by_score_and_only_what_must_go() -> None:
    resident = [
        item("old-busy", 10, idle_h=2, uses=20),  # least recent, but used a lot: -80
        item("idle", 10, idle_h=1),  # +10
        item("small", 1, idle_h=0.5),  # +5
    ]
    # need 60 of 74: 21 GB held, must free 7: "idle" (highest score) is enough
    victims = pick_victims(resident, (), 60.0, 74.0, now=NOW, tiers={}, queued={})
    assert victims == ["idle"]
    # plain LRU (all scores equal) would take the least recent first
    lru = pick_victims(
        [Resident(r.name, r.size, 0.0) for r in resident], (), 60, 74, now=0, tiers={}, queued={}
    )
    assert lru == ["old-busy"]


def test_victims_give_back_what_did_not_have_to_go() -> None:
    # score order: small (idle 3 h), big (idle 2 h); big alone frees enough: small is given back
    resident = [item("small", 1, idle_h=3), item("big", 10, idle_h=2)]
    assert pick_victims(resident, (), 14.0, 20.0, now=NOW, tiers={}, queued={}) == ["big"]


def test_a_pinned_tier1_model_is_never_evicted() -> None:
    resident = [item("sdxl", 13.5, idle_h=50), item("jugg", 13.5)]
    victims = pick_victims(
        resident, (), 50.0, 74.0, now=NOW, tiers=TIERS, queued={}, pinned={"sdxl"}
    )
    assert victims == ["jugg"]
    # cannot fit without the pinned model: None (the caller must not assign it here)
    assert (
        pick_victims(resident, (), 70.0, 74.0, now=NOW, tiers=TIERS, queued={}, pinned={"sdxl"})
        is None
    )
    # the job itself needs the pinned model: it is kept, and does not count twice
    assert pick_victims(
        resident, {"sdxl"}, 65.0, 74.0, now=NOW, tiers=TIERS, queued={}, pinned={"sdxl"}
    ) == ["jugg"]


def test_an_unpinned_tier1_copy_goes_last() -> None:
    resident = [item("sdxl", 13.5, idle_h=50), item("flux", 33, idle_h=1), item("jugg", 13.5)]
    # scores: sdxl 500 - 1000, flux 10 - 100, jugg 0
    assert pick_victims(resident, (), 25.0, 74.0, now=NOW, tiers=TIERS, queued={}) == ["jugg"]
    # jugg alone is not enough: flux goes, and jugg is given back (only what must go)
    assert pick_victims(resident, (), 30.0, 74.0, now=NOW, tiers=TIERS, queued={}) == ["flux"]


def test_pick_victims_does_not_mutate_and_respects_keep_and_budget() -> None:
    resident = [item("a", 10, idle_h=1), item("b", 10, idle_h=2)]
    before = list(resident)
    assert pick_victims(resident, {"a"}, 15.0, 20.0, now=NOW, tiers={}, queued={}) == ["b"]
    assert resident == before
    assert pick_victims(resident, (), 30.0, 20.0, now=NOW, tiers={}, queued={}) is None
    assert pick_victims(resident, (), 0.0, 20.0, now=NOW, tiers={}, queued={}) == []


def test_pins_go_to_large_workers_holding_the_model_up_to_the_minimum() -> None:
    a10g = [
        worker(f"a10g-{i}", item("sdxl", 13.5), budget=20.0, caps=frozenset({"sdxl", "sd3"}))
        for i in range(3)
    ]
    a100 = [worker("a100-0"), worker("a100-1", item("sdxl", 13.5)), worker("a100-2")]
    pins = pin_targets([*a10g, *a100], MODELS, PoolConfig(tier1_min_workers=2))
    assert pins == {"a100-1": frozenset({"sdxl"}), "a100-0": frozenset({"sdxl"})}


# --- predictive preloading ------------------------------------------------------------------------


def test_hourly_weights_learn_the_time_of_day_change_per_model() -> None:
    day = 24 * HOUR_S
    log = []
    for d in range(2):
        for minute in range(60):
            log.append((d * day + 8 * HOUR_S + minute * 60, "sdxl"))  # 60 an hour at 08:00
            log.append((d * day + 9 * HOUR_S + minute * 60, "sdxl"))  # and at 09:00
            if minute % 30 == 0:
                log.append((d * day + 8 * HOUR_S + minute * 60, "sd3"))  # 2 at 08:00
            log.append((d * day + 9 * HOUR_S + minute * 60, "sd3"))  # 60 at 09:00
    weights = learn_hourly_weights(log)
    assert weights.weight("sdxl", 8.5 * HOUR_S, 9.5 * HOUR_S) == pytest.approx(1.0)
    assert weights.weight("sd3", 8.5 * HOUR_S, 9.5 * HOUR_S) == pytest.approx(61 / 3)
    assert weights.weight("unseen", 8.5 * HOUR_S, 9.5 * HOUR_S) == 1.0
    assert learn_hourly_weights([]).weight("sdxl", 0, 0) == 1.0


def test_demand_is_recent_requests_times_the_learned_weight() -> None:
    log = [(8 * HOUR_S + i, "sd3") for i in range(2)] + [(9 * HOUR_S + i, "sd3") for i in range(59)]
    weights = learn_hourly_weights(log)  # sd3: 2 at 08:00, 59 at 09:00
    now = 8.75 * HOUR_S  # recent window centred on 08:15, prediction on 09:00-09:30 -> x20
    recent = [(now - 60 * i, "sdxl") for i in range(10)] + [(now - 100, "sd3")]
    recent.append((now - 2 * HOUR_S, "flux"))  # outside the hour: not counted
    demand = predict_demand(recent, now, weights)
    assert [m for m, _ in demand] == ["sd3", "sdxl"]
    assert demand[0][1] == pytest.approx(1 * 60 / 3) and demand[1][1] == pytest.approx(10)


def test_quiet_means_a_short_queue_and_an_idle_worker() -> None:
    config = PoolConfig(quiet_queue_per_worker=0.5)
    assert is_quiet(5, 10, 1, config)
    assert not is_quiet(6, 10, 1, config)
    assert not is_quiet(0, 10, 0, config)


def test_preloads_only_when_quiet_onto_idle_workers_lacking_the_model() -> None:
    workers = [
        worker("busy", idle=False),
        worker("has-sd3", item("sd3", 15)),
        worker("full", item("flux", 33), item("jugg", 13.5), item("dream", 13.5), item("x", 10)),
        worker("roomy", item("sdxl", 13.5)),
        worker("roomier"),
    ]
    demand = [("sd3", 50.0), ("sdxl", 10.0)]
    loads = preload_plan(workers, MODELS, demand, queued_jobs=0)
    # sd3: 1 holder, wants ceil(50/60 x 5) = 5: one load per round, the most free memory
    assert Load("roomier", "sd3", "predictive") in loads
    assert all(load.worker_id not in {"busy", "has-sd3", "full"} for load in loads)
    assert len({load.worker_id for load in loads}) == len(loads)  # one load per worker
    # busy: not quiet, nothing
    assert preload_plan(workers, MODELS, demand, queued_jobs=100) == []


def test_a_preload_fits_beside_the_resident_models_within_what_a_job_may_use() -> None:
    """Seen in a `bench fleet` run: preloads that fit a small worker's whole memory but not
    the part a job may use (less the 20% margin) were unloaded by the worker's next job 5-75 s
    later, and asked for again in a later quiet round, four times for one worker and model.
    A job runs only once what stays beside it fits the usable part, so such a preload evicts,
    one job later. Here 20 GB of 40 is free, of the 32 a job may use 12: sd3 (15) does not go."""
    tight = replace(worker("tight", item("jugg", 20.0), budget=40.0), usable=32.0)
    assert tight.free == 20.0 and tight.free_for_jobs == 12.0
    assert preload_plan([tight], MODELS, [("sd3", 10.0)], queued_jobs=0) == []
    roomy = replace(tight, usable=36.0)  # 16 free for jobs: it fits
    assert preload_plan([roomy], MODELS, [("sd3", 10.0)], queued_jobs=0) == [
        Load("tight", "sd3", "predictive")
    ]
    # without a usable figure (the seed's GPU classes: their budget is what a job may use)
    assert preload_plan([replace(tight, usable=None)], MODELS, [("sd3", 10.0)], queued_jobs=0)


def test_preloads_take_only_the_top_five_and_skip_well_held_models() -> None:
    workers = [worker(f"w{i}") for i in range(12)]
    demand = [(m, float(10 - i)) for i, m in enumerate(["sdxl", "sd3", "flux", "jugg", "dream"])]
    demand.append(("extra", 0.5))
    loads = preload_plan(workers, MODELS, demand, queued_jobs=0)
    assert {load.model_id for load in loads} == {"sdxl", "sd3", "flux", "jugg", "dream"}
    held = [worker(f"h{i}", item("sdxl", 13.5)) for i in range(11)] + [worker("free")]
    loads = preload_plan(held, MODELS, [("sdxl", 10.0), ("sd3", 10.0)], queued_jobs=0)
    assert [load.model_id for load in loads] == ["sd3"]  # sdxl: 11 holders >= half of 12


def test_a_model_warm_on_enough_workers_for_its_demand_gets_no_preload() -> None:
    """With the mean work per request known, the wanted holders are the workers its predicted
    demand keeps busy: 120 requests an hour of 90 s on speed-1 GPUs = 3 busy / 0.85 -> 4."""
    sd3 = ModelInfo("sd3", "sd3", 15.0, 2, work_s=90.0)
    models = {**MODELS, "sd3": sd3}
    workers = [worker(f"w{i}") for i in range(10)]
    assert holders_needed(sd3, 120.0, workers, PoolConfig()) == 4
    held = [worker(f"h{i}", item("sd3", 15)) for i in range(4)] + [worker("free")]
    assert preload_plan(held, models, [("sd3", 120.0)], queued_jobs=0) == []
    # one holder short: one preload (the share rule alone would want all 5 workers)
    short = held[1:]
    assert preload_plan(short, models, [("sd3", 120.0)], queued_jobs=0) == [
        Load("free", "sd3", "predictive")
    ]
    # faster GPUs need fewer holders; unknown work keeps the share rule
    fast = [worker(f"f{i}") for i in range(10)]
    fast = [
        WorkerState(w.worker_id, w.pool, w.capabilities, w.budget, (), True, speed=2.0)
        for w in fast
    ]
    assert holders_needed(sd3, 120.0, fast, PoolConfig()) == 2
    unknown = preload_plan(short, MODELS, [("sd3", 120.0)], queued_jobs=0)
    assert unknown == [Load("free", "sd3", "predictive")]


# --- cold-start storm -----------------------------------------------------------------------------


def queued(model: str, n: int, work: float = 9.0, tier: str = "relax") -> list[QueuedWork]:
    return [QueuedWork(model, tier, work, 0.0, "A100") for _ in range(n)]


def test_a_queue_spike_for_a_cold_model_gets_parallel_preloads_and_promotion() -> None:
    workers = [worker(f"w{i}", item("sdxl", 13.5)) for i in range(20)]
    queue = queued("sd3", 40) + queued("sdxl", 40)
    plan = storm_plan(workers, MODELS, queue, now=NOW, tiers=TIERS)
    # sd3 has half the queued work: fair share 10 workers, none holds it -> ceil(0.5 x 10) = 5
    assert plan.promoted == frozenset({"sd3"})
    assert [load.model_id for load in plan.loads] == ["sd3"] * 5
    assert all(load.reason == "storm" for load in plan.loads)
    assert len({load.worker_id for load in plan.loads}) == 5
    # more queued work, more parallel loads (capped by storm_max_parallel)
    bigger = storm_plan(workers, MODELS, queued("sd3", 120) + queued("sdxl", 40), now=NOW)
    assert len(bigger.loads) == 8  # ceil(0.5 x 15), at most storm_max_parallel (8)


def test_no_storm_for_a_short_queue_or_a_model_already_held() -> None:
    workers = [worker(f"w{i}", item("sd3", 15)) for i in range(4)] + [worker("idle")]
    assert storm_plan(workers, MODELS, queued("sd3", 40), now=NOW).loads == ()
    assert storm_plan([worker("a")], MODELS, queued("sd3", 3), now=NOW).promoted == frozenset()


def test_storm_loads_never_evict_a_pin_and_use_only_idle_workers() -> None:
    pinned = worker(
        "pinned", item("sdxl", 13.5), item("flux", 33), budget=50.0, pinned=frozenset({"sdxl"})
    )
    busy = worker("busy", idle=False)
    plan = storm_plan([pinned, busy], MODELS, queued("flux", 10), now=NOW, tiers=TIERS)
    assert plan.loads == ()  # flux held by the pinned worker already; busy one is not idle
    plan = storm_plan([pinned, busy], MODELS, queued("sd3", 10), now=NOW, tiers=TIERS)
    assert [load.worker_id for load in plan.loads] == ["pinned"]  # evicts flux, keeps the pin


def test_no_storm_when_the_holders_drain_the_queue_within_its_wait_target() -> None:
    """One holder of sd3 among 20 workers, 40 relax sd3 jobs of 9 s: 360 s of work for one
    speed-1 GPU is past relax's 300 s -> a storm; on a speed-2 holder it is 180 s -> none."""
    others = [worker(f"w{i}", item("sdxl", 13.5)) for i in range(19)]
    queue = queued("sd3", 40) + queued("sdxl", 40)
    holder = worker("h", item("sd3", 15), idle=False)
    plan = storm_plan([holder, *others], MODELS, queue, now=NOW, tiers=TIERS)
    assert plan.promoted == frozenset({"sd3"}) and plan.loads
    fast = WorkerState("h", "A100", holder.capabilities, 74.0, holder.resident, False, speed=2.0)
    assert storm_plan([fast, *others], MODELS, queue, now=NOW, tiers=TIERS).loads == ()
    # the most urgent job sets the target: one turbo job among them (15 s) makes it a storm
    urgent = queued("sd3", 39) + queued("sd3", 1, tier="turbo") + queued("sdxl", 40)
    assert storm_plan([fast, *others], MODELS, urgent, now=NOW, tiers=TIERS).loads
    # loads under way count as holders at the capable workers' mean speed
    calm = storm_plan(others, MODELS, queue, now=NOW, tiers=TIERS, loading={"sd3": 2})
    assert calm.loads == () and calm.promoted == frozenset()


# --- autoscaling ----------------------------------------------------------------------------------


def test_desired_workers_grow_with_queue_depth_and_waits() -> None:
    pools = {"A10G": PoolLoad(60, 51, 1.0), "A100": PoolLoad(40, 20, 1.6)}
    empty = desired_workers(pools, [])
    assert empty == {"A10G": 60, "A100": 24}  # busy / 0.85: scale-in with an empty queue

    def jobs(n: int, waited: float) -> list[QueuedWork]:
        return [QueuedWork("sdxl", "fast", 9.0, waited, "A10G") for _ in range(n)]

    short = desired_workers(pools, jobs(100, 0.0))["A10G"]
    long = desired_workers(pools, jobs(400, 0.0))["A10G"]
    late = desired_workers(pools, jobs(400, 180.0))["A10G"]
    assert empty["A10G"] < short < long < late
    assert short == 60 + 15  # 100 x 9 s / 60 s target
    assert late == 60 + 180  # waited 3x the target: x3
    turbo = desired_workers(pools, [QueuedWork("sdxl", "turbo", 9.0, 0.0, "A10G")] * 100)
    assert turbo["A10G"] > short  # a tighter target asks for more
    assert desired_workers({"x": PoolLoad(3, 0)}, [], AutoscaleConfig(min_workers=2)) == {"x": 2}

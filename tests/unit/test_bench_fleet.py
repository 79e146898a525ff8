"""``bench/fleet.py`` without a fleet: the trace it drives, the figures it reads from a log (warm
or cold by the assignment that caused a load, waits from the prompt's verdict, duplicate pool
loads), and the simulator replaying a recorded trace on a fleet of the same budgets."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import fleet as bf
from imagegen_chaos.history import LogRecord

pytestmark = pytest.mark.unit


def test_the_trace_is_seeded_mixes_tiers_and_shifts_popularity_halfway() -> None:
    trace = bf.make_trace(3, minutes=20, rate=1.0)
    assert trace == bf.make_trace(3, minutes=20, rate=1.0)
    assert trace != bf.make_trace(4, minutes=20, rate=1.0)
    assert all(a.at < 20 * 60 for a in trace) and trace == sorted(trace, key=lambda a: a.at)
    assert {a.tier for a in trace} == {"turbo", "fast", "relax"}
    first = [a.model for a in trace if a.at < 600]
    second = [a.model for a in trace if a.at >= 600]
    # Zipf: the most popular model leads both halves; the shifted copy rises after the shift
    assert max(set(first), key=first.count) == "tiny-sd15"
    assert second.count(bf.SHIFTED) / len(second) > 3 * first.count(bf.SHIFTED) / len(first)
    with_loras = [a for a in trace if a.loras]
    assert with_loras and all(bf.family_of(a.model) in ("sd15", "sdxl") for a in with_loras)
    assert {bf.TIER_OF[m] for m in bf.BEFORE} == {1, 2, 3}


def rec(topic: str, type_: str, at: float, job: str, data: dict, **kw: object) -> LogRecord:
    return LogRecord(
        topic=topic,
        partition=0,
        offset=0,
        event_id=str(kw.get("event_id", f"{type_}-{job}-{at}")),
        type=type_,
        occurred_at=at,
        job_id=job,
        causation_id=kw.get("causation_id"),  # type: ignore[arg-type]
        data=data,
    )


def job_log(job: str, t0: float, moderated: float, scheduled: float, generated: float) -> list:
    return [
        rec("imagegen.jobs.requested", "imagegen.generation.requested", t0, job, {}),
        rec("imagegen.jobs.moderated", "imagegen.prompt.moderated", moderated, job, {}),
        rec(
            "imagegen.jobs.scheduled",
            "imagegen.job.scheduled",
            scheduled,
            job,
            {"worker_id": "w1"},
            event_id=f"sched-{job}",
        ),
        rec("imagegen.jobs.generated", "imagegen.image.generated", generated, job, {}),
    ]


def loaded(
    at: float,
    model: str,
    source: str,
    cause: str | None,
    command: str | None = None,
    size: int | None = None,
):
    data = {
        "worker_id": "w1",
        "model": {"model_id": model, "kind": "base", **({"bytes": size} if size else {})},
        "load_ms": 500.0,
        "source": source,
        "command_id": command,
    }
    return rec("imagegen.workers.models", "imagegen.model.loaded", at, "", data, causation_id=cause)


def test_figures_from_the_log_warm_by_cause_waits_from_the_verdict() -> None:
    trace = [
        bf.Arrival(0.0, "turbo", 0, "tiny-sd15", (), 0),
        bf.Arrival(1.0, "relax", 0, "tiny-sd15", (), 1),
    ]
    driven = bf.Driven(job_ids={0: "a", 1: "b"}, t0=100.0, finished_at=110.0)
    records = [
        *job_log("a", 100.0, 100.5, 101.0, 103.0),  # cold: its assignment loaded the model
        loaded(101.5, "tiny-sd15", "disk", "sched-a", size=617_356),
        *job_log("b", 101.0, 101.2, 104.2, 105.2),  # warm: nothing loaded for it
        # a pool command's load: counted as a cold load, not against a job
        loaded(106.0, "tiny-sdxl", "disk", "cmd-1", command="cmd-1"),
    ]
    o = bf.observe(records, driven, trace)
    assert o.figures["warm_hit_rate"] == 0.5
    assert o.figures["cold_loads"] == 2 and o.figures["pool_loads"] == 1
    # the pool's loads in the window the simulated half replays (its load came 6 s in)
    assert bf.observe(records, driven, trace, settle_s=5.0).figures["pool_loads_after_settle"] == 1
    assert bf.observe(records, driven, trace, settle_s=7.0).figures["pool_loads_after_settle"] == 0
    assert o.figures["tiers"]["turbo"]["p50_wait_s"] == pytest.approx(0.5)
    assert o.figures["tiers"]["relax"]["p95_wait_s"] == pytest.approx(3.0)
    assert o.queued_at == {0: pytest.approx(0.5), 1: pytest.approx(1.2)}
    # only the warm job's run calibrates the step time (1 s over STEPS steps)
    assert o.service_s_per_step == {"tiny-sd15": [pytest.approx(1.0 / bf.STEPS)]}
    # a base model's load costs what its cold run took over a warm run (2.0 - 1.0 s), not the
    # worker's load_ms (0.5 s): the first run after a load is slow too (ADR 0713)
    assert o.load_s["tiny-sd15"] == [pytest.approx(1.0)]
    # the replay starts from what each worker held when the counted window began
    assert o.started_at == {0: pytest.approx(1.0), 1: pytest.approx(4.2)}
    assert bf.observe(records, driven, trace, settle_s=2.0).resident_at_settle == {
        "w1": ["tiny-sd15"]
    }
    # the bytes a model takes loaded, as its worker measured them (none reported for tiny-sdxl)
    assert o.loaded_bytes == {"tiny-sd15": 617_356}


def test_a_load_command_for_a_model_the_worker_holds_is_a_duplicate() -> None:
    def command(at: float, model: str, pin: bool = False) -> LogRecord:
        data = {"worker_id": "w1", "model_id": model, "pin": pin}
        return rec("imagegen.pool.commands", "imagegen.pool.load_model", at, "", data)

    evicted = rec(
        "imagegen.workers.models",
        "imagegen.model.evicted",
        5.0,
        "",
        {"worker_id": "w1", "model_id": "m", "reason": "make_room"},
    )
    residency = [loaded(1.0, "m", "disk", None), evicted]
    assert bf.duplicate_loads([command(0.5, "m")], residency) == 0  # not held yet
    assert bf.duplicate_loads([command(2.0, "m")], residency) == 1  # held
    assert bf.duplicate_loads([command(6.0, "m")], residency) == 0  # evicted since
    # a pin for a held model confirms the pin (answered resident, ADR 0711): not a duplicate
    assert bf.duplicate_loads([command(2.0, "m", pin=True)], residency) == 0


def test_a_pool_load_no_job_used_before_its_model_left_is_unused() -> None:
    def evicted(at: float, model: str) -> LogRecord:
        data = {"worker_id": "w1", "model_id": model, "reason": "make_room"}
        return rec("imagegen.workers.models", "imagegen.model.evicted", at, "", data)

    residency = [
        loaded(1.0, "a", "ram", "cmd-1", command="cmd-1"),  # used at 2.0, before it left
        evicted(3.0, "a"),
        loaded(4.0, "a", "ram", "cmd-2", command="cmd-2"),  # gone at 5.0, used only after
        evicted(5.0, "a"),
        loaded(6.0, "b", "disk", "cmd-3", command="cmd-3"),  # used on another worker only
        loaded(7.0, "c", "disk", "sched-x"),  # a job's own load: not the pool's
    ]
    assigned = [("w1", "a", 2.0), ("w1", "a", 5.5), ("w2", "b", 6.5), ("w1", "c", 7.0)]
    assert bf.unused_pool_loads(residency, assigned) == 2
    assert bf.unused_pool_loads(residency, [*assigned, ("w1", "b", 9.0)]) == 1  # still held


def test_the_simulator_replays_the_trace_on_a_fleet_of_the_same_budgets(tmp_path: Path) -> None:
    for name in bf.BEFORE:
        folder = tmp_path / name
        folder.mkdir()
        doc = {
            "id": name,
            "family": bf.family_of(name),
            "kind": "base",
            "tier": bf.TIER_OF[name],
            "components": {"unet": 300_000, "vae": 200_000, "text_encoder": 150_000},
        }
        (folder / "model.json").write_text(json.dumps(doc))
        (folder / "weights.bin").write_bytes(b"\0" * 650_000)
    for family, names in bf.LORAS.items():
        for name in names:
            (tmp_path / name).mkdir()
            doc = {"id": name, "family": family, "kind": "lora"}
            (tmp_path / name / "model.json").write_text(json.dumps(doc))
    trace = bf.make_trace(1, minutes=3, rate=0.5)
    observed = bf.Observed(
        figures={},
        load_s={m: [0.5, 0.8] for m in bf.BEFORE},
        service_s_per_step={m: [0.02] for m in bf.BEFORE},
        makespan_s=200.0,
        queued_at={},
        loaded_bytes={"tiny-sd15": 617_356},
    )
    out = bf.simulate_same(trace, observed, tmp_path, 4, [2, 2, 3, 3], "ours", 1)
    # a model's weights are what its worker measured loaded, where it did; else its files'
    assert out["calibration"]["tiny-sd15"]["weights_mib"] == round(617_356 / 2**20, 3)
    assert out["calibration"]["tiny-sdxl"]["weights_mib"] == round(650_000 / 2**20, 3)
    assert out["jobs"] == len(trace) and out["refused"] == 0
    assert 0.0 < out["warm_hit_rate"] <= 1.0 and out["cold_loads"] >= 1
    assert sum(t["jobs"] for t in out["tiers"].values()) == len(trace)
    for figures in (*out["tiers"].values(), out["all_tiers"]):  # the median of the draws' p95s
        low, high = figures["p95_wait_s_draws"]
        assert low <= figures["p95_wait_s"] <= high
    assert out["calibration"]["tiny-sd15"]["load_s"] == [0.5, 0.8]
    assert out["calibration"]["tiny-sd15"]["load_samples"] == 2  # drawn from as measured
    none = bf.simulate_same(trace, observed, tmp_path, 4, [2, 2, 3, 3], "none", 1)
    assert none["jobs"] == len(trace) and none["pool_loads"] == 0  # no pool, no pool loads
    diff = bf.compare(
        {"warm_hit_rate": 0.9, "tiers": {"fast": {"p95_wait_s": 10.0}}},
        {"warm_hit_rate": 0.85, "tiers": {"fast": {"p95_wait_s": 12.0}}},
    )
    assert diff == {
        "warm_hit_diff": 0.05,
        "warm_hit_within_0.10": True,
        "p95_wait_ratio": {"fast": 1.2},
        "p95_within_25pct": True,
    }


def test_turnaround_from_images_stored_to_the_next_assignment_with_work_waiting() -> None:
    """ADR 0713: a turnaround runs from a job's images to its worker's next assignment, counted
    only where that next job was already schedulable (the worker had work waiting) and is of
    the model the worker had just run (a job of another model may have waited for the policy,
    which the simulator models itself)."""
    driven = bf.Driven(job_ids=dict(enumerate("abcdef")), t0=100.0, finished_at=130.0)
    models = ["tiny-sd15"] * 4 + ["tiny-sdxl", "tiny-sdxl"]
    trace = [bf.Arrival(float(i), "fast", 0, m, (), i) for i, m in enumerate(models)]
    records = [
        *job_log("a", 100.0, 101.0, 101.01, 102.0),
        *job_log("b", 101.0, 101.5, 102.03, 103.0),  # waiting when a ended: 0.03
        *job_log("c", 102.0, 103.5, 103.6, 104.0),  # schedulable after b ended: not counted
        *job_log("d", 103.0, 103.8, 104.25, 105.0),  # waiting when c ended: 0.25
        *job_log("e", 104.0, 104.5, 106.0, 107.0),  # another model: the policy may have held it
        *job_log("f", 105.0, 105.5, 107.1, 108.0),  # the same model as e again: 0.1
    ]
    assert bf.turnarounds(records, driven, trace) == [
        pytest.approx(0.03),
        pytest.approx(0.25),
        pytest.approx(0.1),
    ]
    # runs that ended in the settle window calibrate nothing
    assert bf.turnarounds(records, driven, trace, settle_s=30.0) == []


def test_the_replay_starts_from_the_real_fleets_models_on_workers_of_the_same_class() -> None:
    from imagegen_fleet_sim.scenario import GpuType

    fleet = (
        (GpuType("cpu-2MiB", 0.0017, 1.0, frozenset()), 2),
        (GpuType("cpu-3MiB", 0.0025, 1.0, frozenset()), 2),
    )
    held = {"worker-local-3": ["tiny-sdxl"], "worker-local-1": ["tiny-sd15"], "worker-local-4": []}
    assert bf.sim_residency(held, [2, 2, 3, 3], fleet) == {
        "gpu-000-cpu-2MiB": ["tiny-sd15"],
        "gpu-002-cpu-3MiB": ["tiny-sdxl"],
        "gpu-003-cpu-3MiB": [],
    }


def test_the_real_p95_comes_with_the_interval_its_sample_alone_allows() -> None:
    import random

    rng = random.Random(5)
    few = [rng.expovariate(10.0) for _ in range(100)]
    many = [rng.expovariate(10.0) for _ in range(2000)]
    lo, hi = bf.p95_interval(few)
    assert bf.p95_interval(few) == [lo, hi]  # seeded: a re-analysis gives the same interval
    assert lo <= bf.pct(few, 0.95) <= hi
    many_lo, many_hi = bf.p95_interval(many)
    assert many_hi - many_lo < (hi - lo) / 2  # twenty times the waits: a much narrower interval
    assert bf.p95_interval([]) == [0.0, 0.0]
    real = {
        "warm_hit_rate": 0.9,
        "tiers": {
            "fast": {"p95_wait_s": 0.2, "p95_wait_s_interval90": [0.15, 0.3]},
            "turbo": {"p95_wait_s": 0.1, "p95_wait_s_interval90": [0.05, 0.12]},
        },
        "all_tiers": {"p95_wait_s": 0.2, "p95_wait_s_interval90": [0.15, 0.25]},
    }
    simulated = {
        "warm_hit_rate": 0.9,
        "tiers": {"fast": {"p95_wait_s": 0.28}, "turbo": {"p95_wait_s": 0.13}},
        "all_tiers": {"p95_wait_s": 0.26},
    }
    out = bf.compare(real, simulated)
    # 1.4x the real fast p95 (outside the 25%) but inside what its sample allows
    assert out["p95_wait_ratio"] == {"fast": 1.4, "turbo": 1.3}
    assert out["p95_within_25pct"] is False
    assert out["p95_within_real_interval90"] == {"fast": True, "turbo": False}
    assert out["p95_all_tiers_within_real_interval90"] is False


def test_the_bench_stack_lifts_the_daily_image_quota_and_keeps_the_other_limits(
    tmp_path: Path,
) -> None:
    """A 20-minute run at rate 2 asks about 400 images of each relax (free plan) user, past the
    plan's 200 a day: 609 of 2,465 submissions were still being refused when the run was
    stopped, 35 minutes in. The bench's own stack lifts that quota for its plans, and only that
    one."""
    from imagegen_api.domain.limits import DEFAULT_LIMITS, Plan, with_overrides

    env = bf.fleet_stack(tmp_path, 4, "2,2,3,3", "ours").env()
    limits = with_overrides(json.loads(env["IMAGEGEN_STACK_API_LIMITS"]))  # the API's own parser
    for plan in (Plan(p) for p, _ in bf.TIERS.values()):
        assert limits[plan].images_per_day >= 100 * DEFAULT_LIMITS[plan].images_per_day
        assert limits[plan].requests_per_minute == DEFAULT_LIMITS[plan].requests_per_minute
        assert limits[plan].active_jobs == DEFAULT_LIMITS[plan].active_jobs

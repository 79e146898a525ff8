"""Given these events, when the policy decides, then these decisions."""

from __future__ import annotations

import dataclasses

import pytest
from scheduler_testkit import decide_and_apply, job, large, queued, small, state_of, workers

from imagegen_scheduler.domain import (
    Assign,
    JobAssigned,
    JobCancelled,
    JobFinished,
    Reason,
    SchedulerConfig,
    Tier,
    WorkerLost,
    WorkerUpdated,
    decide,
    estimate_waits,
    evolve,
)

pytestmark = pytest.mark.unit
NO_RESERVE = SchedulerConfig(relax_reserve_fraction=0.0)


def assigned(decisions: list) -> dict[str, str]:
    return {d.job_id: d.worker_id for d in decisions if isinstance(d, Assign)}


def test_a_higher_tier_wins_a_free_worker_over_queued_lower_tier_work() -> None:
    state = state_of(
        workers(small("w1", "sdxl"))
        + queued(job("r", Tier.RELAX), job("f", Tier.FAST), job("t", Tier.TURBO)),
        NO_RESERVE,
    )
    assert assigned(decide(state, 1.0)) == {"t": "w1"}


@pytest.mark.parametrize(("now", "winner"), [(299.0, "t"), (301.0, "r")])
def test_a_relax_job_waiting_past_promote_after_outranks_a_fresh_turbo_job(
    now: float, winner: str
) -> None:
    events = workers(small("w1", "sdxl")) + queued(
        job("r", Tier.RELAX, at=0.0), job("t", Tier.TURBO, at=now)
    )
    assert assigned(decide(state_of(events, NO_RESERVE), now)) == {winner: "w1"}


def test_relax_gets_a_worker_while_below_its_reserved_share() -> None:
    fleet = [small(f"w{i}", "sdxl") for i in range(5)]
    state = state_of(
        workers(*fleet) + queued(job("r", Tier.RELAX), job("t1", Tier.TURBO), job("t2", Tier.TURBO))
    )
    decisions = decide(state, 1.0)
    reasons = {d.job_id: d.reason for d in decisions if isinstance(d, Assign)}
    assert reasons["r"] is Reason.RESERVED  # 20% of 5 workers = 1 reserved for relax
    assert set(reasons) == {"r", "t1", "t2"}


def test_one_user_cannot_take_more_than_its_share_of_a_tier() -> None:
    fleet = [small(f"w{i}", "sdxl") for i in range(4)]
    flood = [job(f"f{i}", at=0.0, user="flooder") for i in range(10)]
    config = SchedulerConfig(user_share=0.25, relax_reserve_fraction=0.0)
    state = state_of(workers(*fleet) + queued(*flood, job("other", at=5.0)), config)
    jobs = assigned(decide_and_apply(state, decide, 6.0))
    assert "other" in jobs
    assert sum(1 for j in jobs if j.startswith("f")) == 1  # cap = 25% of 4 workers


def busy(worker_id: str, at: float = 0.0) -> list:
    """Events that make a worker busy with a filler job of another user."""
    filler = job(f"filler-{worker_id}", Tier.TURBO, at=at, user="filler")
    return queued(filler) + [JobAssigned(filler.job_id, worker_id, 1000, at)]


def test_a_worker_prefers_a_job_it_holds_warm_within_the_look_ahead() -> None:
    state = state_of(
        workers(small("w1", "sdxl-alt"), small("busy", "sdxl"))
        + busy("busy")
        + queued(job("old", at=0.0), job("warm", at=1.0, model="sdxl-alt")),
        NO_RESERVE,
    )
    assert assigned(decide(state, 2.0)) == {"warm": "w1"}


def test_a_cold_job_past_its_patience_is_not_passed_over_when_nobody_holds_it() -> None:
    patience = NO_RESERVE.affinity_patience_s[Tier.RELAX]
    events = workers(small("w1", "sdxl-alt")) + queued(
        job("cold", at=0.0), job("warm", at=1.0, model="sdxl-alt")
    )
    assert assigned(decide(state_of(events, NO_RESERVE), 2.0)) == {"warm": "w1"}
    assert assigned(decide(state_of(events, NO_RESERVE), patience + 1)) == {"cold": "w1"}


def test_a_turbo_job_briefly_waits_for_a_warm_worker_while_the_cold_one_serves_fast() -> None:
    """Within its patience (5 s) the turbo job waits for the worker that holds its model; past
    it, it still waits while that worker is expected to finish before the job's warm-wait limit
    (10 s); after the limit the cold worker loads it."""
    state = state_of(
        workers(small("cold", "sdxl-alt"), small("warm", "sdxl"))
        + busy("warm")  # its filler is expected to end at ~8.8 s
        + queued(job("t", Tier.TURBO, at=10.0), job("f", Tier.FAST, at=0.0, model="sdxl-alt")),
        NO_RESERVE,
    )
    decisions = decide(state, 11.0)
    assert assigned(decisions) == {"f": "cold"}
    assert decisions[0].reason is Reason.AFFINITY  # turbo is more urgent, but cold here
    patience = NO_RESERVE.affinity_patience_s[Tier.TURBO]
    assert assigned(decide(state, 10.0 + patience + 0.1)) == {"f": "cold"}  # warm ends soon
    limit = NO_RESERVE.warm_wait_s[Tier.TURBO]
    assert assigned(decide(state, 10.0 + limit + 0.1)) == {"t": "cold"}


def test_past_its_patience_a_job_is_loaded_when_no_warm_worker_frees_before_its_limit() -> None:
    """The warm worker runs a long job (expected end ~88 s): waiting for it would exceed the
    turbo job's warm-wait limit, so the cold worker loads the job once its patience is over."""
    long_filler = job("filler-warm", Tier.TURBO, at=0.0, user="filler", steps=300)
    state = state_of(
        workers(small("cold", "sdxl-alt"), small("warm", "sdxl"))
        + queued(long_filler)
        + [JobAssigned("filler-warm", "warm", 1000, 0.0)]
        + queued(job("t", Tier.TURBO, at=10.0), job("f", Tier.FAST, at=0.0, model="sdxl-alt")),
        NO_RESERVE,
    )
    assert assigned(decide(state, 11.0)) == {"f": "cold"}  # within its patience
    patience = NO_RESERVE.affinity_patience_s[Tier.TURBO]
    assert assigned(decide(state, 10.0 + patience + 0.1)) == {"t": "cold"}


def test_a_large_worker_that_leaves_a_job_to_small_workers_does_not_hold_it_warm() -> None:
    """Pool preference: the A100 holds SDXL but leaves an SDXL fast job to the A10Gs until 60 s,
    so a cold A10G does not wait for it: it loads the job at once."""
    state = state_of(
        workers(small("s", "sdxl-alt"), large("l", "sdxl"))
        + busy("l")
        + queued(job("f", Tier.FAST, at=0.0)),
        NO_RESERVE,
    )
    assert assigned(decide(state, 10.0)) == {"f": "s"}
    unpreferred = dataclasses.replace(NO_RESERVE, pool_preference=False)
    waits = state_of(
        workers(small("s", "sdxl-alt"), large("l", "sdxl"))
        + busy("l")
        + queued(job("f", Tier.FAST, at=0.0)),
        unpreferred,
    )
    assert decide(waits, 10.0) == []  # the A100 would take it: wait for it within patience


def test_an_idle_worker_waits_rather_than_load_a_job_another_worker_holds_warm() -> None:
    state = state_of(
        workers(small("cold", "sdxl-alt"), small("warm", "sdxl"))
        + busy("warm")
        + queued(job("r", at=0.0)),
        NO_RESERVE,
    )
    assert decide(state, 1.0) == []  # within its patience: wait for "warm" rather than load
    evolve(state, JobFinished("filler-warm", "warm", 1000, 2.0))
    assert assigned(decide(state, 2.0)) == {"r": "warm"}
    patience = NO_RESERVE.affinity_patience_s[Tier.RELAX]
    late = state_of(
        workers(small("cold", "sdxl-alt"), small("warm", "sdxl"))
        + busy("warm")
        + queued(job("r", at=0.0)),
        NO_RESERVE,
    )
    assert assigned(decide(late, patience + 1.0)) == {"r": "cold"}  # waited long enough


def test_memory_and_capability_route_jobs_only_where_they_fit() -> None:
    big = job("big", adapters=("cn-canny", "cn-depth"))  # 22 GB: too big for 20 GB
    flux = job("flux", model="flux")
    state = state_of(workers(small("s1"), small("s2")) + queued(big, flux), NO_RESERVE)
    assert decide(state, 1.0) == []
    evolve(state, WorkerUpdated(large("l1"), 1.0))
    evolve(state, WorkerUpdated(large("l2"), 1.0))
    assert sorted(assigned(decide(state, 2.0))) == ["big", "flux"]


def test_fencing_tokens_increase_across_rounds_and_stale_results_are_ignored() -> None:
    state = state_of(workers(small("w1", "sdxl")) + queued(job("a"), job("b", at=1.0)))
    first = decide_and_apply(state, decide, 2.0)
    assert [d.fencing_token for d in first] == [1]
    evolve(state, JobFinished("a", "w1", 0, 3.0))  # stale token: still running
    assert "a" in state.running and decide(state, 3.0) == []
    evolve(state, JobFinished("a", "w1", 1, 4.0))
    second = decide_and_apply(state, decide, 4.0)
    assert [(d.job_id, d.fencing_token) for d in second] == [("b", 2)]


def test_a_lost_worker_requeues_its_job_first_in_line_and_cancel_removes_a_queued_job() -> None:
    state = state_of(workers(small("w1", "sdxl"), small("w2", "sdxl")) + queued(job("a")))
    decide_and_apply(state, decide, 1.0)
    running_on = state.running["a"].worker_id
    evolve(state, WorkerLost(running_on, 2.0))
    assert state.queued["a"].attempt == 2
    evolve(state, JobCancelled("a", 3.0))
    assert not state.queued and decide(state, 3.0) == []


def test_every_queued_job_has_an_eta_and_higher_tiers_come_sooner() -> None:
    fleet = [small(f"w{i}", "sdxl") for i in range(2)]
    requests = [job(f"r{i}", Tier.RELAX) for i in range(4)] + [job("t", Tier.TURBO)]
    state = state_of(workers(*fleet) + queued(*requests))
    etas = estimate_waits(state, 0.0)
    assert set(etas) == set(state.queued)
    assert etas["t"] == 0.0
    assert etas["r0"] <= etas["r1"] <= etas["r2"] <= etas["r3"]
    assert etas["r3"] > 0.0


def test_a_large_worker_serves_a_job_only_it_can_hold_before_a_small_workers_turbo_job() -> None:
    """Pool preference: the A100 leaves the SDXL turbo job (an A10G can run it) to the A10Gs
    until it has waited its wait target (15 s), and meanwhile serves the flux relax job that
    no A10G can hold."""
    events = (
        workers(small("s", "sdxl"), large("l", "sdxl", "flux"))
        + busy("s")
        + queued(job("r", Tier.RELAX, at=0.0, model="flux"), job("t", Tier.TURBO, at=10.0))
    )
    state = state_of(events, NO_RESERVE)
    assert assigned(decide(state, 12.0)) == {"r": "l"}
    target = NO_RESERVE.wait_targets_s[Tier.TURBO]
    late = state_of(events, NO_RESERVE)
    assert assigned(decide(late, 10.0 + target + 0.1)) == {"t": "l"}  # waited its target
    unpreferred = dataclasses.replace(NO_RESERVE, pool_preference=False)
    assert assigned(decide(state_of(events, unpreferred), 12.0)) == {"t": "l"}


def test_a_large_worker_with_nothing_only_it_can_hold_serves_the_small_workers_jobs() -> None:
    state = state_of(
        workers(small("s", "sdxl"), large("l", "sdxl"))
        + busy("s")
        + queued(job("r", Tier.RELAX, at=0.0), job("f", Tier.FAST, at=1.0)),
        NO_RESERVE,
    )
    assert assigned(decide(state, 2.0)) == {"f": "l"}  # never idle while work waits


def test_relax_pool_balance_a_large_worker_serves_both_pools_relax_work_oldest_first() -> None:
    """ADR 0108: an A100 takes an A10G-able relax job before its wait target once it is older
    than the oldest relax job only the A100s can hold, and leaves it to the A10Gs past the
    target while that A100-only job is older (here it would have been the warm pick)."""
    early = (
        workers(small("s", "sdxl"), large("l", "sdxl", "flux"))
        + busy("s")
        + queued(job("sdxl-old", at=0.0), job("flux-young", at=100.0, model="flux"))
    )
    assert assigned(decide(state_of(early, NO_RESERVE), 200.0)) == {"sdxl-old": "l"}
    at_target = dataclasses.replace(NO_RESERVE, relax_pool_balance=False)
    assert assigned(decide(state_of(early, at_target), 200.0)) == {"flux-young": "l"}
    late = (
        workers(small("s", "sdxl"), large("l", "sdxl", "flux"), large("l2", "flux", "flux-lora"))
        + busy("s")
        + busy("l2")
        + queued(
            job("flux-old", at=0.0, model="flux", adapters=("flux-lora",)),
            job("sdxl-young", at=10.0),
        )
    )
    assert assigned(decide(state_of(late, NO_RESERVE), 320.0)) == {"flux-old": "l"}
    assert assigned(decide(state_of(late, at_target), 320.0)) == {"sdxl-young": "l"}


def test_relax_cold_deadline_an_old_head_is_loaded_rather_than_a_much_younger_warm_job() -> None:
    """ADR 0108: past 270 s a relax head is no longer passed over for a warm job that arrived
    90 s or more after it, although another (busy) worker holds the head's model."""
    events = (
        workers(small("w1", "sdxl-alt"), small("busy", "sdxl"))
        + busy("busy")
        + queued(job("head", at=0.0), job("warm", at=100.0, model="sdxl-alt"))
    )
    assert assigned(decide(state_of(events, NO_RESERVE), 200.0)) == {"warm": "w1"}
    assert assigned(decide(state_of(events, NO_RESERVE), 280.0)) == {"head": "w1"}
    off = dataclasses.replace(NO_RESERVE, relax_cold_after_s=None)
    assert assigned(decide(state_of(events, off), 280.0)) == {"warm": "w1"}
    close = (
        workers(small("w1", "sdxl-alt"), small("busy", "sdxl"))
        + busy("busy")
        + queued(job("head", at=0.0), job("warm", at=60.0, model="sdxl-alt"))
    )
    assert assigned(decide(state_of(close, NO_RESERVE), 280.0)) == {"warm": "w1"}  # within 90 s


def test_adapter_affinity_among_model_warm_jobs_the_fewest_adapter_loads_wins() -> None:
    """ADR 0108: no job is fully warm on w1; of the two whose model it holds, the one needing one
    adapter load goes before the older one needing two."""
    state = state_of(
        workers(small("w1", "sdxl", "lora-a"), small("busy", "sdxl-alt"))
        + busy("busy")
        + queued(
            job("head", at=0.0, model="sdxl-alt"),
            job("two", at=1.0, adapters=("lora-b", "cn-canny")),
            job("one", at=2.0, adapters=("lora-a", "lora-b")),
        ),
        NO_RESERVE,
    )
    assert assigned(decide(state, 130.0)) == {"one": "w1"}


def test_relax_adapter_wait_a_model_warm_worker_loads_the_adapters_of_an_old_head() -> None:
    """ADR 0109: past its warm wait (120 s) a relax head is passed over by a worker holding its
    model (not its LoRA) for the worker holding both only while that one is expected to finish
    within 10 s; when it runs a long job, the model-warm worker takes the head and loads the LoRA
    rather than a younger fully warm job."""

    def events(steps: int) -> list:
        filler = job("filler-full", Tier.TURBO, at=125.0, user="filler", steps=steps)
        return (
            workers(small("w1", "sdxl"), small("full", "sdxl", "lora-a"))
            + queued(filler)
            + [JobAssigned(filler.job_id, "full", 1000, 125.0)]
            + queued(job("head", at=0.0, adapters=("lora-a",)), job("warm", at=60.0))
        )

    assert assigned(decide(state_of(events(300), NO_RESERVE), 100.0)) == {"warm": "w1"}  # patient
    assert assigned(decide(state_of(events(300), NO_RESERVE), 130.0)) == {"head": "w1"}
    assert assigned(decide(state_of(events(30), NO_RESERVE), 130.0)) == {"warm": "w1"}  # ends soon
    off = dataclasses.replace(NO_RESERVE, relax_adapter_wait_s=None)
    assert assigned(decide(state_of(events(300), off), 130.0)) == {"warm": "w1"}


def guard_events(sdxl_queued: int) -> list:
    """w1 holds sdxl (idle); w2 holds sdxl-alt and runs a long job; a fast sdxl-alt job has
    waited since 0 s, and ``sdxl_queued`` relax sdxl jobs wait too."""
    filler = job("filler-w2", Tier.TURBO, at=0.0, user="filler", steps=3000)
    return (
        workers(small("w1", "sdxl"), small("w2", "sdxl-alt"))
        + queued(filler)
        + [JobAssigned(filler.job_id, "w2", 1000, 0.0)]
        + queued(
            job("alt", Tier.FAST, at=0.0, model="sdxl-alt"),
            *(job(f"x{i}", at=1.0 + i) for i in range(sdxl_queued)),
        )
    )


def test_the_switch_guard_keeps_a_worker_on_the_model_in_more_demand() -> None:
    """ADR 0712: past its warm wait (45 s) and within its wait target (60 s), the fast head's
    model is held by a busy worker; loading it on w1 would unload sdxl, which has 3 queued jobs
    for its one holder against sdxl-alt's 1 for two: w1 serves sdxl instead. Without the guard
    (today's rule) w1 loads sdxl-alt."""
    guarded = dataclasses.replace(NO_RESERVE, guard_switches=True)
    assert assigned(decide(state_of(guard_events(3), guarded), 50.0)) == {"x0": "w1"}
    assert assigned(decide(state_of(guard_events(3), NO_RESERVE), 50.0)) == {"alt": "w1"}
    # bounded by the wait target: at 61 s the head is loaded here
    assert assigned(decide(state_of(guard_events(3), guarded), 61.0)) == {"alt": "w1"}


def test_the_switch_guard_lets_a_worker_switch_from_a_model_in_less_demand() -> None:
    guarded = dataclasses.replace(NO_RESERVE, guard_switches=True)
    # nothing queued for sdxl: unloading it costs no queued job
    assert assigned(decide(state_of(guard_events(0), guarded), 50.0)) == {"alt": "w1"}


def test_queued_jobs_are_counted_per_model() -> None:
    state = state_of(
        workers(small("w1"))
        + queued(job("a"), job("b"), job("c", model="sdxl-alt"), job("d", model="flux"))
    )
    assert state.queued_by_model == {"sdxl": 2, "sdxl-alt": 1, "flux": 1}
    evolve(state, JobAssigned("a", "w1", 1, 1.0))
    evolve(state, JobCancelled("d", 1.0))
    assert state.queued_by_model == {"sdxl": 1, "sdxl-alt": 1}
    evolve(state, WorkerLost("w1", 2.0))  # its job queued again
    assert state.queued_by_model == {"sdxl": 2, "sdxl-alt": 1}


def test_the_service_runs_the_switch_guard_unless_told_not_to(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """On in the service (the warm pool's default, ADR 0712), off in the policy's own defaults
    (today's rule for the baselines and the simulator's --pool none)."""
    from imagegen_scheduler.bootstrap import scheduler_config
    from imagegen_scheduler.config import SchedulerSettings

    monkeypatch.delenv("IMAGEGEN_SCHEDULER_GUARD_SWITCHES", raising=False)
    assert scheduler_config(SchedulerSettings(kafka_bootstrap="k:9092")).guard_switches is True
    monkeypatch.setenv("IMAGEGEN_SCHEDULER_GUARD_SWITCHES", "false")
    assert scheduler_config(SchedulerSettings(kafka_bootstrap="k:9092")).guard_switches is False
    assert SchedulerConfig().guard_switches is False

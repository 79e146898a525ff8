"""Preemption: a turbo job that would miss its target pauses a relax job at a step boundary."""

from __future__ import annotations

import pytest
from scheduler_testkit import decide_and_apply, job, large, queued, small, state_of, workers

from imagegen_scheduler.domain import (
    JobPreempted,
    Preempt,
    Reason,
    SchedulerConfig,
    Tier,
    decide,
    evolve,
)

pytestmark = pytest.mark.unit
CONFIG = SchedulerConfig(relax_reserve_fraction=0.0)


def long_relax_on(n: int, at: float = 0.0) -> list:
    """n A100s, each running a long relax job (1536 px, batch 2 then 4: ~25 s, ~44 s)."""
    fleet = [large(f"l{i}", "sdxl") for i in range(n)]
    relax = [job(f"r{i}", at=at, size=1536, batch=2 + 2 * i) for i in range(n)]
    return workers(*fleet) + queued(*relax)


def test_a_turbo_job_that_would_miss_its_target_pauses_the_relax_job_with_most_work_left() -> None:
    state = state_of(long_relax_on(2), CONFIG)
    decide_and_apply(state, decide, 0.0)
    evolve(state, queued(job("t", Tier.TURBO, at=1.0, model="flux"))[0])
    assert decide(state, 5.0) == []  # within its affinity patience (5 s)
    decisions = decide_and_apply(state, decide, 6.5)
    assert decisions == [Preempt("r1", "l1", state.running["r1"].fencing_token, "t")]
    assert decide(state, 7.0) == []  # one pause per waiting job, not one per round

    evolve(state, JobPreempted("r1", "l1", decisions[0].fencing_token, 12, 8.0))
    resumed = state.queued["r1"]
    assert resumed.remaining_steps == 30 - 12
    assert resumed.waited_s == 0.0  # it was assigned at once, before the pause
    again = decide_and_apply(state, decide, 8.0)
    assert [(d.job_id, d.worker_id, d.reason) for d in again] == [("t", "l1", Reason.HELD)]
    evolve(state, queued(job("later", at=9.0))[0])
    assert state.queues[Tier.RELAX].in_order().__next__().job_id == "r1"  # resumes first


def test_no_preemption_while_a_worker_frees_up_within_the_target() -> None:
    state = state_of(workers(large("l0", "sdxl")) + queued(job("r0")), CONFIG)
    decide_and_apply(state, decide, 0.0)  # ~5.5 s job
    evolve(state, queued(job("t", Tier.TURBO, at=0.0))[0])
    assert decide(state, 6.0) == []  # r0 ends ~5.5 s after it started: no reason to pause


def test_preemption_never_takes_relax_below_its_reserve() -> None:
    state = state_of(long_relax_on(1), SchedulerConfig())  # reserve: ceil(20% of 1) = 1 worker
    decide_and_apply(state, decide, 0.0)
    evolve(state, queued(job("t", Tier.TURBO, at=5.0))[0])
    assert decide(state, 20.0) == []


def test_a_promoted_relax_job_is_never_paused() -> None:
    state = state_of(long_relax_on(1, at=0.0), CONFIG)
    decide_and_apply(state, decide, 290.0)
    evolve(state, queued(job("t", Tier.TURBO, at=300.0))[0])
    assert decide(state, 306.0) == []  # r0 has been in the system 306 s > promote_after


def test_turbo_preempts_only_where_it_fits() -> None:
    state = state_of(workers(small("s0", "sdxl")) + queued(job("r0", size=1536)), CONFIG)
    decide_and_apply(state, decide, 0.0)
    evolve(state, queued(job("t", Tier.TURBO, at=0.0, model="flux"))[0])
    assert decide(state, 30.0) == []  # flux never fits the small worker

"""The baseline policies the simulator compares against."""

from __future__ import annotations

import pytest
from scheduler_testkit import decide_and_apply, job, queued, small, state_of, workers

from imagegen_scheduler.domain import (
    Assign,
    JobFinished,
    Tier,
    evolve,
    fifo_decide,
    weighted_decide,
)

pytestmark = pytest.mark.unit


def test_fifo_serves_the_oldest_job_whatever_its_tier() -> None:
    state = state_of(
        workers(small("w1", "sdxl"))
        + queued(job("r", Tier.RELAX, at=0.0), job("t", Tier.TURBO, at=1.0))
    )
    assert [d.job_id for d in fifo_decide(state, 2.0)] == ["r"]


def test_weighted_shares_dispatches_in_proportion_to_weight_times_queue_length() -> None:
    """The seed's example (x10 so that the queues barely move): 800 : 1300 : 1200 weight units."""
    counts = {Tier.TURBO: 800, Tier.FAST: 2600, Tier.RELAX: 12000}
    requests = [job(f"{t}-{i}", t, at=float(i)) for t, n in counts.items() for i in range(n)]
    state = state_of(workers(small("w1", "sdxl")) + queued(*requests))
    served = dict.fromkeys(Tier, 0)
    for round_ in range(330):
        decisions = decide_and_apply(state, weighted_decide, float(round_))
        (assign,) = decisions
        assert isinstance(assign, Assign)
        served[state.running[assign.job_id].job.request.tier] += 1
        evolve(state, JobFinished(assign.job_id, "w1", assign.fencing_token, float(round_)))
    shares = {t: served[t] / 330 for t in Tier}
    assert shares[Tier.TURBO] == pytest.approx(800 / 3300, abs=0.05)
    assert shares[Tier.FAST] == pytest.approx(1300 / 3300, abs=0.05)
    assert shares[Tier.RELAX] == pytest.approx(1200 / 3300, abs=0.05)

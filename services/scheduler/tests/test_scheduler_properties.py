"""Properties of the policies over generated fleets, queues and histories (hypothesis)."""

from __future__ import annotations

import dataclasses
import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scheduler_testkit import CATALOG, job, large, queued, small, state_of, workers

from imagegen_scheduler.domain import (
    Admitted,
    Assign,
    FleetCapabilities,
    JobAssigned,
    JobFinished,
    Preempt,
    Reason,
    SchedulerConfig,
    SchedulerState,
    Tier,
    WorkerView,
    admit,
    as_event,
    decide,
    evolve,
    fifo_decide,
    fits,
    weighted_decide,
    weighted_warm_decide,
)

pytestmark = pytest.mark.unit
POLICIES = {
    "ours": decide,
    "fifo": fifo_decide,
    "weighted": weighted_decide,
    "weighted-warm": weighted_warm_decide,
}
ITEMS = ["sdxl", "sdxl-alt", "flux", "lora-a", "lora-b", "cn-canny", "cn-depth", "flux-lora"]
# database=None: no .hypothesis/ folder in the working tree; failures print their example.
FAST = settings(
    max_examples=150, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow]
)


@st.composite
def fleets(draw: st.DrawFn) -> list[WorkerView]:
    count = draw(st.integers(1, 5))
    views = []
    for i in range(count):
        kind = draw(st.sampled_from([small, large]))
        views.append(kind(f"w{i}", *draw(st.sets(st.sampled_from(ITEMS), max_size=4))))
    return views


@st.composite
def requests(draw: st.DrawFn, start: int = 0, count: int = 25) -> list:
    out = []
    for i in range(draw(st.integers(0, count))):
        model = draw(st.sampled_from(["sdxl", "sdxl-alt", "flux"]))
        pool = ["flux-lora"] if model == "flux" else ["lora-a", "lora-b", "cn-canny", "cn-depth"]
        out.append(
            job(
                f"j{start + i}",
                draw(st.sampled_from(list(Tier))),
                at=draw(st.floats(0, 600)),
                user=draw(st.sampled_from(["u1", "u2", "u3", "u4"])),
                model=model,
                adapters=tuple(sorted(draw(st.sets(st.sampled_from(pool), max_size=2)))),
                size=draw(st.sampled_from([768, 1024, 1536])),
                batch=draw(st.sampled_from([1, 2, 4])),
            )
        )
    return sorted(out, key=lambda r: r.queued_at)


configs = st.builds(
    SchedulerConfig,
    relax_reserve_fraction=st.sampled_from([0.0, 0.2, 0.5]),
    user_share=st.sampled_from([0.2, 0.5, 1.0]),
    lookahead=st.sampled_from([1, 4, 64]),
    promote_after_s=st.sampled_from([60.0, 300.0]),
    pool_preference=st.booleans(),
)


def check_round(state: SchedulerState, decisions: list, running_before: dict) -> None:
    """Safety: idle workers only, once each; queued jobs only, once each; they fit; tokens rise."""
    workers_used, jobs_used = set(), set()
    token = state.last_token
    for d in decisions:
        if isinstance(d, Assign):
            assert d.worker_id in state.idle and state.workers[d.worker_id].accepting
            assert d.worker_id not in workers_used and d.job_id not in jobs_used
            queued_job = state.queued[d.job_id]
            assert fits(queued_job.family, queued_job.footprint_gb, state.workers[d.worker_id])
            assert d.fencing_token == token + 1
            token = d.fencing_token
            workers_used.add(d.worker_id)
            jobs_used.add(d.job_id)
        else:
            assert isinstance(d, Preempt)
            running = running_before[d.job_id]
            assert running.worker_id == d.worker_id and running.fencing_token == d.fencing_token
            assert running.job.request.tier is Tier.RELAX


@FAST
@given(
    fleet=fleets(),
    first=requests(),
    later=requests(start=100),
    config=configs,
    policy=st.sampled_from(sorted(POLICIES)),
    finish_order=st.randoms(),
)
def test_never_assigns_where_it_does_not_fit_nor_a_job_twice(
    fleet, first, later, config, policy, finish_order
) -> None:
    state = state_of(workers(*fleet) + queued(*first), config)
    assigned_once: set[str] = set()
    now = 600.0
    for batch in (later[: len(later) // 2], later[len(later) // 2 :], [], []):
        for event in queued(*(dataclasses.replace(r, queued_at=now) for r in batch)):
            evolve(state, event)
        running_before = dict(state.running)
        decisions = POLICIES[policy](state, now)
        check_round(state, decisions, running_before)
        for d in decisions:
            evolve(state, as_event(d, now))
            if isinstance(d, Assign):
                assert d.job_id not in assigned_once  # nothing is ever requeued here
                assigned_once.add(d.job_id)
        running = sorted(state.running.values(), key=lambda r: r.fencing_token)
        for r in finish_order.sample(running, k=len(running) // 2):
            evolve(state, JobFinished(r.job.job_id, r.worker_id, r.fencing_token, now))
        now += 30.0


def servable(fleet: list[WorkerView], jobs: list) -> list:
    capabilities = FleetCapabilities.of(fleet)
    return [r for r in jobs if isinstance(admit(r, capabilities, CATALOG), Admitted)]


@settings(
    max_examples=40, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow]
)
@given(fleet=fleets(), initial=requests(count=12), config=configs)
def test_under_continuous_capacity_every_queued_job_is_eventually_assigned(
    fleet, initial, config
) -> None:
    """Workers finish every job after one second while turbo keeps arriving, one job per worker
    per second from distinct users: capacity is always scarce, yet every job that some worker
    can hold is assigned within a bound set by aging. A relax job outranks the turbo queue's
    oldest job once it has waited promote_after + 10 x that job's wait (at most ~12 s here);
    add the longest affinity patience (120 s) and slack."""
    fleet = [*fleet, large("big")]  # so that every admissible job fits some worker
    initial = servable(fleet, initial)
    state = state_of(workers(*fleet) + queued(*initial), config)
    waiting = {r.job_id for r in initial}
    bound = 2 * config.promote_after_s + 300
    for second in range(600, 600 + int(bound) + 1):
        now = float(second)
        for r in list(state.running.values()):
            evolve(state, JobFinished(r.job.job_id, r.worker_id, r.fencing_token, now))
        flood = [
            job(f"t{second}-{i}", Tier.TURBO, at=now, user=f"t{second}-{i}")
            for i in range(len(fleet))
        ]
        for event in queued(*servable(fleet, flood)):
            evolve(state, event)
        for d in decide(state, now):
            evolve(state, as_event(d, now))
            if isinstance(d, Assign):
                waiting.discard(d.job_id)
        if not waiting:
            return
    pytest.fail(f"still waiting after {bound:.0f} s of full capacity: {sorted(waiting)}")


@FAST
@given(
    fleet=fleets(),
    jobs=requests(),
    config=configs,
    busy=st.sets(st.integers(0, 4)),
    now=st.sampled_from([605.0, 640.0, 700.0]),
)
def test_when_capacity_is_scarce_tier_order_holds_except_where_aging_promotes(
    fleet, jobs, config, busy, now
) -> None:
    """Every lower-tier assignment is explained: its tier was at least as urgent (it aged), or
    relax was below its reserve, or the more urgent job was briefly waiting for a warm worker
    (within its patience, or within its warm-wait limit), or a worker with a smaller budget can
    run the more urgent job and it has waited less than its tier's wait target (pool preference:
    the larger worker leaves it to the smaller ones), or the worker was held for it by a
    preemption."""
    state = state_of(workers(*fleet) + queued(*jobs), config)
    for i, r in enumerate(list(state.queued.values())[: len(busy)]):
        if f"w{i}" in state.idle:
            evolve(state, JobAssigned(r.job_id, f"w{i}", 10_000 + i, 600.0))
    taken: set[str] = set()
    per_user: dict[tuple[Tier, str], int] = {}
    for key, n in state.running_by_user.items():
        per_user[key] = n
    cap = max(1, math.floor(config.user_share * state.accepting_workers()))
    relax_running = state.running_by_tier[Tier.RELAX]
    reserve = math.ceil(config.relax_reserve_fraction * state.accepting_workers())

    def left_to_smaller(q, worker: WorkerView) -> bool:
        if not config.pool_preference or now - q.due_since >= config.wait_targets_s[q.request.tier]:
            return False
        return any(
            w.accepting and w.budget_gb < worker.budget_gb and fits(q.family, q.footprint_gb, w)
            for w in state.workers.values()
        )

    def candidates(tier: Tier, worker: WorkerView) -> list:
        return [
            q
            for q in state.queued.values()
            if q.request.tier is tier
            and q.job_id not in taken
            and fits(q.family, q.footprint_gb, worker)
            and per_user.get((tier, q.request.user_id), 0) < cap
        ]

    for d in decide(state, now):
        if not isinstance(d, Assign):
            continue
        worker = state.workers[d.worker_id]
        chosen = state.queued[d.job_id]
        tier = chosen.request.tier
        best = max(config.urgency(tier, now - q.due_since) for q in candidates(tier, worker))
        for higher in Tier:
            if list(Tier).index(higher) >= list(Tier).index(tier):
                continue
            for other in candidates(higher, worker):
                more_urgent = config.urgency(higher, now - other.due_since) > best
                if not more_urgent or left_to_smaller(other, worker):
                    continue
                if d.reason is Reason.RESERVED:
                    assert tier is Tier.RELAX and relax_running < reserve
                elif d.reason is Reason.AFFINITY:
                    kept = [q for q in candidates(higher, worker) if not left_to_smaller(q, worker)]
                    oldest = min(kept, key=lambda q: (q.due_since, q.seq))
                    waited = now - oldest.due_since
                    assert waited < max(
                        config.affinity_patience_s[higher], config.warm_wait_s[higher]
                    )
                else:
                    assert d.reason is Reason.HELD, (d, other.job_id)
        taken.add(d.job_id)
        key = (tier, chosen.request.user_id)
        per_user[key] = per_user.get(key, 0) + 1
        relax_running += tier is Tier.RELAX

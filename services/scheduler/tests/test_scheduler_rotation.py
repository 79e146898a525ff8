"""Per-user rotation inside a tier (ADR 0620): during one user's flood, another user's job takes
the next worker that frees; the rotation is a function of the events (when jobs ended)."""

from __future__ import annotations

import random

import pytest
from scheduler_testkit import decide_and_apply, job, queued, small, state_of, workers
from test_scheduler_faults import Recorder, beat, image, replayed

from imagegen_scheduler.domain import (
    Assign,
    JobFinished,
    SchedulerConfig,
    SchedulerState,
    Tier,
    WorkerLost,
    decide,
    evolve,
)
from imagegen_scheduler.domain.queues import TierQueue
from imagegen_schemas import GenerationParams, Plan
from imagegen_schemas import Tier as SchemaTier
from imagegen_schemas import jobs as ev
from imagegen_schemas.catalog import TOPICS

pytestmark = pytest.mark.unit

FLOOD = [job(f"a{i:02d}", at=0.0, user="alice") for i in range(60)]
BOB = job("bob-1", at=0.5, user="bob")


def _assigned(decisions: list[object]) -> list[str]:
    return [d.job_id for d in decisions if isinstance(d, Assign)]


def _finish_all(state: SchedulerState, now: float) -> None:
    for job_id, running in list(state.running.items()):
        evolve(state, JobFinished(job_id, running.worker_id, running.fencing_token, now))


def _one_worker_flood(config: SchedulerConfig) -> tuple[SchedulerState, list[str]]:
    """One worker; alice floods 60 relax jobs at t=0, her first one starts, then bob submits
    one job; returns the state and the job the worker takes once it frees."""
    state = state_of(workers(small("w1", "sdxl")) + queued(*FLOOD), config)
    first = _assigned(decide_and_apply(state, decide, 0.0))
    assert first == ["a00"]
    for event in queued(BOB):
        evolve(state, event)
    assert _assigned(decide_and_apply(state, decide, 1.0)) == []  # the worker is busy
    _finish_all(state, 10.0)
    return state, _assigned(decide_and_apply(state, decide, 10.0))


def test_during_a_60_job_flood_another_users_job_takes_the_next_free_worker() -> None:
    _, picked = _one_worker_flood(SchedulerConfig())
    assert picked == ["bob-1"]


def test_without_rotation_the_flood_runs_first() -> None:
    """The order before ADR 0620 (the finding of issue #14), kept as the baseline."""
    _, picked = _one_worker_flood(SchedulerConfig(user_rotation=False))
    assert picked == ["a01"]


def test_after_bobs_turn_the_flood_resumes_in_its_own_order() -> None:
    state, picked = _one_worker_flood(SchedulerConfig())
    assert picked == ["bob-1"]
    order = []
    for t in range(20, 80, 10):
        _finish_all(state, float(t))
        order += _assigned(decide_and_apply(state, decide, float(t)))
    assert order == ["a01", "a02", "a03", "a04", "a05", "a06"]


def test_users_take_turns_and_the_least_recently_served_goes_first() -> None:
    """Three users on one worker (cap 1): alice (4 jobs), bob (4 jobs), carol (1 job, last to
    arrive); the worker serves alice, bob, carol, alice, bob, alice, then alice's last job: a
    user who queues no more jobs than the cap lets them run at once takes no turn, so a3
    (queued at 0) keeps its age ahead of bob's b2 (queued at 0.1); then bob's two."""
    jobs = [job(f"a{i}", at=0.0, user="alice") for i in range(4)]
    jobs += [job(f"b{i}", at=0.1, user="bob") for i in range(4)]
    jobs += [job("c0", at=0.2, user="carol")]
    state = state_of(workers(small("w1", "sdxl")) + queued(*jobs))
    order = []
    for t in range(0, 100, 10):
        _finish_all(state, float(t))
        order += _assigned(decide_and_apply(state, decide, float(t)))
    assert order == ["a0", "b0", "c0", "a1", "b1", "a2", "a3", "b2", "b3"]


def test_a_user_with_two_overlapping_jobs_keeps_age_order() -> None:
    """Issue #14's cost on seed-peak: an ordinary user whose second job was queued while their
    first ran went behind every job queued before the first one ended (a whole queue wait more),
    aged past the relax cold deadline and loaded models. Their one remaining queued job fits
    under the cap, so it keeps its age: alice's a1 (queued at 0) goes before bob's b0 (at 5)."""
    jobs = [job("a0", at=0.0, user="alice"), job("a1", at=0.0, user="alice")]
    state = state_of(workers(small("w1", "sdxl")) + queued(*jobs))
    assert _assigned(decide_and_apply(state, decide, 0.0)) == ["a0"]
    for event in queued(job("b0", at=5.0, user="bob")):
        evolve(state, event)
    _finish_all(state, 10.0)
    assert _assigned(decide_and_apply(state, decide, 10.0)) == ["a1"]
    _finish_all(state, 20.0)
    assert _assigned(decide_and_apply(state, decide, 20.0)) == ["b0"]


def test_the_turn_threshold_follows_the_cap() -> None:
    """The queues take turns only for users queueing more than the cap (5% of the accepting
    workers, at least one); it follows the fleet as workers come and go."""
    fleet = [small(f"w{i:02d}", "sdxl") for i in range(40)]
    state = state_of(workers(*fleet))
    assert state.user_cap() == 2
    assert {q.rotate_above for q in state.queues.values()} == {2}
    for i in range(21):
        evolve(state, WorkerLost(f"w{i:02d}", 1.0))
    assert state.user_cap() == 1
    assert {q.rotate_above for q in state.queues.values()} == {1}


def test_a_changed_threshold_rekeys_the_turns() -> None:
    queue = TierQueue()
    state = state_of(
        queued(job("a0", user="alice"), job("a1", user="alice"), job("b0", at=1.0, user="bob"))
    )
    for queued_job in state.queues[Tier.RELAX].arrivals.values():
        queue.push(queued_job)
    queue.note_served("alice", 5.0)  # alice's a0 ended at 5 (a0 and a1 were queued again)
    assert [j.job_id for j in queue.in_order(rotate=True)] == ["b0", "a0", "a1"]
    queue.set_rotate_above(2)  # alice's two jobs fit under a cap of two: age order
    assert [j.job_id for j in queue.in_order(rotate=True)] == ["a0", "b0", "a1"]
    assert queue.turn(queue.by_user["alice"][0]) == 0.0
    queue.set_rotate_above(1)
    assert [j.job_id for j in queue.in_order(rotate=True)] == ["b0", "a0", "a1"]
    queue.remove("a0", "alice")  # alice now queues one job: her turn no longer counts
    assert [j.job_id for j in queue.in_order(rotate=True)] == ["a1", "b0"]


def test_one_round_with_many_free_workers_interleaves_the_users() -> None:
    """Four idle workers and a user cap that lets alice take them all: one decision round still
    gives bob and carol a worker each before alice's third job."""
    fleet = [small(f"w{i}", "sdxl") for i in range(4)]
    jobs = [job(f"a{i}", at=0.0, user="alice") for i in range(6)]
    jobs += [job("b0", at=1.0, user="bob"), job("c0", at=2.0, user="carol")]
    config = SchedulerConfig(user_share=1.0)
    state = state_of(workers(*fleet) + queued(*jobs), config)
    assert sorted(_assigned(decide_and_apply(state, decide, 3.0))) == ["a0", "a1", "b0", "c0"]
    baseline = state_of(
        workers(*fleet) + queued(*jobs), SchedulerConfig(user_share=1.0, user_rotation=False)
    )
    assert sorted(_assigned(decide_and_apply(baseline, decide, 3.0))) == ["a0", "a1", "a2", "a3"]


NO_RESERVE = SchedulerConfig(relax_reserve_fraction=0.0)  # one worker: no relax reserve


def test_the_tier_order_still_comes_first() -> None:
    """Rotation is inside a tier: a fresh turbo job of a user never served still beats bob's
    relax job, and a relax flooder's second job waits behind a turbo job."""
    state = state_of(workers(small("w1", "sdxl")) + queued(*FLOOD[:3]), NO_RESERVE)
    assert _assigned(decide_and_apply(state, decide, 0.0)) == ["a00"]
    for event in queued(BOB, job("t1", Tier.TURBO, at=1.0, user="tess")):
        evolve(state, event)
    _finish_all(state, 10.0)
    assert _assigned(decide_and_apply(state, decide, 10.0)) == ["t1"]
    _finish_all(state, 20.0)
    assert _assigned(decide_and_apply(state, decide, 20.0)) == ["bob-1"]


@pytest.mark.parametrize(("now", "picked"), [(309.0, "t1"), (311.0, "a01")])
def test_aging_counts_from_the_turn(now: float, picked: str) -> None:
    """Aging between tiers still promotes a relax job after 300 s, counted from its turn: alice's
    a01 (queued at 0) had its turn when her a00 finished at t=10, so it beats a fresh turbo job
    at 311 s and not at 309 s (from its arrival it would have at 301 s already)."""
    state = state_of(workers(small("w1", "sdxl")) + queued(*FLOOD[:3]), NO_RESERVE)
    assert _assigned(decide_and_apply(state, decide, 0.0)) == ["a00"]
    _finish_all(state, 10.0)  # a00 ends at t=10; no decision until `now`
    for event in queued(job("t1", Tier.TURBO, at=now, user="tess")):
        evolve(state, event)
    assert _assigned(decide_and_apply(state, decide, now)) == [picked]


def test_the_rotation_is_the_same_whatever_order_the_finishes_are_recorded_in() -> None:
    """``served`` is a max over finish times: recording them shuffled, twice over, gives
    the queue order recorded in order gives."""
    tokens = [("alice", 3), ("bob", 1), ("carol", 2), ("alice", 5), ("bob", 4)]
    expected: list[str] | None = None
    rng = random.Random(7)
    for trial in range(20):
        queue = TierQueue()
        state = state_of(
            queued(
                *[
                    job(f"{u}-{i}", at=0.0, user=u)
                    for u in ("alice", "bob", "carol", "dave")
                    for i in range(2)
                ]
            )
        )
        for queued_job in state.queues[Tier.RELAX].arrivals.values():
            queue.push(queued_job)
        shuffled = tokens * 2
        if trial:
            rng.shuffle(shuffled)
        for user, token in shuffled:
            queue.note_served(user, token)
        order = [j.job_id for j in queue.in_order(rotate=True)]
        expected = order if expected is None else expected
        assert order == expected
    assert expected == [
        "dave-0",
        "carol-0",
        "bob-0",
        "alice-0",
        "dave-1",
        "carol-1",
        "bob-1",
        "alice-1",
    ]


def test_a_skipped_user_costs_no_turn_and_keeps_their_place() -> None:
    queue = TierQueue()
    alice = [job(f"a{i}", user="alice") for i in range(3)]
    state = state_of(queued(*alice, job("b0", at=1.0, user="bob")))
    for queued_job in state.queues[Tier.RELAX].arrivals.values():
        queue.push(queued_job)
    queue.note_served("bob", 9)  # bob queues one job: it keeps its age
    assert [j.job_id for j in queue.in_order(rotate=True)] == ["a0", "b0", "a1", "a2"]
    skip_alice = [j.job_id for j in queue.in_order(lambda u: u == "alice", rotate=True)]
    assert skip_alice == ["b0"]
    queue.remove("a0", "alice")
    queue.note_served("alice", 10)
    assert [j.job_id for j in queue.in_order(rotate=True)] == ["b0", "a1", "a2"]
    assert [j.job_id for j in queue.in_order()] == ["a1", "a2", "b0"]  # age order unchanged


def test_a_user_whose_earlier_job_was_done_keeps_age_order() -> None:
    """Rotation is not round robin by last service: carol's job finished at t=10, she submits
    again at t=20; dave (never served) submits at t=30; the worker frees at t=40 and takes
    carol's older job. Nobody is starved by newcomers (the property tests check this too)."""
    state = state_of(workers(small("w1", "sdxl")) + queued(job("c0", at=0.0, user="carol")))
    assert _assigned(decide_and_apply(state, decide, 0.0)) == ["c0"]
    _finish_all(state, 10.0)
    for event in queued(
        job("x0", at=10.0, user="xavier"),
        job("c1", at=20.0, user="carol"),
        job("d0", at=30.0, user="dave"),
    ):
        evolve(state, event)
    assert _assigned(decide_and_apply(state, decide, 10.0)) == ["x0"]
    _finish_all(state, 40.0)
    assert _assigned(decide_and_apply(state, decide, 40.0)) == ["c1"]


# ---- the service: the fold records the turns from the events (replay equals live) --------------


def _requested(job_id: str, user: str) -> list[ev.Payload]:
    params = GenerationParams(
        prompt="p", model="m", width=64, height=64, steps=4, guidance_scale=5, seed=3
    )
    return [
        ev.GenerationRequested(
            job_id=job_id, user_id=user, plan=Plan.PRO, tier=SchemaTier.FAST, params=params
        ),
        ev.PromptModerated(job_id=job_id, verdict=ev.Verdict.ALLOWED),
    ]


async def test_the_service_gives_the_freed_worker_to_the_other_user_and_replay_agrees() -> None:
    r = Recorder()
    await r.feed(beat("w1"))
    for i in range(10):
        await r.feed(*_requested(f"a{i}", "alice"))
    assert r.scheduled("a0") == [("w1", 1, 1)]
    await r.at(1.0)
    await r.feed(*_requested("bob-1", "bob"))
    await r.at(2.0)
    await r.feed(image("a0", "w1", 1))
    assert r.scheduled("bob-1") == [("w1", 2, 1)], "the flood's next job took the freed worker"
    assert r.scheduled("a1") == []
    await r.at(3.0)
    await r.feed(image("bob-1", "w1", 2))
    assert r.scheduled("a1") == [("w1", 3, 1)]  # work-conserving: the flood goes on
    live = dict(r.s.state.queues[Tier.FAST].served)
    assert set(live) == {"alice", "bob"}

    by_topic: dict[str, list[tuple[ev.Payload, float]]] = {}
    topic_of = {e.event_type: t.name for t in TOPICS for e in t.events}
    for p, at in r.log:
        by_topic.setdefault(topic_of[p.event_type], []).append((p, at))
    for seed in range(6):
        rng = random.Random(seed)
        streams = [list(v) for v in by_topic.values()]
        merged: list[tuple[ev.Payload, float]] = []
        while any(streams):  # each topic keeps its order; topics interleave at random
            merged.append(rng.choice([s for s in streams if s]).pop(0))
        again = await replayed(merged, r.now)
        assert dict(again.state.queues[Tier.FAST].served) == live, seed
        turns = [j.job_id for j in again.state.queues[Tier.FAST].in_order(rotate=True)]
        assert turns == [j.job_id for j in r.s.state.queues[Tier.FAST].in_order(rotate=True)]

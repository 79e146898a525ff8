"""Given heartbeats and assignments, when time passes, then lost workers' jobs are re-queued."""

from __future__ import annotations

import asyncio

import pytest

from imagegen_pool_manager.service_layer.pool import PoolManager
from imagegen_runtime.publishing import InMemoryPublisher
from imagegen_schemas import Envelope, GenerationParams, Tier
from imagegen_schemas import jobs as ev
from imagegen_schemas.workers import WorkerHeartbeat, WorkerStatus

pytestmark = pytest.mark.unit
PARAMS = GenerationParams(
    prompt="p", model="m", width=64, height=64, steps=2, guidance_scale=1.0, seed=1
)


def beat(wid: str) -> WorkerHeartbeat:
    return WorkerHeartbeat(
        worker_id=wid,
        status=WorkerStatus.BUSY,
        gpu_type="cpu",
        memory_total_bytes=1,
        memory_free_bytes=1,
    )


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def wrap(payload, at: float) -> Envelope:  # type: ignore[no-untyped-def]
    from datetime import UTC, datetime

    return Envelope.wrap(
        payload, correlation_id="x", producer="t", occurred_at=datetime.fromtimestamp(at, UTC)
    )


async def feed(pool: PoolManager, payload, at: float, env: Envelope | None = None) -> None:  # type: ignore[no-untyped-def]
    await pool.on_event(env or wrap(payload, at), payload, None, True)  # type: ignore[arg-type]


async def test_silent_worker_is_lost_once_and_its_job_requeued() -> None:
    pub, clock = InMemoryPublisher(), Clock()
    pool = PoolManager(pub, timeout_s=10, clock=clock)
    await feed(pool, beat("w1"), 1000)
    await feed(pool, beat("w2"), 1000)
    await feed(
        pool,
        ev.JobScheduled(
            job_id="j1", worker_id="w1", fencing_token=3, attempt=2, tier=Tier.FAST, params=PARAMS
        ),
        1001,
    )
    await feed(
        pool,
        ev.JobScheduled(
            job_id="j2", worker_id="w2", fencing_token=4, tier=Tier.FAST, params=PARAMS
        ),
        1001,
    )
    clock.now = 1009
    assert await pool.sweep() == 0
    await feed(pool, beat("w2"), 1009)
    clock.now = 1011
    assert await pool.sweep() == 1
    failed = [e for e in pub.on("imagegen.jobs.ended")]
    assert len(failed) == 1 and failed[0].data["job_id"] == "j1"
    assert failed[0].data["reason"] == "worker_lost" and failed[0].data["terminal"] is False
    assert failed[0].data["attempt"] == 2
    assert await pool.sweep() == 0, "a loss is declared once"


async def test_finished_jobs_are_not_requeued_and_ids_are_stable() -> None:
    clock = Clock()
    pools = [PoolManager(InMemoryPublisher(), timeout_s=5, clock=clock) for _ in range(2)]
    log = [
        (p, wrap(p, at))
        for p, at in [
            (beat("w1"), 1000),
            (
                ev.JobScheduled(
                    job_id="done", worker_id="w1", fencing_token=1, tier=Tier.RELAX, params=PARAMS
                ),
                1000,
            ),
            (
                ev.JobScheduled(
                    job_id="busy", worker_id="w1", fencing_token=2, tier=Tier.RELAX, params=PARAMS
                ),
                1000,
            ),
            (ev.ImageGenerated(job_id="done", worker_id="w1", fencing_token=1, images=()), 1001),
        ]
    ]
    for pool in pools:  # two processes folding the same log decide the same event ids
        for payload, env in log:
            await feed(pool, payload, 0, env)
    clock.now = 2000
    ids = []
    for pool in pools:
        await pool.sweep()
        sent = pool.publisher.on("imagegen.jobs.ended")  # type: ignore[attr-defined]
        assert [e.data["job_id"] for e in sent] == ["busy"]
        ids.append(sent[0].event_id)
    assert ids[0] == ids[1]


async def test_a_paused_job_is_not_orphaned_when_its_former_worker_goes_silent() -> None:
    pub, clock = InMemoryPublisher(), Clock()
    pool = PoolManager(pub, timeout_s=10, clock=clock)
    await feed(pool, beat("w1"), 1000)
    for token in (1, 2):  # the pause of token 1 is stale once token 2 is assigned
        await feed(
            pool,
            ev.JobScheduled(
                job_id=f"j{token}",
                worker_id="w1",
                fencing_token=token,
                tier=Tier.RELAX,
                params=PARAMS,
            ),
            1001,
        )
    await feed(
        pool,
        ev.GenerationPaused(
            job_id="j1",
            worker_id="w1",
            fencing_token=1,
            steps_done=1,
            total_steps=2,
            state_uri="file:///s",
            state_sha256="0" * 64,
        ),
        1002,
    )
    await feed(
        pool,
        ev.GenerationPaused(
            job_id="j2",
            worker_id="w1",
            fencing_token=1,
            steps_done=1,
            total_steps=2,
            state_uri="file:///s",
            state_sha256="0" * 64,
        ),
        1002,
    )
    clock.now = 1020
    assert await pool.sweep() == 1
    assert [e.data["job_id"] for e in pub.on("imagegen.jobs.ended")] == ["j2"]


def scheduled(job: str, token: int, attempt: int = 1) -> ev.JobScheduled:
    return ev.JobScheduled(
        job_id=job,
        worker_id="w1",
        fencing_token=token,
        attempt=attempt,
        tier=Tier.FAST,
        params=PARAMS,
    )


async def sweep_until(pool: PoolManager, clock: Clock, until: float) -> int:
    """Sweep once a second, as the service does, up to ``until``; the jobs re-queued."""
    published = 0
    while clock.now < until:
        clock.now = min(clock.now + 1, until)
        published += await pool.sweep()
    return published


async def test_an_outcome_folded_before_its_assignment_still_ends_it() -> None:
    """Replay reads the topics in no fixed order across them: a job's end (results or ended
    topic) can be folded before its assignment (scheduled topic). Before the fix every such job
    stayed in flight, and the worker's loss revoked every job it had ever finished."""
    pub, clock = InMemoryPublisher(), Clock()
    pool = PoolManager(pub, timeout_s=10, clock=clock)
    await feed(pool, beat("w1"), 1000)
    ends: list[tuple[object, ev.JobScheduled]] = [
        (
            ev.ImageGenerated(job_id="g", worker_id="w1", fencing_token=1, images=()),
            scheduled("g", 1),
        ),
        (ev.GenerationCancelled(job_id="c"), scheduled("c", 2)),
        (ev.GenerationFailed(job_id="t", reason=ev.FailureReason.TIMEOUT), scheduled("t", 3)),
        (
            ev.GenerationFailed(
                job_id="a", reason=ev.FailureReason.OUT_OF_MEMORY, terminal=False, attempt=1
            ),
            scheduled("a", 4, attempt=1),
        ),
        (
            ev.GenerationPaused(
                job_id="p",
                worker_id="w1",
                fencing_token=5,
                steps_done=1,
                total_steps=2,
                state_uri="file:///s",
                state_sha256="0" * 64,
            ),
            scheduled("p", 5),
        ),
    ]
    for end, assignment in ends:
        await feed(pool, end, 1001)
        await feed(pool, assignment, 1001)
    # a later assignment of a job whose earlier attempt or assignment ended is in flight
    await feed(pool, scheduled("a", 6, attempt=2), 1002)
    await feed(pool, scheduled("p", 7), 1002)
    await feed(pool, scheduled("g0", 8), 1002)
    await feed(
        pool, ev.ImageGenerated(job_id="g0", worker_id="w1", fencing_token=7, images=()), 1003
    )
    pool.listening()
    assert await sweep_until(pool, clock, 1020) == 3
    assert sorted(e.data["job_id"] for e in pub.on("imagegen.jobs.ended")) == ["a", "g0", "p"]


async def test_the_pool_manager_own_pause_is_not_its_workers_silence() -> None:
    """Chaos (ADR 0010) SIGSTOPs the pool-manager: on resume, its clock has moved on while the
    heartbeats sent meanwhile still wait in Kafka. It must hear the workers out first."""
    pub, clock = InMemoryPublisher(), Clock()
    pool = PoolManager(pub, timeout_s=10, clock=clock)
    await feed(pool, beat("w1"), 1000)
    await feed(pool, scheduled("j", 1), 1000)
    pool.listening()
    clock.now = 1001
    assert await pool.sweep() == 0
    clock.now = 1060  # stopped for a minute; no sweep ran
    assert await pool.sweep() == 0, "a worker is silent only for time the pool-manager listened"
    assert await sweep_until(pool, clock, 1065) == 0
    await feed(pool, beat("w1"), 1059)  # the backlog arrives
    assert await sweep_until(pool, clock, 1070) == 0
    assert await sweep_until(pool, clock, 1071) == 1, "silent for 11 s of listening"


async def test_after_a_restart_replayed_heartbeats_get_a_timeout_to_be_renewed() -> None:
    pub, clock = InMemoryPublisher(), Clock()
    pool = PoolManager(pub, timeout_s=10, clock=clock)
    await feed(pool, beat("w1"), 900)  # an old heartbeat, replayed
    await feed(pool, scheduled("j", 1), 900)
    clock.now = 1000
    pool.listening()  # caught up with the log
    assert await sweep_until(pool, clock, 1010) == 0
    assert await sweep_until(pool, clock, 1011) == 1


async def test_a_failure_naming_an_older_token_leaves_the_current_assignment_in_flight() -> None:
    pub, clock = InMemoryPublisher(), Clock()
    pool = PoolManager(pub, timeout_s=10, clock=clock)
    await feed(pool, beat("w1"), 1000)
    await feed(pool, scheduled("j", 2), 1000)  # resumed as attempt 1 after a pause of token 1
    stale = ev.GenerationFailed(
        job_id="j",
        reason=ev.FailureReason.STORAGE_UNAVAILABLE,
        terminal=False,
        attempt=1,
        worker_id="w1",
        fencing_token=1,
    )
    await feed(pool, stale, 1001)
    pool.listening()
    assert await sweep_until(pool, clock, 1011) == 1
    [lost] = pub.on("imagegen.jobs.ended")
    assert (lost.data["job_id"], lost.data["fencing_token"]) == ("j", 2)


async def test_the_sweep_loop_stops_when_its_consumer_never_caught_up() -> None:
    """Regression (chaos soak), as for the scheduler: a sweep loop waiting on ``caught_up``
    alone kept a stopping pool-manager alive for good. Failed before the fix."""
    pool = PoolManager(InMemoryPublisher(), timeout_s=10, clock=Clock())
    stop = asyncio.Event()
    task = asyncio.create_task(pool.sweep_loop(asyncio.Event(), stop))
    await asyncio.sleep(0)
    stop.set()
    await asyncio.wait_for(task, 5)

"""Given heartbeats and assignments, when time passes, then lost workers' jobs are re-queued."""

from __future__ import annotations

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

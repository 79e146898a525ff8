"""A worker whose heartbeats stopped gets no new job (found by a stack that had once run two
workers: the second one's last heartbeat, "idle", stayed in the compacted topic, a restarted
scheduler assigned a job to it, and the job waited for a worker that did not exist)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from imagegen_runtime.publishing import InMemoryPublisher
from imagegen_scheduler.adapters.catalog import load_catalog
from imagegen_scheduler.service_layer.scheduling import Scheduler
from imagegen_schemas import Envelope, GenerationParams, Plan, Tier
from imagegen_schemas import jobs as ev
from imagegen_schemas.workers import WorkerHeartbeat, WorkerStatus

pytestmark = pytest.mark.unit
T0 = 1_800_000_000.0


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


def beat(worker_id: str) -> WorkerHeartbeat:
    return WorkerHeartbeat(
        worker_id=worker_id,
        status=WorkerStatus.IDLE,
        gpu_type="cpu",
        memory_total_bytes=2**34,
        memory_free_bytes=2**34,
        capabilities=("sd15",),
    )


def requested(job_id: str, model: str = "m") -> list[ev.Payload]:
    params = GenerationParams(
        prompt="p", model=model, width=64, height=64, steps=4, guidance_scale=5, seed=1
    )
    return [
        ev.GenerationRequested(
            job_id=job_id, user_id=f"u-{job_id}", plan=Plan.PRO, tier=Tier.FAST, params=params
        ),
        ev.PromptModerated(job_id=job_id, verdict=ev.Verdict.ALLOWED),
    ]


async def feed(s: Scheduler, at: float, *payloads: ev.Payload) -> None:
    for p in payloads:
        key = getattr(p, "job_id", None) or getattr(p, "worker_id", "x")
        when = datetime.fromtimestamp(at, UTC)
        env = Envelope.wrap(p, correlation_id=key, producer="t", occurred_at=when)
        await s.on_event(env, p, None, True)
    await s.after_batch()


def assigned(pub: InMemoryPublisher) -> dict[str, str]:
    return {
        s.job_id: s.worker_id
        for r in pub.records
        if r.envelope.type == ev.JobScheduled.event_type
        and (s := ev.JobScheduled.model_validate(r.envelope.data))
    }


@pytest.fixture
def scheduler(tmp_path: Path) -> tuple[Scheduler, InMemoryPublisher, Clock]:
    for model in ("m", "m2"):
        (tmp_path / model).mkdir()
        doc = {"id": model, "family": "sd15"}
        (tmp_path / model / "model.json").write_text(json.dumps(doc))
    pub, clock = InMemoryPublisher(), Clock()
    s = Scheduler(pub, load_catalog(tmp_path), clock=clock, worker_silent_after_s=10.0)
    s.live = True
    return s, pub, clock


async def test_a_silent_worker_gets_no_job_until_it_heartbeats_again(
    scheduler: tuple[Scheduler, InMemoryPublisher, Clock],
) -> None:
    s, pub, clock = scheduler
    await feed(s, T0, beat("gone"))  # its last heartbeat: idle; then nothing
    clock.now = T0 + 30
    await feed(s, T0 + 29, beat("alive"))
    await feed(s, clock.now, *requested("j1"))
    assert assigned(pub) == {"j1": "alive"}
    # "alive" is busy and holds m; j2 (another model) waits rather than go to "gone"
    await feed(s, clock.now, *requested("j2", "m2"))
    assert "j2" not in assigned(pub)
    clock.now = T0 + 31
    await feed(s, clock.now, beat("gone"))  # back: takes work again
    assert assigned(pub)["j2"] == "gone"


async def test_without_the_setting_the_last_heartbeat_is_trusted(tmp_path: Path) -> None:
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "model.json").write_text(json.dumps({"id": "m", "family": "sd15"}))
    pub, clock = InMemoryPublisher(), Clock()
    s = Scheduler(pub, load_catalog(tmp_path), clock=clock)
    s.live = True
    await feed(s, T0, beat("gone"))
    clock.now = T0 + 30
    await feed(s, clock.now, *requested("j1"))
    assert assigned(pub) == {"j1": "gone"}

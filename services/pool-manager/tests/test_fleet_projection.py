"""Given heartbeats and residency events in any order, the fleet projection operators read;
and the projection kept in its store: changes only, rebuilt whole after a start."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime

import pytest
from sqlalchemy.exc import OperationalError

from imagegen_pool_manager.adapters.fleet_store import InMemoryFleetStore
from imagegen_pool_manager.domain.fleet import Fleet, evolve, project
from imagegen_pool_manager.service_layer.pool import PoolManager
from imagegen_runtime.publishing import InMemoryPublisher
from imagegen_schemas import Envelope, GenerationParams, Tier
from imagegen_schemas import jobs as ev
from imagegen_schemas.workers import (
    LoadedModel,
    ModelEvicted,
    ModelLoaded,
    WorkerHeartbeat,
    WorkerStatus,
)

pytestmark = pytest.mark.unit
PARAMS = GenerationParams(
    prompt="p", model="m", width=64, height=64, steps=2, guidance_scale=1.0, seed=1
)
MB = 1 << 20


def beat(
    wid: str, *loaded: LoadedModel, running: str | None = None, pinned: tuple[str, ...] = ()
) -> WorkerHeartbeat:
    return WorkerHeartbeat(
        worker_id=wid,
        status=WorkerStatus.BUSY if running else WorkerStatus.IDLE,
        gpu_type="cpu",
        memory_total_bytes=512 * MB,
        memory_free_bytes=500 * MB,
        loaded=loaded,
        running_job_id=running,
        capabilities=("sdxl", "sd15"),
        pinned=pinned,
    )


def model(model_id: str, kind: str = "base", size: int = 3 * MB) -> LoadedModel:
    return LoadedModel(model_id=model_id, kind=kind, bytes=size)


def fold(events: list[tuple[object, float]]) -> Fleet:
    fleet = Fleet()
    for i, (payload, at) in enumerate(events):
        evolve(fleet, payload, at, f"e{i}")
    return fleet


def test_a_worker_projects_its_state_memory_models_adapters_and_jobs() -> None:
    fleet = fold(
        [
            (
                beat(
                    "w1",
                    model("tiny-sdxl"),
                    model("ink", "lora", MB),
                    running="j1",
                    pinned=("tiny-sdxl", "tiny-sd15"),  # a pin outlives an unload
                ),
                10.0,
            ),
            (
                ev.JobScheduled(
                    job_id="j1",
                    worker_id="w1",
                    fencing_token=1,
                    attempt=1,
                    tier=Tier.FAST,
                    params=PARAMS,
                ),
                10.5,
            ),
        ]
    )
    [doc] = project(fleet).values()
    assert doc == {
        "worker_id": "w1",
        "state": "busy",
        "gpu_type": "cpu",
        "capabilities": ["sd15", "sdxl"],
        "memory_total_bytes": 512 * MB,
        "memory_free_bytes": 500 * MB,
        "memory_used_bytes": 12 * MB,
        "largest_free_block_bytes": None,
        "fragmentation_ratio": None,
        "models": [{"model_id": "tiny-sdxl", "kind": "base", "bytes": 3 * MB}],
        "adapters": [{"model_id": "ink", "kind": "lora", "bytes": MB}],
        "pinned": ["tiny-sd15", "tiny-sdxl"],
        "running_job_id": "j1",
        "in_flight": ["j1"],
        "last_seen": 10.0,
    }


def test_residency_is_the_newest_fact_whatever_order_the_topics_were_read_in() -> None:
    facts = [
        (beat("w1", model("a")), 10.0),  # a resident
        (ModelLoaded(worker_id="w1", model=model("b"), load_ms=80.0), 11.0),  # b loaded after
        (ModelEvicted(worker_id="w1", model_id="a", reason="command"), 12.0),  # a evicted after
        (beat("w1", model("b"), model("c")), 13.0),  # the newest snapshot: b and c
    ]
    for order in itertools.permutations(facts):
        fleet = fold(list(order))
        assert [m["model_id"] for m in project(fleet)["w1"]["models"]] == ["b", "c"], order


def test_an_eviction_newer_than_the_last_beat_removes_the_model() -> None:
    fleet = fold(
        [
            (beat("w1", model("a"), model("b")), 10.0),
            (ModelEvicted(worker_id="w1", model_id="a", reason="command"), 11.0),
        ]
    )
    assert [m["model_id"] for m in project(fleet)["w1"]["models"]] == ["b"]


def wrap(payload: object, at: float) -> Envelope:
    return Envelope.wrap(
        payload,  # type: ignore[arg-type]
        correlation_id="x",
        producer="t",
        occurred_at=datetime.fromtimestamp(at, UTC),
    )


async def feed(pool: PoolManager, payload: object, at: float) -> None:
    await pool.on_event(wrap(payload, at), payload, None, True)  # type: ignore[arg-type]


async def test_the_store_gets_the_whole_projection_first_then_only_changes() -> None:
    store = InMemoryFleetStore()
    store.docs = {"stale": {"worker_id": "stale"}}  # a projection left by an earlier run
    pool = PoolManager(InMemoryPublisher(), timeout_s=10, clock=lambda: 20.0, store=store)
    await feed(pool, beat("w1", model("a")), 10.0)
    await feed(pool, beat("w2"), 10.0)
    assert await pool.persist() == 2
    assert sorted(store.docs) == ["w1", "w2"]  # rebuilt: the stale row is gone
    assert await pool.persist() == 0 and store.writes == 1  # nothing changed, nothing written
    await feed(pool, beat("w2", model("b")), 11.0)
    assert await pool.persist() == 1
    assert [m["model_id"] for m in store.docs["w2"]["models"]] == ["b"]
    assert store.docs == project(pool.fleet)


async def test_a_store_that_is_away_is_retried_and_named_meanwhile() -> None:
    class Away(InMemoryFleetStore):
        down = True

        async def replace(self, docs):  # type: ignore[no-untyped-def]
            if self.down:
                raise OperationalError("insert", {}, ConnectionRefusedError("refused"))
            await super().replace(docs)

    store = Away()
    pool = PoolManager(InMemoryPublisher(), timeout_s=10, clock=lambda: 20.0, store=store)
    await feed(pool, beat("w1"), 10.0)
    assert await pool.persist() == 0
    health = pool.store_health()
    assert not health.ok and "OperationalError" in health.reason
    store.down = False
    assert await pool.persist() == 1
    assert pool.store_health().ok and sorted(store.docs) == ["w1"]


async def test_a_lost_worker_is_projected_lost() -> None:
    store = InMemoryFleetStore()
    now = [100.0]
    pool = PoolManager(InMemoryPublisher(), timeout_s=10, clock=lambda: now[0], store=store)
    await feed(pool, beat("w1"), 100.0)
    pool.listening()
    for t in (104.0, 108.0, 112.0):  # sweeps every few seconds, as the loop does
        now[0] = t
        await pool.sweep()
    await pool.persist()
    assert store.docs["w1"]["state"] == "lost"

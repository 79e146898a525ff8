"""The scheduler's warm sets come from residency facts: heartbeats (snapshots) and the workers'
ModelLoaded / ModelEvicted, the newest fact per (worker, model) winning in any read order."""

from __future__ import annotations

import itertools

import pytest

from imagegen_scheduler.domain import ModelCatalog, ModelSpec, SchedulerConfig
from imagegen_scheduler.domain.log import Log, fold
from imagegen_schemas.workers import (
    LoadedModel,
    ModelEvicted,
    ModelLoaded,
    WorkerHeartbeat,
    WorkerStatus,
)

pytestmark = pytest.mark.unit
CATALOG = ModelCatalog(
    models={
        "a": ModelSpec("a", "sd15", 0.01, (0.1, 0.2), 0.01, 0.05),
        "b": ModelSpec("b", "sd15", 0.01, (0.1, 0.2), 0.01, 0.05),
    },
    adapters={},
)


def beat(*loaded: str) -> WorkerHeartbeat:
    return WorkerHeartbeat(
        worker_id="w1",
        status=WorkerStatus.IDLE,
        gpu_type="cpu",
        memory_total_bytes=16 * 10**9,
        memory_free_bytes=10**9,
        capabilities=("sd15",),
        loaded=tuple(LoadedModel(model_id=m, bytes=1) for m in loaded),
    )


def warm(events: list[tuple[object, float]]) -> frozenset[str]:
    log = Log(SchedulerConfig(), CATALOG)
    for payload, at in events:
        fold(log, payload, at)
    return log.state.fleet.workers["w1"].resident


def test_a_load_makes_the_worker_warm_before_its_next_heartbeat() -> None:
    loaded = ModelLoaded(worker_id="w1", model=LoadedModel(model_id="b", bytes=1), load_ms=5.0)
    assert warm([(beat("a"), 10.0), (loaded, 11.0)]) == {"a", "b"}


def test_an_eviction_makes_it_cold_before_its_next_heartbeat() -> None:
    evicted = ModelEvicted(worker_id="w1", model_id="a", reason="command")
    assert warm([(beat("a", "b"), 10.0), (evicted, 11.0)]) == {"b"}


def test_the_newest_fact_wins_in_any_read_order() -> None:
    facts = [
        (beat("a"), 10.0),
        (ModelLoaded(worker_id="w1", model=LoadedModel(model_id="b", bytes=1), load_ms=5.0), 11.0),
        (ModelEvicted(worker_id="w1", model_id="a", reason="make_room"), 12.0),
    ]
    for order in itertools.permutations(facts):
        assert warm(list(order)) == {"b"}, order
    # a later heartbeat is the newest fact about every model it lists, and every one it omits
    assert warm([*facts, (beat("a"), 13.0)]) == {"a"}


def test_a_lora_a_heartbeat_lists_is_warm_under_the_id_jobs_use() -> None:
    hb = beat("a").model_copy(
        update={
            "loaded": (
                LoadedModel(model_id="a", bytes=1),
                LoadedModel(model_id="ink", kind="lora", bytes=1),
            )
        }
    )
    assert warm([(hb, 10.0)]) == {"a", "lora/ink"}


def test_a_controlnet_evicted_leaves_under_the_id_it_was_loaded_as() -> None:
    """A net's ModelLoaded lists it as ``cn/<id>``; its ModelEvicted (kind controlnet) must
    remove that same id, not a bare ``<id>`` nobody holds (the net stayed warm until the next
    heartbeat before)."""
    net = LoadedModel(model_id="sd15-canny", kind="controlnet", bytes=1)
    loaded = ModelLoaded(worker_id="w1", model=net, load_ms=5.0)
    evicted = ModelEvicted(
        worker_id="w1", model_id="sd15-canny", kind="controlnet", reason="make_room"
    )
    assert warm([(beat("a"), 10.0), (loaded, 11.0)]) == {"a", "cn/sd15-canny"}
    assert warm([(beat("a"), 10.0), (loaded, 11.0), (evicted, 12.0)]) == {"a"}

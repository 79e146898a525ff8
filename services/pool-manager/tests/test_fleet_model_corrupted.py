"""A ``ModelCorrupted`` from a worker takes the model out of that worker's residency in the fleet
projection (ADR 0707), newest fact wins like any residency fact."""

from __future__ import annotations

import pytest

from imagegen_pool_manager.domain.fleet import Fleet, evolve, project
from imagegen_schemas.workers import (
    LoadedModel,
    ModelCorrupted,
    ModelLoaded,
    WorkerHeartbeat,
    WorkerStatus,
)

pytestmark = pytest.mark.unit
MB = 1 << 20


def beat(*loaded: str) -> WorkerHeartbeat:
    return WorkerHeartbeat(
        worker_id="w1",
        status=WorkerStatus.IDLE,
        gpu_type="cpu",
        memory_total_bytes=512 * MB,
        memory_free_bytes=500 * MB,
        loaded=tuple(LoadedModel(model_id=m, bytes=MB) for m in loaded),
    )


def corrupted(model_id: str) -> ModelCorrupted:
    return ModelCorrupted(
        worker_id="w1",
        model_id=model_id,
        file="unet/diffusion_pytorch_model.safetensors",
        expected_sha256="a" * 64,
        actual_sha256="b" * 64,
    )


def models(events: list[tuple[object, float]]) -> list[str]:
    fleet = Fleet()
    for i, (payload, at) in enumerate(events):
        evolve(fleet, payload, at, f"e{i}")
    return [m["model_id"] for m in project(fleet)["w1"]["models"]]


def test_a_corrupted_model_is_no_longer_resident_on_that_worker() -> None:
    assert models([(beat("a", "b"), 10.0), (corrupted("a"), 11.0)]) == ["b"]


def test_a_load_after_the_repair_makes_it_resident_again_in_any_fold_order() -> None:
    reloaded = ModelLoaded(worker_id="w1", model=LoadedModel(model_id="a", bytes=MB), load_ms=5.0)
    events = [(beat("a", "b"), 10.0), (corrupted("a"), 11.0), (reloaded, 12.0)]
    assert models(events) == ["a", "b"]
    assert models([events[0], events[2], events[1]]) == ["a", "b"]  # newest fact wins

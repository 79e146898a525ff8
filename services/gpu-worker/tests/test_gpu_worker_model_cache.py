"""The worker's pipeline cache under a memory budget, with the real (tiny) demo model on CPU.

Copies of the committed shapes demo are registered under several ids; each load takes ~1-2 s
(importing diffusers ~10 s, once). Budgets are set from the demo's weight files: on CPU its
float16 weights are loaded as float32, so one loaded copy takes about twice their size.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from imagegen_gpu_worker.adapters.blobs import LocalBlobStore
from imagegen_gpu_worker.adapters.diffusers_runner import DiffusersRunner, estimate_bytes
from imagegen_gpu_worker.adapters.memory import MemoryInfo
from imagegen_gpu_worker.adapters.registry import read_manifest, write_manifest
from imagegen_gpu_worker.domain.plan import RunPlan
from imagegen_gpu_worker.domain.run import ModelDoesNotFit
from imagegen_gpu_worker.service_layer.heartbeat import heartbeat, loaded_models
from imagegen_gpu_worker.service_layer.worker import Worker, WorkerState
from imagegen_runtime.publishing import InMemoryPublisher
from imagegen_schemas import Envelope
from imagegen_schemas import jobs as ev
from imagegen_schemas.common import GenerationParams, Tier

torch = pytest.importorskip("torch")

# The committed demo model (models/shapes-demo), a registered model like any other.
DEFAULT_MODEL_DIR = Path(__file__).resolve().parents[3] / "models" / "shapes-demo"

WEIGHTS = sum(p.stat().st_size for p in DEFAULT_MODEL_DIR.rglob("*.safetensors"))
ONE_MODEL = 3 * WEIGHTS  # one loaded copy (~2x WEIGHTS) fits, two do not
TWO_MODELS = 5 * WEIGHTS
LOGGER = "imagegen_gpu_worker.adapters.diffusers_runner"


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """demo-a, demo-b, demo-c: copies of the demo; demo-big: a copy with a padding weight file
    as large as the demo's weights (so more than ONE_MODEL); every sha256 entry valid."""
    root = tmp_path_factory.mktemp("models")
    for model_id in ("demo-a", "demo-b", "demo-c", "demo-big"):
        folder = root / model_id
        shutil.copytree(DEFAULT_MODEL_DIR, folder)
        manifest = json.loads((folder / "model.json").read_text())
        (folder / "model.json").write_text(json.dumps({**manifest, "id": model_id}, indent=2))
    big = root / "demo-big"
    with (big / "unet" / "padding.bin").open("wb") as f:
        f.truncate(WEIGHTS)
    entry = read_manifest(big)
    write_manifest(
        big, **{k: v for k, v in entry.__dict__.items() if k not in ("files", "components")}
    )
    torch.set_num_threads(2)
    yield root


def evictions_counted() -> float:
    return REGISTRY.get_sample_value("imagegen_gpu_worker_model_evictions_total") or 0.0


def heartbeat_loaded(runner: DiffusersRunner) -> list[str]:
    beat = heartbeat("w1", MemoryInfo(1, 1, "cpu"), 2.0, None, loaded_models(runner.resident()))
    return [m.model_id for m in beat.loaded]


def test_a_budget_of_one_model_evicts_the_other_on_load_and_on_run(
    models: Path, caplog: pytest.LogCaptureFixture
) -> None:
    runner = DiffusersRunner(models, "cpu", memory_budget_bytes=ONE_MODEL)
    before = evictions_counted()
    a_bytes = runner.load("demo-a").bytes
    # The estimate models the float32 upcast on CPU: it matches what loading measured.
    assert abs(estimate_bytes(models / "demo-a", lambda _: True) - a_bytes) < 0.02 * a_bytes
    with caplog.at_level(logging.INFO, logger=LOGGER):
        runner.load("demo-b")
    assert list(runner.loaded) == ["demo-b"]
    assert heartbeat_loaded(runner) == ["demo-b"]
    assert evictions_counted() == before + 1
    [record] = [r for r in caplog.records if r.name == LOGGER and r.msg == "model evicted"]
    assert (record.model_id, record.bytes_freed, record.for_model) == (  # type: ignore[attr-defined]
        "demo-a",
        a_bytes,
        "demo-b",
    )

    plan = RunPlan(
        job_id="j1",
        fencing_token=1,
        attempt=1,
        model_id="demo-a",
        prompt="a red circle",
        negative_prompt="",
        width=64,
        height=64,
        steps=2,
        guidance_scale=5.0,
        scheduler="ddim",
        seed=0,
        num_images=1,
        progress_every=2,
    )
    result = runner.run(plan, lambda *_: None, lambda: False)
    assert len(result.images_png) == 1 and result.timings_ms["load"] > 0
    assert list(runner.loaded) == ["demo-a"]
    assert heartbeat_loaded(runner) == ["demo-a"]
    assert evictions_counted() == before + 2


def test_the_least_recently_used_model_goes_first(models: Path) -> None:
    runner = DiffusersRunner(models, "cpu", memory_budget_bytes=TWO_MODELS)
    before = evictions_counted()
    runner.load("demo-a")
    runner.load("demo-b")
    runner.load("demo-a")  # a hit: demo-a is now the most recently used
    assert list(runner.loaded) == ["demo-b", "demo-a"]
    runner.load("demo-c")
    assert list(runner.loaded) == ["demo-a", "demo-c"]
    assert evictions_counted() == before + 1


async def test_a_model_larger_than_the_budget_fails_its_job_and_evicts_nothing(
    models: Path, tmp_path: Path
) -> None:
    runner = DiffusersRunner(models, "cpu", memory_budget_bytes=ONE_MODEL)
    runner.load("demo-a")
    before = evictions_counted()
    with pytest.raises(ModelDoesNotFit, match="'demo-big' needs about .* MiB") as info:
        runner.load("demo-big")
    assert info.value.need_bytes > ONE_MODEL == info.value.budget_bytes
    assert f"{ONE_MODEL / 2**20:.1f} MiB" in str(info.value)
    assert list(runner.loaded) == ["demo-a"] and evictions_counted() == before

    # Through the worker: a failed attempt with the reason, the consumer carries on.
    publisher = InMemoryPublisher()
    worker = Worker(WorkerState("w1"), runner, LocalBlobStore(tmp_path), publisher)
    params = GenerationParams(
        prompt="a red circle",
        model="demo-big",
        width=64,
        height=64,
        steps=2,
        guidance_scale=5.0,
        seed=0,
    )
    assignment = ev.JobScheduled(
        job_id="j2", worker_id="w1", fencing_token=1, tier=Tier.FAST, params=params
    )
    await worker.on_assignment(
        Envelope.wrap(assignment, correlation_id="j2", producer="test"), assignment
    )
    types = [r.envelope.type for r in publisher.records]
    assert types == [ev.GenerationStarted.event_type, ev.GenerationFailed.event_type]
    failed = ev.GenerationFailed.model_validate(publisher.records[-1].envelope.data)
    assert failed.reason == ev.FailureReason.OUT_OF_MEMORY and not failed.terminal
    assert "ModelDoesNotFit" in failed.message and "'demo-big'" in failed.message
    assert worker.state.running_job is None
    assert list(runner.loaded) == ["demo-a"] and evictions_counted() == before


def test_without_a_budget_on_cpu_nothing_is_evicted(models: Path) -> None:
    runner = DiffusersRunner(models, "cpu")
    assert runner.budget_bytes() is None
    before = evictions_counted()
    for model_id in ("demo-a", "demo-b", "demo-big"):
        runner.load(model_id)
    assert heartbeat_loaded(runner) == ["demo-a", "demo-b", "demo-big"]
    assert evictions_counted() == before


def test_a_preload_larger_than_the_budget_is_skipped_and_the_worker_starts_cold(
    models: Path,
) -> None:
    """A fleet's small worker told to preload a model it cannot hold (every worker of a local
    fleet gets the same PRELOAD_MODEL) starts without it instead of crashing at start."""
    runner = DiffusersRunner(models, "cpu", memory_budget_bytes=ONE_MODEL)
    runner.warm_up("demo-big")
    assert list(runner.loaded) == []
    runner.warm_up("demo-a")
    assert list(runner.loaded) == ["demo-a"]

"""Helpers of the gpu-worker tests on the tiny zoo models (a unique module name: every service
has a conftest)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from imagegen_gpu_worker.domain.plan import RunPlan
from imagegen_runtime.publishing import InMemoryPublisher
from imagegen_schemas.workers import WorkerHeartbeat

# A sampler each tiny family runs with a 3-step schedule.
SAMPLER = {"tiny-sd15": "ddim", "tiny-sdxl": "euler", "tiny-sd3": "euler", "tiny-flux": "euler"}


def tiny_plan(model_id: str, loras: tuple[tuple[str, float], ...] = (), seed: int = 7) -> RunPlan:
    """A 3-step 64 px run of ``model_id`` with ``loras`` ((LoRA id, weight), ...)."""
    return RunPlan(
        job_id="j",
        fencing_token=1,
        attempt=1,
        model_id=model_id,
        prompt="a red circle on a blue background",
        negative_prompt="blurry",
        width=64,
        height=64,
        steps=3,
        guidance_scale=4.0,
        scheduler=SAMPLER[model_id],
        seed=seed,
        num_images=1,
        progress_every=1,
        loras=tuple(loras),
    )


def first_heartbeat(
    app: Any, publisher: InMemoryPublisher, timeout_s: float = 30.0
) -> WorkerHeartbeat:
    """Run the bootstrapped worker ``app``'s heartbeat task until it has published once (to
    ``publisher``), stop it, and return that heartbeat."""
    beats = [t for t in app.tasks if getattr(t, "__name__", "") == "beats"]
    assert beats, "the heartbeat task is wired"

    async def one_beat() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(beats[0](stop))
        deadline = asyncio.get_running_loop().time() + timeout_s
        while not publisher.records:
            assert asyncio.get_running_loop().time() < deadline, "no heartbeat published"
            await asyncio.sleep(0.01)
        stop.set()
        await task

    asyncio.run(one_beat())
    return WorkerHeartbeat.model_validate(publisher.records[0].envelope.data)


def wired_heartbeat(tmp_path: Path) -> WorkerHeartbeat:
    """The first heartbeat of a worker bootstrapped as the service does (an empty models
    folder, no broker: an in-memory publisher): what its wiring reads from the runner."""
    from imagegen_gpu_worker.bootstrap import bootstrap
    from imagegen_gpu_worker.config import GpuWorkerSettings

    publisher = InMemoryPublisher()
    (tmp_path / "models").mkdir()
    settings = GpuWorkerSettings(
        kafka_bootstrap="127.0.0.1:1",
        models_dir=tmp_path / "models",
        **{name: tmp_path / name for name in ("blob_dir", "files_dir", "integrity_dir")},
    )
    app = bootstrap(settings, publisher=publisher)  # type: ignore[arg-type]
    return first_heartbeat(app, publisher)

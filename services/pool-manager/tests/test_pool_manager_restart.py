"""Against the real broker and database: the fleet projection is persisted, and a restarted
pool-manager rebuilds the same projection from the log (issue 13)."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from imagegen_pool_manager.adapters.fleet_store import PgFleetStore
from imagegen_pool_manager.bootstrap import bootstrap
from imagegen_pool_manager.config import PoolManagerSettings
from imagegen_runtime.db import make_engine
from imagegen_runtime.kafka import KafkaPublisher, ensure_topics
from imagegen_runtime.service import run_until as run_app_until
from imagegen_schemas import GenerationParams, Tier
from imagegen_schemas import jobs as ev
from imagegen_schemas.workers import LoadedModel, ModelLoaded, WorkerHeartbeat, WorkerStatus

pytestmark = pytest.mark.integration
MB = 1 << 20


async def run_until(
    settings: PoolManagerSettings, store: PgFleetStore, done: Callable[[], Awaitable[bool]]
) -> None:
    await run_app_until(bootstrap(settings, store=store), done)


async def test_a_restart_rebuilds_the_same_projection(infra: Any, topics: str) -> None:
    prefix = f"{topics}pm{uuid.uuid4().hex[:6]}."
    ensure_topics(infra.kafka_bootstrap, prefix)
    settings = PoolManagerSettings(
        kafka_bootstrap=infra.kafka_bootstrap,
        topic_prefix=prefix,
        database_url=infra.database_url,
        heartbeat_timeout_s=600,  # nobody is lost while the test runs
        instance_id=f"it{uuid.uuid4().hex[:6]}",
    )
    engine = make_engine(infra.database_url, pool_size=1)
    store = PgFleetStore(engine, prefix=f"t{uuid.uuid4().hex[:8]}_")
    client = KafkaPublisher(infra.kafka_bootstrap, "test", prefix)
    sdxl = LoadedModel(model_id="tiny-sdxl", bytes=3 * MB)
    params = GenerationParams(
        prompt="p", model="tiny-sdxl", width=64, height=64, steps=2, guidance_scale=1.0, seed=1
    )
    await store.create_tables()  # the test reads it before the service's first sweep
    try:
        for wid, loaded, running in (("w1", (sdxl,), "j1"), ("w2", (), None)):
            hb = WorkerHeartbeat(
                worker_id=wid,
                status=WorkerStatus.BUSY if running else WorkerStatus.IDLE,
                gpu_type="cpu",
                memory_total_bytes=512 * MB,
                memory_free_bytes=400 * MB,
                loaded=loaded,
                running_job_id=running,
                capabilities=("sd15", "sdxl"),
            )
            await client.publish(hb, key=wid)
        scheduled = ev.JobScheduled(
            job_id="j1", worker_id="w1", fencing_token=1, attempt=1, tier=Tier.FAST, params=params
        )
        await client.publish(scheduled, key="j1")
        loaded_later = ModelLoaded(
            worker_id="w2", model=LoadedModel(model_id="tiny-sd3", bytes=2 * MB), load_ms=90.0
        )
        await client.publish(loaded_later, key="w2")

        async def projected() -> bool:
            docs = await store.load()
            return bool(docs.get("w2", {}).get("models")) and docs["w1"]["in_flight"] == ["j1"]

        await run_until(settings, store, projected)
        first = await store.load()
        assert [m["model_id"] for m in first["w1"]["models"]] == ["tiny-sdxl"]
        assert [m["model_id"] for m in first["w2"]["models"]] == ["tiny-sd3"]
        assert (first["w1"]["state"], first["w2"]["state"]) == ("busy", "idle")

        await store.replace({"stale": {"worker_id": "stale"}})  # not what the log says

        async def rebuilt() -> bool:
            return "stale" not in await store.load()

        await run_until(settings, store, rebuilt)
        assert await store.load() == first
    finally:
        await client.close()
        await store.drop_tables()
        await engine.dispose()

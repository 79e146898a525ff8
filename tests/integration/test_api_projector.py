"""The api's job projector as its own process (ADR 0641), on the real broker and database: the
API with ``run_projector=false`` consumes nothing, ``bootstrap_projector`` projects what the API
publishes, and the two creating the job tables at once both succeed."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

from imagegen_api.adapters.jobstore import PgJobStore
from imagegen_api.bootstrap import bootstrap, bootstrap_projector
from imagegen_api.config import ApiSettings
from imagegen_runtime.db import make_engine
from imagegen_runtime.kafka import KafkaPublisher, ensure_topics
from imagegen_runtime.service import run_until
from imagegen_schemas import GenerationParams
from imagegen_schemas.jobs import GenerationRequested
from tests.support.pg import fresh_database

pytestmark = pytest.mark.integration


@pytest.fixture
async def db(infra: Any) -> AsyncIterator[str]:
    """A fresh database with no job tables (dropped afterwards); its URL."""
    async with fresh_database(infra.database_url, "t_proj") as url:
        yield url


def settings(infra: Any, db: str, prefix: str, **extra: Any) -> ApiSettings:
    return ApiSettings(
        kafka_bootstrap=infra.kafka_bootstrap,
        database_url=db,
        topic_prefix=prefix,
        http_port=8999,
        **extra,
    )


async def test_an_api_without_its_projector_consumes_nothing(infra: Any, db: str) -> None:
    with_projector = bootstrap(settings(infra, db, "unused."))
    without = bootstrap(settings(infra, db, "unused.", run_projector=False))
    assert "consumer" in with_projector.readiness.checks
    assert "consumer" not in without.readiness.checks
    assert len(without.tasks) == len(with_projector.tasks) - 1  # the consumer's loop is gone
    for app in (with_projector, without):
        for close in app.on_shutdown:
            await close()


async def test_the_projector_process_projects_what_the_api_publishes(infra: Any, db: str) -> None:
    prefix = f"proj{uuid.uuid4().hex[:6]}."
    ensure_topics(infra.kafka_bootstrap, prefix)
    engine = make_engine(db, pool_size=2)
    store = PgJobStore(engine)
    await store.create()  # the HTTP lifespan does this in the process; run_until has none
    job_id = str(uuid.uuid4())
    publisher = KafkaPublisher(infra.kafka_bootstrap, "api-test", prefix)
    await publisher.publish(
        GenerationRequested(
            job_id=job_id,
            user_id="u-proj",
            plan="free",
            tier="relax",
            params=GenerationParams(
                prompt="a red circle",
                model="m",
                width=64,
                height=64,
                steps=2,
                guidance_scale=5,
                seed=7,
            ),
        ),
        key=job_id,
    )
    await publisher.close()
    app = bootstrap_projector(settings(infra, db, prefix))

    async def projected() -> bool:
        job = await store.get(job_id)
        return job is not None and job.status == "moderating"

    try:
        await run_until(app, projected, timeout_s=60)
        job = await store.get(job_id)
        assert job is not None and job.user_id == "u-proj" and job.tier == "relax"
        assert [e["type"] for e in await store.timeline(job_id)] == [GenerationRequested.event_type]
    finally:
        await engine.dispose()


async def test_the_api_and_its_projector_create_the_tables_at_once(db: str) -> None:
    engines = [make_engine(db, pool_size=1) for _ in range(4)]
    try:
        await asyncio.gather(*(PgJobStore(e).create() for e in engines))
        assert await PgJobStore(engines[0]).get("none") is None  # the tables are there
    finally:
        for e in engines:
            await e.dispose()

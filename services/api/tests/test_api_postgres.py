"""The api on the real PostgreSQL (integration: ``make infra-up``), broker faked in memory."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from api_testkit import Api, Clock, make_app, make_deps

from imagegen_api.adapters.accounts import PgAccounts
from imagegen_api.adapters.jobstore import PgJobStore
from imagegen_runtime.db import make_engine
from imagegen_runtime.publishing import InMemoryPublisher
from imagegen_schemas import Plan

pytestmark = pytest.mark.integration
BODY = {"prompt": "a red circle", "steps": 2}


@pytest.fixture
async def pg_api(infra) -> AsyncIterator[Api]:  # type: ignore[no-untyped-def]
    engine = make_engine(infra.database_url, pool_size=10)
    accounts, jobs = PgAccounts(engine), PgJobStore(engine, prefix=f"t{uuid.uuid4().hex[:8]}_")
    await accounts.create_tables()
    await jobs.create()
    clock = Clock()
    clock.now = datetime.now(UTC)
    deps = make_deps(accounts=accounts, jobs=jobs, clock=clock)
    key = await accounts.create_key(f"u-{uuid.uuid4().hex[:8]}", Plan.PRO)
    transport = httpx.ASGITransport(app=make_app(deps), raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://api.test") as client:
        assert isinstance(deps.publisher, InMemoryPublisher)
        yield Api(client, deps, deps.publisher, key, clock)
    await jobs.drop()
    await engine.dispose()


async def test_20_concurrent_identical_requests_make_one_job_and_never_422(pg_api: Api) -> None:
    """Before (issue 10): 19 of 20 got 422 (the server's seed was hashed with the request)."""
    headers = {**pg_api.auth(), "Idempotency-Key": f"idem-{uuid.uuid4()}"}

    async def post() -> httpx.Response:
        return await pg_api.client.post("/v1/generations", json=BODY, headers=headers)

    answers = await asyncio.gather(*(post() for _ in range(20)))
    codes = sorted(r.status_code for r in answers)
    assert set(codes) <= {202, 409}, [r.text for r in answers]
    accepted = [r.json() for r in answers if r.status_code == 202]
    assert accepted and all(body == accepted[0] for body in accepted), accepted
    for r in answers:
        if r.status_code == 409:
            assert r.headers["Retry-After"] == "1" and "Idempotency-Key" in r.json()["detail"]
    retried = [(await post()) for r in answers if r.status_code == 409]
    assert all(r.status_code == 202 and r.json() == accepted[0] for r in retried)
    await pg_api.project()
    assert list(await pg_api.deps.jobs.all_states()) == [accepted[0]["id"]]
    assert len(pg_api.publisher.records) == 1


async def test_a_retry_after_the_key_expired_makes_a_new_job(pg_api: Api) -> None:
    assert pg_api.clock is not None
    headers = {**pg_api.auth(), "Idempotency-Key": f"idem-{uuid.uuid4()}"}
    first = await pg_api.client.post("/v1/generations", json=BODY, headers=headers)
    pg_api.clock.now += timedelta(hours=24)
    second = await pg_api.client.post("/v1/generations", json=BODY, headers=headers)
    assert (first.status_code, second.status_code) == (202, 202)
    assert first.json()["id"] != second.json()["id"]


async def test_a_database_at_a_closed_port_is_503_naming_it() -> None:
    """Before (issue 10): 500."""
    engine = make_engine("postgresql+asyncpg://imagegen:x@127.0.0.1:1/imagegen")
    deps = make_deps(accounts=PgAccounts(engine), jobs=PgJobStore(engine))
    transport = httpx.ASGITransport(app=make_app(deps), raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://api.test") as client:
        auth = {"Authorization": "Bearer igk_anything"}
        post = await client.post("/v1/generations", json=BODY, headers=auth)
        read = await client.get(f"/v1/generations/{uuid.uuid4()}", headers=auth)
    await engine.dispose()
    for r in (post, read):
        assert r.status_code == 503, r.text
        assert r.headers["Retry-After"] == "2"
        assert r.json()["dependency"] == "postgresql"

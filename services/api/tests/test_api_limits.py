"""Limits and quotas as a client sees them (issue 14; ADR 0640): 429 with ``Retry-After`` and a
body naming the limit, ``RateLimit-*`` on every answer, nothing published when refused."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta

import httpx
import pytest
from api_testkit import Api, Clock, make_app, make_deps

from imagegen_api.adapters.limiter import InMemoryLimiter
from imagegen_api.adapters.memory import InMemoryAccounts, InMemoryJobStore
from imagegen_api.config import ApiSettings
from imagegen_api.domain.limits import DEFAULT_LIMITS, LimitsError, with_overrides
from imagegen_runtime.publishing import InMemoryPublisher
from imagegen_runtime.settings import ConfigError, load_settings
from imagegen_schemas import Plan

pytestmark = pytest.mark.unit
BODY = {"prompt": "a red circle", "steps": 2}


@pytest.fixture
async def api() -> AsyncIterator[Api]:
    jobs = InMemoryJobStore()

    def status(job_id: str) -> str | None:
        state = jobs.states.get(job_id)
        return None if state is None else str(state["status"])

    clock = Clock()
    deps = make_deps(
        accounts=InMemoryAccounts(), jobs=jobs, limiter=InMemoryLimiter(status), clock=clock
    )
    key = await deps.accounts.create_key("flooder", Plan.FREE)
    transport = httpx.ASGITransport(app=make_app(deps), raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://api.test") as client:
        assert isinstance(deps.publisher, InMemoryPublisher)
        yield Api(client, deps, deps.publisher, key, clock)


async def test_a_flood_from_one_free_key_is_refused_with_429_naming_the_limit(api: Api) -> None:
    """The finding: 100 submissions from one free key in 10 s were all accepted."""
    free = DEFAULT_LIMITS[Plan.FREE]
    answers = [
        await api.client.post("/v1/generations", json=BODY, headers=api.auth()) for _ in range(100)
    ]
    accepted = [a for a in answers if a.status_code == 202]
    refused = [a for a in answers if a.status_code == 429]
    assert len(accepted) == free.active_jobs  # queued plus running: 4 at once
    assert len(refused) == 100 - free.active_jobs
    assert len(api.publisher.records) == free.active_jobs  # nothing published when refused
    first = refused[0].json()
    assert first["limit"] == "active_jobs" and first["limit_value"] == free.active_jobs
    assert "queued or running" in first["detail"]
    assert int(refused[0].headers["Retry-After"]) > 0
    # the request bucket ran dry too: later refusals name it
    last = refused[-1].json()
    assert last["limit"] == "requests_per_minute"
    assert int(refused[-1].headers["Retry-After"]) >= 1
    assert sum(a.json()["limit"] == "requests_per_minute" for a in refused) == 100 - free.burst


async def test_ratelimit_headers_on_every_answer(api: Api) -> None:
    free = DEFAULT_LIMITS[Plan.FREE]
    posted = await api.client.post("/v1/generations", json=BODY, headers=api.auth())
    await api.project()
    read = await api.client.get(f"/v1/generations/{posted.json()['id']}", headers=api.auth())
    missing = await api.client.get("/v1/generations/nope", headers=api.auth())
    invalid = await api.client.post("/v1/generations", json={"steps": 2}, headers=api.auth())
    models = await api.client.get("/v1/models", headers=api.auth())
    answers = [posted, read, missing, invalid, models]
    assert [a.status_code for a in answers] == [202, 200, 404, 422, 200]
    remaining = [int(a.headers["RateLimit-Remaining"]) for a in answers if a.status_code != 422]
    assert remaining == sorted(remaining, reverse=True) and remaining[0] == free.burst - 1
    for a in answers:
        if a.status_code != 422:
            assert a.headers["RateLimit-Limit"] == str(free.burst)
            assert int(a.headers["RateLimit-Reset"]) >= 1


async def test_the_bucket_refills_and_the_request_goes_through(api: Api) -> None:
    assert isinstance(api.clock, Clock)
    free = DEFAULT_LIMITS[Plan.FREE]
    for _ in range(free.burst):
        await api.client.get("/v1/models", headers=api.auth())
    refused = await api.client.get("/v1/models", headers=api.auth())
    assert refused.status_code == 429 and refused.headers["RateLimit-Remaining"] == "0"
    api.clock.now += timedelta(seconds=int(refused.headers["Retry-After"]))
    assert (await api.client.get("/v1/models", headers=api.auth())).status_code == 200


async def test_an_ended_job_frees_its_slot(api: Api) -> None:
    ids = []
    for _ in range(4):
        answer = await api.client.post("/v1/generations", json=BODY, headers=api.auth())
        ids.append(answer.json()["id"])
    assert (
        await api.client.post("/v1/generations", json=BODY, headers=api.auth())
    ).status_code == 429
    await api.project()
    cancelled = await api.client.delete(f"/v1/generations/{ids[0]}", headers=api.auth())
    assert cancelled.status_code == 202
    await api.project()  # the cancellation request alone does not end the job
    assert (
        await api.client.post("/v1/generations", json=BODY, headers=api.auth())
    ).status_code == 429


async def test_an_idempotent_replay_is_answered_even_at_the_cap(api: Api) -> None:
    headers = {**api.auth(), "Idempotency-Key": "k-1"}
    first = await api.client.post("/v1/generations", json=BODY, headers=headers)
    for _ in range(3):
        await api.client.post("/v1/generations", json=BODY, headers=api.auth())
    again = await api.client.post("/v1/generations", json=BODY, headers=headers)
    assert again.status_code == 202 and again.json()["id"] == first.json()["id"]
    # a new key at the cap is refused and does not keep the key: the same key later works
    other = {**api.auth(), "Idempotency-Key": "k-2"}
    assert (await api.client.post("/v1/generations", json=BODY, headers=other)).status_code == 429
    assert len(api.publisher.records) == 4


async def test_images_per_day_are_refused_with_retry_after_until_midnight(api: Api) -> None:
    api.deps.limits.update(
        with_overrides({"free": {"images_per_day": 3, "active_jobs": 10}})
    )  # the app shares this dict
    ok = await api.client.post(
        "/v1/generations", json={**BODY, "num_images": 2}, headers=api.auth()
    )
    assert ok.status_code == 202
    refused = await api.client.post(
        "/v1/generations", json={**BODY, "num_images": 2}, headers=api.auth()
    )
    assert refused.status_code == 429
    assert refused.json()["limit"] == "images_per_day"
    assert refused.headers["Retry-After"] == str(24 * 3600)  # the test clock is at 00:00 UTC


async def test_the_openai_endpoint_answers_429_in_openai_shape(api: Api) -> None:
    api.deps.limits.update(with_overrides({"free": {"active_jobs": 1}}))  # the app shares this dict
    await api.client.post("/v1/generations", json=BODY, headers=api.auth())
    answer = await api.client.post(
        "/v1/images/generations", json={"prompt": "a red circle"}, headers=api.auth()
    )
    assert answer.status_code == 429
    assert answer.json()["error"]["code"] == "rate_limit_exceeded"
    assert "Retry-After" in answer.headers


def test_limit_overrides_name_the_plan_and_limit() -> None:
    with pytest.raises(LimitsError, match="unknown plan 'gold'"):
        with_overrides({"gold": {"burst": 1}})
    with pytest.raises(LimitsError, match="free.bursts: unknown limit"):
        with_overrides({"free": {"bursts": 1}})
    with pytest.raises(LimitsError, match="free.burst: must be a positive number"):
        with_overrides({"free": {"burst": 0}})
    assert with_overrides({"pro": {"burst": 7}})[Plan.PRO].burst == 7


def test_a_bad_limits_setting_stops_the_service_naming_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("IMAGEGEN_API_KAFKA_BOOTSTRAP", "127.0.0.1:9092")
    monkeypatch.setenv("IMAGEGEN_API_DATABASE_URL", "postgresql+asyncpg://u:p@h/db")
    monkeypatch.setenv("IMAGEGEN_API_LIMITS", '{"free": {"burst": -1}}')
    with pytest.raises(ConfigError):
        load_settings(ApiSettings)

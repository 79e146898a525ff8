"""Idempotency-Key (ADR 0600): identical retries get the same job, whatever the server chose.

Before (issue 10) a retry without ``seed`` got 422: the server-chosen seed was hashed with the
request, so no retry was ever identical.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta

import httpx
import pytest
from api_testkit import Api, Clock, make_app, make_deps

from imagegen_runtime.publishing import InMemoryPublisher
from imagegen_schemas import Payload, Plan
from imagegen_schemas.envelope import Envelope

pytestmark = pytest.mark.unit
BODY = {"prompt": "a red circle", "steps": 2}


def requested_ids(api: Api) -> list[str]:
    return [
        r.envelope.correlation_id
        for r in api.publisher.records
        if r.envelope.type == "imagegen.generation.requested"
    ]


async def post(api: Api, key: str, body: dict[str, object] | None = None) -> httpx.Response:
    return await api.client.post(
        "/v1/generations", json=body or BODY, headers={**api.auth(), "Idempotency-Key": key}
    )


async def test_an_identical_retry_without_seed_gets_the_same_job_and_body(api: Api) -> None:
    first = await post(api, "k1")
    again = await post(api, "k1")
    assert (first.status_code, again.status_code) == (202, 202), again.text
    assert again.json() == first.json()
    assert again.headers["Idempotent-Replayed"] == "true"
    assert "Idempotent-Replayed" not in first.headers
    assert requested_ids(api) == [first.json()["id"]]


async def test_a_retry_that_spells_the_defaults_out_is_the_same_request(api: Api) -> None:
    first = await post(api, "k1")
    again = await post(api, "k1", {**BODY, "model": "shapes-demo", "scheduler": "ddim"})
    assert again.status_code == 202, again.text
    assert again.json()["id"] == first.json()["id"]


async def test_a_different_body_with_the_same_key_is_422_naming_the_key(api: Api) -> None:
    await post(api, "k1")
    other = await post(api, "k1", {**BODY, "prompt": "a blue square"})
    assert other.status_code == 422
    [problem] = other.json()["detail"]
    assert problem["loc"] == ["header", "Idempotency-Key"]
    assert "k1" in problem["msg"] and "different request" in problem["msg"]
    assert len(requested_ids(api)) == 1


async def test_the_same_key_of_another_user_is_another_job(api: Api) -> None:
    bob = await api.deps.accounts.create_key("bob", Plan.PRO)
    mine = await post(api, "k1")
    his = await api.client.post(
        "/v1/generations", json=BODY, headers={**api.auth(bob), "Idempotency-Key": "k1"}
    )
    assert his.status_code == 202 and his.json()["id"] != mine.json()["id"]


class GatedPublisher(InMemoryPublisher):
    """Holds every publish until ``gate`` is set: a request stays in flight."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = asyncio.Event()
        self.waiting = asyncio.Event()

    async def publish(
        self,
        payload: Payload,
        *,
        key: str,
        causation_id: str | None = None,
        event_id: str | None = None,
    ) -> Envelope:
        self.waiting.set()
        await self.gate.wait()
        return await super().publish(payload, key=key, causation_id=causation_id, event_id=event_id)


async def test_a_retry_while_the_first_is_in_flight_is_409_then_the_same_job() -> None:
    publisher = GatedPublisher()
    deps = make_deps(publisher=publisher)
    key = await deps.accounts.create_key("alice", Plan.PRO)
    transport = httpx.ASGITransport(app=make_app(deps), raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://api.test") as client:
        headers = {"Authorization": f"Bearer {key}", "Idempotency-Key": "k1"}
        first = asyncio.create_task(client.post("/v1/generations", json=BODY, headers=headers))
        await publisher.waiting.wait()
        during = await client.post("/v1/generations", json=BODY, headers=headers)
        assert during.status_code == 409, during.text
        assert during.headers["Retry-After"] == "1"
        assert "Idempotency-Key" in during.json()["detail"]
        publisher.gate.set()
        done = await first
        after = await client.post("/v1/generations", json=BODY, headers=headers)
    assert done.status_code == 202 and after.status_code == 202
    assert after.json() == done.json()


class FailingOncePublisher(InMemoryPublisher):
    def __init__(self) -> None:
        super().__init__()
        self.failures = 1

    async def publish(
        self,
        payload: Payload,
        *,
        key: str,
        causation_id: str | None = None,
        event_id: str | None = None,
    ) -> Envelope:
        if self.failures:
            self.failures -= 1
            from confluent_kafka import KafkaError, KafkaException

            raise KafkaException(KafkaError(KafkaError._MSG_TIMED_OUT))
        return await super().publish(payload, key=key, causation_id=causation_id, event_id=event_id)


async def test_after_a_failed_publish_the_retry_makes_the_job() -> None:
    deps = make_deps(publisher=FailingOncePublisher())
    key = await deps.accounts.create_key("alice", Plan.PRO)
    transport = httpx.ASGITransport(app=make_app(deps), raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://api.test") as client:
        headers = {"Authorization": f"Bearer {key}", "Idempotency-Key": "k1"}
        failed = await client.post("/v1/generations", json=BODY, headers=headers)
        retried = await client.post("/v1/generations", json=BODY, headers=headers)
    assert failed.status_code == 503
    assert retried.status_code == 202, retried.text


async def test_a_key_expires_after_24_hours() -> None:
    clock = Clock()
    deps = make_deps(clock=clock)
    key = await deps.accounts.create_key("alice", Plan.PRO)
    transport = httpx.ASGITransport(app=make_app(deps), raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://api.test") as client:
        headers = {"Authorization": f"Bearer {key}", "Idempotency-Key": "k1"}
        first = await client.post("/v1/generations", json=BODY, headers=headers)
        clock.now += timedelta(hours=23, minutes=59)
        same = await client.post("/v1/generations", json=BODY, headers=headers)
        clock.now += timedelta(minutes=2)
        new = await client.post("/v1/generations", json=BODY, headers=headers)
        different = await client.post("/v1/generations", json={**BODY, "steps": 3}, headers=headers)
    assert same.json()["id"] == first.json()["id"]
    assert new.status_code == 202 and new.json()["id"] != first.json()["id"]
    assert different.status_code == 422  # the key now belongs to the new job's body

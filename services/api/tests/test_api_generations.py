"""The routes of /v1/generations on the in-memory fakes (fast): what a client sees."""

from __future__ import annotations

import pytest
from api_testkit import Api

from imagegen_schemas import parse
from imagegen_schemas.jobs import GenerationRequested

pytestmark = pytest.mark.unit
BODY = {"prompt": "a red circle", "steps": 2}


async def test_submit_publishes_the_request_and_answers_202_with_links(api: Api) -> None:
    r = await api.client.post("/v1/generations", json=BODY, headers=api.auth())
    assert r.status_code == 202, r.text
    job_id = r.json()["id"]
    assert r.json()["links"]["self"] == f"http://api.test/v1/generations/{job_id}"
    [record] = api.publisher.records
    event = parse(record.envelope)
    assert isinstance(event, GenerationRequested)
    assert (event.job_id, event.user_id, event.params.prompt) == (job_id, "alice", "a red circle")
    assert event.params.seed == r.json()["seed"]


async def test_read_shows_the_projected_job(api: Api) -> None:
    r = await api.client.post("/v1/generations", json=BODY, headers=api.auth())
    await api.project()
    got = await api.client.get(f"/v1/generations/{r.json()['id']}", headers=api.auth())
    assert got.status_code == 200
    assert got.json()["status"] == "moderating"
    assert [e["type"] for e in got.json()["timeline"]] == ["imagegen.generation.requested"]


async def test_another_users_job_is_404(api: Api) -> None:
    r = await api.client.post("/v1/generations", json=BODY, headers=api.auth())
    await api.project()
    from imagegen_schemas import Plan

    bob = await api.deps.accounts.create_key("bob", Plan.FREE)
    got = await api.client.get(f"/v1/generations/{r.json()['id']}", headers=api.auth(bob))
    assert got.status_code == 404


async def test_without_a_key_is_401(api: Api) -> None:
    r = await api.client.post("/v1/generations", json=BODY)
    assert r.status_code == 401
    assert r.headers["WWW-Authenticate"] == "Bearer"


async def test_cancel_publishes_cancellation_requested(api: Api) -> None:
    r = await api.client.post("/v1/generations", json=BODY, headers=api.auth())
    await api.project()
    c = await api.client.delete(f"/v1/generations/{r.json()['id']}", headers=api.auth())
    assert c.status_code == 202 and c.json()["status"] == "cancelling"
    assert api.publisher.records[-1].envelope.type == "imagegen.generation.cancellation_requested"

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


async def test_a_waiting_job_shows_the_schedulers_wait_estimate_counted_down(api: Api) -> None:
    """eta_s is the scheduler's WaitEstimated (newest by occurred_at), less the time since it
    was made; an older estimate folded later does not replace it."""
    from datetime import timedelta

    from imagegen_schemas import Envelope
    from imagegen_schemas.jobs import PromptModerated, Verdict, WaitEstimated

    r = await api.client.post("/v1/generations", json=BODY, headers=api.auth())
    job_id = r.json()["id"]
    await api.project()
    now = api.deps.clock()
    store = api.deps.jobs

    async def fold(payload: object, at: object) -> None:
        env = Envelope.wrap(payload, correlation_id=job_id, producer="t", occurred_at=at)  # type: ignore[arg-type]
        await store.apply(env, payload, "t", 0, 0)  # type: ignore[arg-type]

    await fold(PromptModerated(job_id=job_id, verdict=Verdict.ALLOWED), now)
    await fold(
        WaitEstimated(job_id=job_id, eta_s=100.0, queue_position=4), now - timedelta(seconds=30)
    )
    await fold(
        WaitEstimated(job_id=job_id, eta_s=999.0, queue_position=9), now - timedelta(seconds=60)
    )
    got = (await api.client.get(f"/v1/generations/{job_id}", headers=api.auth())).json()
    assert got["status"] == "queued"
    assert 69.0 <= got["eta_s"] <= 70.0, got["eta_s"]

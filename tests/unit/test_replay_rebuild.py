"""`imagegen replay --rebuild` survives any stored record: it reports what it cannot replay.

Before (issue 10) a record whose strings held NUL crashed the rebuild (PostgreSQL refused it), and
one that was not a known event crashed it in ``parse``.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest

from imagegen.replay import Raw, rebuild
from imagegen_api.adapters.jobstore import PgJobStore
from imagegen_api.adapters.memory import InMemoryJobStore
from imagegen_api.service_layer.ports import JobStore
from imagegen_runtime.db import make_engine
from imagegen_schemas import Envelope, GenerationParams, Plan, Tier
from imagegen_schemas import jobs as ev

T0 = datetime(2026, 1, 1, tzinfo=UTC)
TOPIC = "imagegen.jobs.requested"


BACKENDS = [
    pytest.param("memory", marks=pytest.mark.unit),
    pytest.param("postgres", marks=pytest.mark.integration),
]


@pytest.fixture(params=BACKENDS)
async def store(request: pytest.FixtureRequest) -> AsyncIterator[JobStore]:
    if request.param == "memory":
        yield InMemoryJobStore()
        return
    engine = make_engine(request.getfixturevalue("infra").database_url)
    pg = PgJobStore(engine, prefix=f"rebuild_t{uuid.uuid4().hex[:8]}_")
    await pg.create()
    yield pg
    await pg.drop()
    await engine.dispose()


def requested(job_id: str, prompt: str = "a red circle") -> bytes:
    params = GenerationParams(
        prompt="x", model="m", width=64, height=64, steps=2, guidance_scale=5, seed=1
    )
    payload = ev.GenerationRequested(
        job_id=job_id, user_id="u", plan=Plan.PRO, tier=Tier.FAST, params=params
    )
    env = Envelope.wrap(payload, correlation_id=job_id, producer="test", occurred_at=T0)
    doc = json.loads(env.to_json())
    doc["data"]["params"]["prompt"] = prompt  # as an older API let through
    return json.dumps(doc).encode()


async def test_records_that_are_not_events_are_reported_and_the_rest_replayed(
    store: JobStore,
) -> None:
    unknown = json.loads(requested("j-9"))
    unknown["type"] = "imagegen.no.such_event"
    broken = json.loads(requested("j-8"))
    del broken["data"]["params"]
    records = [
        Raw(TOPIC, 0, 0, requested("j-1")),
        Raw(TOPIC, 0, 1, b"not json at all"),
        Raw(TOPIC, 0, 2, b"\xff\xfe"),
        Raw(TOPIC, 0, 3, None),
        Raw(TOPIC, 0, 4, json.dumps(unknown).encode()),
        Raw(TOPIC, 0, 5, json.dumps(broken).encode()),
        Raw(TOPIC, 0, 6, requested("j-2")),
    ]
    done = await rebuild(records, store)
    assert (done.records, done.applied) == (7, 2)
    assert [line.split(":")[0] for line in done.unreplayable] == [
        f"{TOPIC}/0@{i}" for i in (1, 2, 3, 4, 5)
    ]
    assert all("not an event" in line for line in done.unreplayable)
    assert set(await store.all_states()) == {"j-1", "j-2"}


async def test_a_prompt_with_nul_is_replayed_readably(store: JobStore) -> None:
    done = await rebuild([Raw(TOPIC, 0, 0, requested("j-1", "a\x00b"))], store)
    assert (done.applied, done.unreplayable) == (1, [])
    job = await store.get("j-1")
    assert job is not None and job.params["prompt"] == "a\ufffdb"
    [row] = await store.timeline("j-1")
    assert row["data"]["params"]["prompt"] == "a\ufffdb"


async def test_a_lone_surrogate_is_reported_as_the_live_projector_sees_it(store: JobStore) -> None:
    """The envelope parser refuses a lone surrogate escape, so the live projector dead-letters
    such a record: the rebuild leaves it out too, and says so."""
    done = await rebuild([Raw(TOPIC, 0, 0, requested("j-1", "a\ud800b"))], store)
    assert done.applied == 0
    [line] = done.unreplayable
    assert line.startswith(f"{TOPIC}/0@0: not an event")


@pytest.mark.unit
async def test_a_store_that_refuses_a_record_is_reported_not_fatal() -> None:
    class Refusing(InMemoryJobStore):
        async def apply(self, env, payload, topic, partition, offset):  # type: ignore[no-untyped-def]
            if env.correlation_id == "j-1":
                raise ValueError("value too long for type character varying(64)")
            return await super().apply(env, payload, topic, partition, offset)

    store = Refusing()
    done = await rebuild(
        [Raw(TOPIC, 0, 0, requested("j-1")), Raw(TOPIC, 0, 1, requested("j-2"))], store
    )
    assert done.applied == 1
    [line] = done.unreplayable
    assert line.startswith(f"{TOPIC}/0@0: imagegen.generation.requested") and "too long" in line


@pytest.mark.unit
async def test_a_store_that_cannot_be_reached_stops_the_rebuild() -> None:
    class Down(InMemoryJobStore):
        async def apply(self, env, payload, topic, partition, offset):  # type: ignore[no-untyped-def]
            raise ConnectionRefusedError(111, "refused")

    with pytest.raises(ConnectionRefusedError):
        await rebuild([Raw(TOPIC, 0, 0, requested("j-1"))], Down())

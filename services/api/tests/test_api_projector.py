"""The projector lets a database error out as it is: the consumer loop retries it (transient)."""

from __future__ import annotations

import pytest
from sqlalchemy.exc import OperationalError

from imagegen_api.adapters.memory import InMemoryJobStore
from imagegen_api.projections.jobs import projector
from imagegen_runtime.kafka import RecordMeta
from imagegen_schemas import Envelope, Payload, Plan, Tier
from imagegen_schemas import jobs as ev
from imagegen_schemas.common import GenerationParams

pytestmark = pytest.mark.unit


class DownStore(InMemoryJobStore):
    async def apply(
        self, env: Envelope, payload: Payload, topic: str, partition: int, offset: int
    ) -> bool:
        raise OperationalError("insert", {}, ConnectionRefusedError(111, "refused"))


def event() -> tuple[Envelope, ev.GenerationRequested]:
    params = GenerationParams(
        prompt="a", model="m", width=64, height=64, steps=2, guidance_scale=5, seed=1
    )
    p = ev.GenerationRequested(
        job_id="j", user_id="u", plan=Plan.PRO, tier=Tier.FAST, params=params
    )
    return Envelope.wrap(p, correlation_id="j", producer="t"), p


async def test_a_database_error_while_projecting_is_raised_as_such() -> None:
    env, p = event()
    with pytest.raises(OperationalError):
        await projector(DownStore())(env, p, RecordMeta("t", 0, 0, "j", {}))


async def test_a_projected_event_reaches_the_store() -> None:
    store = InMemoryJobStore()
    env, p = event()
    await projector(store)(env, p, RecordMeta("t", 0, 0, "j", {}))
    job = await store.get("j")
    assert job is not None and job.status == "moderating"

"""submit (service layer) on the fakes: given the key's state, when a request comes, then events."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from confluent_kafka import KafkaError, KafkaException

from imagegen_api.adapters.memory import InMemoryAccounts
from imagegen_api.domain.idempotency import CLAIM_LEASE, HeldKey
from imagegen_api.domain.plans import Caller
from imagegen_api.service_layer.submit import (
    IdempotencyConflict,
    IdempotentRequest,
    InFlight,
    submit,
)
from imagegen_runtime.publishing import InMemoryPublisher
from imagegen_schemas import Envelope, GenerationParams, Payload, Plan, parse
from imagegen_schemas.jobs import GenerationRequested

pytestmark = pytest.mark.unit
ALICE = Caller("alice", Plan.PRO)
T0 = datetime(2026, 1, 1, tzinfo=UTC)
PARAMS = GenerationParams(
    prompt="a red circle", model="m", width=64, height=64, steps=2, guidance_scale=5, seed=11
)


def requested(publisher: InMemoryPublisher) -> list[GenerationRequested]:
    return [p for r in publisher.records if isinstance(p := parse(r.envelope), GenerationRequested)]


async def test_without_a_key_each_request_is_a_new_job() -> None:
    accounts, publisher = InMemoryAccounts(), InMemoryPublisher()
    a = await submit(ALICE, PARAMS, None, accounts, publisher)
    b = await submit(ALICE, PARAMS, None, accounts, publisher)
    assert a.job_id != b.job_id and not a.replayed
    assert [e.job_id for e in requested(publisher)] == [a.job_id, b.job_id]
    assert requested(publisher)[0].tier.value == "fast"  # the pro plan's queue


async def test_the_first_request_publishes_and_identical_ones_replay_its_answer() -> None:
    accounts, publisher = InMemoryAccounts(), InMemoryPublisher()
    first = await submit(ALICE, PARAMS, None, accounts, publisher, IdempotentRequest("k", "h", T0))
    other_seed = PARAMS.model_copy(update={"seed": 99})  # the server drew another seed
    again = await submit(
        ALICE, other_seed, None, accounts, publisher, IdempotentRequest("k", "h", T0)
    )
    assert (again.job_id, again.seed, again.replayed) == (first.job_id, 11, True)
    assert len(requested(publisher)) == 1 and requested(publisher)[0].idempotency_key == "k"
    with pytest.raises(IdempotencyConflict):
        await submit(ALICE, PARAMS, None, accounts, publisher, IdempotentRequest("k", "h2", T0))


async def test_a_dead_holders_claim_is_finished_with_its_job_and_seed() -> None:
    accounts, publisher = InMemoryAccounts(), InMemoryPublisher()
    dead = HeldKey("h", {"id": "job-dead", "seed": 5}, False, T0, T0)
    await accounts.claim("alice", "k", dead)
    with pytest.raises(InFlight):
        await submit(ALICE, PARAMS, None, accounts, publisher, IdempotentRequest("k", "h", T0))
    later = T0 + CLAIM_LEASE
    done = await submit(
        ALICE, PARAMS, None, accounts, publisher, IdempotentRequest("k", "h", later)
    )
    assert (done.job_id, done.seed, done.replayed) == ("job-dead", 5, False)
    [event] = requested(publisher)
    assert (event.job_id, event.params.seed) == ("job-dead", 5)


class DownPublisher(InMemoryPublisher):
    async def publish(
        self,
        payload: Payload,
        *,
        key: str,
        causation_id: str | None = None,
        event_id: str | None = None,
    ) -> Envelope:
        raise KafkaException(KafkaError(KafkaError._ALL_BROKERS_DOWN))


async def test_a_failed_publish_frees_the_key_and_raises_the_broker_error() -> None:
    accounts = InMemoryAccounts()
    with pytest.raises(KafkaException):
        await submit(
            ALICE, PARAMS, None, accounts, DownPublisher(), IdempotentRequest("k", "h", T0)
        )
    publisher = InMemoryPublisher()
    retry = IdempotentRequest("k", "h", T0 + timedelta(seconds=1))
    done = await submit(ALICE, PARAMS, None, accounts, publisher, retry)
    assert not done.replayed and [e.job_id for e in requested(publisher)] == [done.job_id]

"""The same contract for the in-memory fake and the real Kafka publisher."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest

from imagegen_runtime.kafka import KafkaPublisher
from imagegen_runtime.publishing import InMemoryPublisher, Publisher
from imagegen_schemas import parse
from imagegen_schemas.jobs import CancellationRequested, GenerationCancelled

from ..integration.test_kafka import read_all


@pytest.fixture(params=["memory", pytest.param("kafka", marks=pytest.mark.integration)])
async def publisher(request, infra_or_none) -> AsyncIterator[tuple[Publisher, object]]:
    if request.param == "memory":
        pub: Publisher = InMemoryPublisher("contract", "p.")
        yield pub, lambda topic, n: pub.on("p." + topic)  # type: ignore[attr-defined]
        return
    infra, prefix = infra_or_none
    pub = KafkaPublisher(infra.kafka_bootstrap, "contract", prefix)
    yield pub, lambda topic, n: read_all(infra.kafka_bootstrap, prefix + topic, n, timeout=30)
    await pub.close()


@pytest.fixture
def infra_or_none(request):
    if "kafka" not in request.node.callspec.id:
        return None
    return request.getfixturevalue("infra"), request.getfixturevalue("topics")


async def test_publish_wraps_routes_and_keeps_order(publisher) -> None:
    pub, read = publisher
    job = str(uuid.uuid4())
    a = await pub.publish(CancellationRequested(job_id=job, requested_by="u"), key=job)
    b = await pub.publish(
        GenerationCancelled(job_id=job, at_step=3), key=job, causation_id=a.event_id
    )
    assert a.type == "imagegen.generation.cancellation_requested"
    assert a.correlation_id == job and b.causation_id == a.event_id
    assert a.producer == "contract"
    got = [e for e in read("imagegen.jobs.requested", 1000) if e.correlation_id == job]
    assert [e.event_id for e in got] == [a.event_id]
    assert parse(got[0]) == CancellationRequested(job_id=job, requested_by="u")
    ended = [e for e in read("imagegen.jobs.ended", 1000) if e.correlation_id == job]
    assert [e.event_id for e in ended] == [b.event_id]


async def test_publish_after_close_fails(publisher) -> None:
    pub, _ = publisher
    await pub.close()
    with pytest.raises(RuntimeError):
        await pub.publish(CancellationRequested(job_id="j", requested_by="u"), key="j")

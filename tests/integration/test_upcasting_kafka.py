"""On the real broker: a service's FastStream consumer hands its handler the upcast payload of a
record written at v1 (the registry bumped to v2 for this test)."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest

from imagegen_runtime.faststream_consumer import FastStreamConsumer
from imagegen_runtime.kafka import KafkaPublisher, RecordMeta
from imagegen_schemas import Envelope, Payload
from imagegen_schemas.jobs import DeliveredImage, ImageDelivered
from tests.unit.test_upcasting_decode import ImageDeliveredV2, services_registry_at_v2

pytestmark = pytest.mark.integration

__all__ = ["services_registry_at_v2"]  # the fixture, used by name below


async def test_a_v1_record_reaches_the_handler_as_v2(
    infra: Any, topics: str, services_registry_at_v2: None
) -> None:
    pub = KafkaPublisher(infra.kafka_bootstrap, "upcast-test", topics)
    job = str(uuid.uuid4())
    image = DeliveredImage(
        index=0, url="http://x/0.png", sha256="a" * 64, expires_at="2026-12-01T00:00:00Z"
    )
    # Written by v1 code: the v1 model, schema_version 1 in the envelope.
    sent = await pub.publish(
        ImageDelivered(job_id=job, images=(image,), webhook_status=202), key=job
    )
    assert sent.schema_version == 1 and sent.data["webhook_status"] == 202
    seen: list[Payload] = []
    done = asyncio.Event()

    async def handle(env: Envelope, payload: Payload, meta: RecordMeta) -> None:
        if env.correlation_id == job:  # other tests of the session share the topic
            seen.append(payload)
            done.set()

    consumer = FastStreamConsumer(
        infra.kafka_bootstrap,
        f"{topics}upcast-{job[:6]}",
        [topics + "imagegen.jobs.delivered"],
        handle,
        pub,
    )
    stop = asyncio.Event()
    task = asyncio.create_task(consumer.run(stop))
    try:
        await asyncio.wait_for(done.wait(), 60)
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)
        await pub.close()
    assert len(seen) == 1
    payload = seen[0]
    assert isinstance(payload, ImageDeliveredV2)
    assert payload.webhook_http_status == 202 and payload.image_count == 1
    assert consumer.dead_lettered == 0

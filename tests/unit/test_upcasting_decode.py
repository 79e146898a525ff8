"""The services' read paths apply the registry's upcasters: the runtime's ``decode`` (the
FastStream consumer and the replaying deciders) and the FastStream subscriber's handler."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any, ClassVar

import pytest
from confluent_kafka import Message
from pydantic import Field

from imagegen_runtime.faststream_consumer import FastStreamConsumer
from imagegen_runtime.kafka import RecordMeta, decode
from imagegen_runtime.publishing import InMemoryPublisher
from imagegen_schemas import Envelope, Payload, ce_headers
from imagegen_schemas.jobs import DeliveredImage
from imagegen_schemas.registry import REGISTRY, register_upcaster

ROOT = Path(__file__).resolve().parents[2]
GOLDEN = ROOT / "schemas" / "examples" / "imagegen.image.delivered.v1.json"
TYPE = "imagegen.image.delivered"

pytestmark = pytest.mark.unit


class ImageDeliveredV2(Payload):
    event_type: ClassVar[str] = TYPE
    schema_version: ClassVar[int] = 2
    job_id: str
    images: tuple[DeliveredImage, ...]
    webhook_http_status: int | None = None
    image_count: int = Field(ge=0)


@pytest.fixture
def services_registry_at_v2() -> Iterator[None]:
    """The services' own registry with ImageDelivered bumped to v2 and its upcaster, restored
    afterwards (what a real v2 does in schemas/src, for this test only)."""
    before = REGISTRY.models[TYPE]
    REGISTRY.models[TYPE] = ImageDeliveredV2

    @register_upcaster(TYPE, 1)
    def _v1_to_v2(data: dict[str, Any]) -> dict[str, Any]:
        data["webhook_http_status"] = data.pop("webhook_status", None)
        data["image_count"] = len(data["images"])
        return data

    try:
        yield
    finally:
        REGISTRY.models[TYPE] = before
        REGISTRY.upcasters.pop((TYPE, 1), None)


def v1_record() -> Message:
    env = Envelope.from_json(GOLDEN.read_text())
    return Message(
        topic="imagegen.jobs.delivered",
        partition=0,
        offset=7,
        key=env.correlation_id.encode(),
        value=env.to_json(),
        headers=ce_headers(env),
    )


def test_runtime_decode_upcasts_a_v1_record(services_registry_at_v2: None) -> None:
    envelope, payload = decode(v1_record())
    assert envelope.schema_version == 1
    assert isinstance(payload, ImageDeliveredV2)
    assert payload.webhook_http_status == 200 and payload.image_count == 1


def test_the_faststream_subscriber_hands_the_handler_the_upcast_payload(
    services_registry_at_v2: None,
) -> None:
    seen: list[Payload] = []

    async def handler(envelope: Envelope, payload: Payload, meta: RecordMeta) -> None:
        seen.append(payload)

    consumer = FastStreamConsumer(
        "127.0.0.1:1", "g", ["imagegen.jobs.delivered"], handler, InMemoryPublisher()
    )
    asyncio.run(consumer.on_record(SimpleNamespace(raw_message=v1_record())))  # type: ignore[arg-type]
    assert len(seen) == 1 and isinstance(seen[0], ImageDeliveredV2)
    assert seen[0].webhook_http_status == 200


def test_without_the_v2_the_same_record_reads_as_v1() -> None:
    """Control: the fixture is what changes the outcome above."""
    _, payload = decode(v1_record())
    assert type(payload).__name__ == "ImageDelivered" and payload.schema_version == 1

"""Upcasters: records written at v1 are read at v2, and readers older than a record behave as
docs/consumers.md says (additive fields ignored, a breaking version refused by name)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import pytest
from pydantic import Field

from imagegen_schemas import Envelope, Payload, parse
from imagegen_schemas.jobs import DeliveredImage, ImageDelivered
from imagegen_schemas.registry import REGISTRY, Registry, UnknownEventType

GOLDEN = Path(__file__).resolve().parents[1] / "examples" / "imagegen.image.delivered.v1.json"

pytestmark = pytest.mark.unit


class ImageDeliveredV2(Payload):
    """A breaking v2, defined here only: ``webhook_status`` renamed, ``image_count`` required."""

    event_type: ClassVar[str] = "imagegen.image.delivered"
    schema_version: ClassVar[int] = 2
    job_id: str
    images: tuple[DeliveredImage, ...]
    webhook_http_status: int | None = None
    image_count: int = Field(ge=0)


def delivered_v1_to_v2(data: dict[str, Any]) -> dict[str, Any]:
    data["webhook_http_status"] = data.pop("webhook_status", None)
    data["image_count"] = len(data["images"])
    return data


def v2_registry() -> Registry:
    registry = Registry([ImageDeliveredV2])
    registry.register_upcaster("imagegen.image.delivered", 1, delivered_v1_to_v2)
    return registry


def golden_v1() -> Envelope:
    return Envelope.from_json(GOLDEN.read_text())


def test_a_v1_record_is_read_as_v2_through_the_upcaster() -> None:
    env = golden_v1()
    assert env.schema_version == 1 and "webhook_status" in env.data
    payload = v2_registry().parse(env)
    assert isinstance(payload, ImageDeliveredV2)
    assert payload.webhook_http_status == env.data["webhook_status"] == 200
    assert payload.image_count == len(env.data["images"]) == 1
    assert payload.images[0].sha256 == env.data["images"][0]["sha256"]
    # The envelope is left as it was (the log is immutable; only the reader's view changes).
    assert env.data["webhook_status"] == 200 and "image_count" not in env.data


def test_a_v2_record_is_read_as_it_is_by_v2_code() -> None:
    v2 = ImageDeliveredV2(job_id="j", images=(), webhook_http_status=204, image_count=0)
    env = Envelope.wrap(v2, correlation_id="j", producer="t")
    assert env.schema_version == 2
    assert v2_registry().parse(Envelope.from_json(env.to_json())) == v2


def test_code_written_for_v1_reads_a_record_whose_producer_added_a_field() -> None:
    """An additive change keeps the version: the older reader ignores the field it lacks."""
    env = golden_v1()
    newer = env.model_copy(update={"data": {**env.data, "cdn_region": "eu-west"}})
    payload = parse(newer)
    assert isinstance(payload, ImageDelivered)
    assert payload == parse(env)
    # Unknown nested fields too (a field added to DeliveredImage).
    images = [{**env.data["images"][0], "width": 512}]
    nested = env.model_copy(update={"data": {**env.data, "images": images}})
    assert parse(nested) == parse(env)


def test_code_written_for_v1_refuses_a_breaking_v2_by_name() -> None:
    v2 = ImageDeliveredV2(job_id="j", images=(), webhook_http_status=204, image_count=0)
    env = Envelope.wrap(v2, correlation_id="j", producer="t")
    with pytest.raises(UnknownEventType, match=r"delivered v2 is newer than this code \(v1\)"):
        parse(env)


def test_upcasters_chain_one_version_at_a_time() -> None:
    class V3(ImageDeliveredV2):
        schema_version: ClassVar[int] = 3
        source: str = "upcast"

    registry = Registry([V3])
    seen: list[int] = []

    def v1_to_v2(data: dict[str, Any]) -> dict[str, Any]:
        seen.append(1)
        return delivered_v1_to_v2(data)

    def v2_to_v3(data: dict[str, Any]) -> dict[str, Any]:
        seen.append(2)
        assert "image_count" in data  # sees v2's shape, not v1's
        return {**data, "source": "v1"}

    registry.register_upcaster("imagegen.image.delivered", 2, v2_to_v3)
    registry.register_upcaster("imagegen.image.delivered", 1, v1_to_v2)
    payload = registry.parse(golden_v1())
    assert isinstance(payload, V3) and payload.source == "v1" and payload.image_count == 1
    assert seen == [1, 2]


def test_a_missing_step_is_named() -> None:
    registry = Registry([ImageDeliveredV2])
    assert registry.missing_upcasters() == ["imagegen.image.delivered v1 -> v2"]
    with pytest.raises(UnknownEventType, match="v1 cannot be read: no upcaster to v2"):
        registry.parse(golden_v1())


def test_bad_registrations_are_refused_naming_the_cause() -> None:
    registry = Registry([ImageDeliveredV2])
    with pytest.raises(UnknownEventType, match="imagegen.nope"):
        registry.register_upcaster("imagegen.nope", 1, delivered_v1_to_v2)
    with pytest.raises(ValueError, match="from_version must be >= 1"):
        registry.register_upcaster("imagegen.image.delivered", 0, delivered_v1_to_v2)
    with pytest.raises(ValueError, match="schema_version bumped to v3"):
        registry.register_upcaster("imagegen.image.delivered", 2, delivered_v1_to_v2)
    registry.register_upcaster("imagegen.image.delivered", 1, delivered_v1_to_v2)
    with pytest.raises(ValueError, match="already has an upcaster from v1"):
        registry.register_upcaster("imagegen.image.delivered", 1, delivered_v1_to_v2)
    with pytest.raises(ValueError, match="already registered by ImageDeliveredV2"):
        registry.add_model(ImageDelivered)


def test_every_older_version_of_the_services_events_has_an_upcaster() -> None:
    """A model whose schema_version was bumped without its upcaster fails here, not in prod."""
    assert REGISTRY.missing_upcasters() == []

"""Turning raw topic records into the history's LogRecords."""

from __future__ import annotations

import base64
import json

import pytest

from imagegen_chaos.recorder import to_record
from imagegen_schemas import Envelope
from imagegen_schemas.jobs import ImageDelivered
from imagegen_schemas.workers import DeadLettered

pytestmark = pytest.mark.unit


def test_an_envelope_keeps_identity_causality_and_data_but_not_previews() -> None:
    env = Envelope.wrap(
        ImageDelivered(job_id="j1", images=(), webhook_status=200),
        correlation_id="j1",
        producer="delivery",
        causation_id="m1",
    )
    raw = json.loads(env.to_json())
    raw["data"]["preview_png_b64"] = "x" * 100  # as on a progress record
    r = to_record("imagegen.jobs.delivered", 2, 7, b"j1", json.dumps(raw).encode())
    assert (r.event_id, r.type, r.job_id, r.causation_id) == (env.event_id, env.type, "j1", "m1")
    assert r.occurred_at == pytest.approx(env.occurred_at.timestamp())
    assert r.data["webhook_status"] == 200 and "preview_png_b64" not in r.data
    assert (r.topic, r.partition, r.offset, r.producer) == (
        "imagegen.jobs.delivered",
        2,
        7,
        "delivery",
    )


def test_a_dead_lettered_record_is_filed_under_the_original_records_job() -> None:
    dl = DeadLettered(
        source_topic="imagegen.jobs.delivered",
        source_partition=0,
        source_offset=3,
        consumer_group="g",
        error="boom",
        original_key_b64=base64.b64encode(b"j9").decode(),
        original_value_b64=base64.b64encode(b"{}").decode(),
    )
    env = Envelope.wrap(dl, correlation_id="imagegen.jobs.delivered", producer="api")
    r = to_record("imagegen.deadletter", 0, 0, b"x", env.to_json())
    assert r.job_id == "j9" and "original_value_b64" not in r.data


def test_a_malformed_record_is_kept_as_malformed() -> None:
    r = to_record("imagegen.jobs.requested", 0, 5, b"j1", b"not json")
    assert (r.type, r.job_id, r.offset) == ("malformed", "j1", 5)

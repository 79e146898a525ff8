"""Delivery planning, webhook messages and the retry schedule: pure functions, no I/O."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from imagegen_delivery.domain.delivery import deliverable, plan_delivery
from imagegen_delivery.domain.links import LinkCheck, verify
from imagegen_delivery.domain.webhook import (
    outcome_of,
    retry_delay,
    signature_header,
    succeeded,
)
from imagegen_schemas.common import ImageRef
from imagegen_schemas.jobs import GenerationFailed, ImageModerated, Verdict

pytestmark = pytest.mark.unit
KEY = b"k" * 32


def refs(n: int) -> tuple[ImageRef, ...]:
    return tuple(
        ImageRef(uri=f"file:///b/{i}.png", sha256=f"{i:064x}", width=8, height=8, index=i)
        for i in range(n)
    )


def verdict(**kw: object) -> ImageModerated:
    base: dict[str, object] = {"job_id": "job-1", "verdict": Verdict.ALLOWED, "images": refs(3)}
    return ImageModerated.model_validate(base | kw)


def test_allowed_delivers_every_image_in_index_order() -> None:
    msg = verdict(images=tuple(reversed(refs(3))))
    assert [r.index for r in deliverable(msg)] == [0, 1, 2]


def test_rejected_delivers_nothing() -> None:
    assert deliverable(verdict(verdict=Verdict.REJECTED)) == ()


def test_an_image_rejected_on_its_own_stays_in() -> None:
    msg = verdict(per_image=(Verdict.ALLOWED, Verdict.REJECTED, Verdict.ALLOWED))
    assert [r.index for r in deliverable(msg)] == [0, 2]


@pytest.mark.parametrize(
    "kw",
    [
        {"images": ()},  # allowed, but nothing to deliver
        {"per_image": (Verdict.ALLOWED,)},  # verdicts do not pair with images
        {"per_image": (Verdict.REJECTED,) * 3},
        {"images": refs(1) + refs(1)},  # two images with index 0
    ],
)
def test_malformed_verdicts_are_refused(kw: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        deliverable(verdict(**kw))


def test_plan_fixes_one_expiry_and_signs_each_link() -> None:
    msg = verdict(webhook_url="https://hooks.example.com/x")
    record = plan_delivery(
        msg,
        deliverable(msg),
        causation_id="c",
        event_id="e",
        now=1000.9,
        ttl_s=60,
        base_url="https://dl",
        key=KEY,
    )
    assert record.expires_at == 1060 and record.webhook_url == "https://hooks.example.com/x"
    assert not record.webhook_done and record.webhook_status is None
    for image in record.images:
        assert image.expires_at == datetime.fromtimestamp(1060, UTC)
        path, query = image.url.removeprefix("https://dl").split("?")
        assert path == f"/files/job-1/{image.index}.png"
        sig = query.split("sig=")[1]
        assert verify(path, 1060, sig, KEY, now=1059) is LinkCheck.OK
    event = record.delivered()
    assert event.job_id == "job-1" and event.images == record.images


def test_delivered_outcome_is_stable_json_with_links_and_event_id() -> None:
    msg = verdict()
    record = plan_delivery(
        msg,
        deliverable(msg),
        causation_id="c",
        event_id="ev-1",
        now=0,
        ttl_s=60,
        base_url="https://dl",
        key=KEY,
    )
    at = datetime(2026, 1, 1, tzinfo=UTC)
    outcome = outcome_of(record.delivered(), "ev-1", "job-1", at)
    assert outcome is not None and outcome == outcome_of(record.delivered(), "ev-1", "job-1", at)
    assert outcome.message_id == "ev-1" and outcome.webhook_type == "generation.delivered"
    doc = json.loads(outcome.body)
    assert doc["event_id"] == "ev-1" and doc["type"] == "generation.delivered"
    assert doc["timestamp"] == "2026-01-01T00:00:00Z" and doc["job_id"] == "job-1"
    assert doc["data"]["images"][0] == {
        "index": 0,
        "url": record.images[0].url,
        "sha256": record.images[0].sha256,
        "expires_at": "1970-01-01T00:01:00Z",
    }


def test_non_terminal_failure_has_no_webhook() -> None:
    failed = GenerationFailed(job_id="j", reason="worker_lost", terminal=False)  # type: ignore[arg-type]
    assert outcome_of(failed, "e", "j", datetime.now(UTC)) is None


def test_signature_header_has_one_v1_signature_per_secret() -> None:
    at = datetime(2026, 1, 1, tzinfo=UTC)
    one = signature_header("msg", at, "{}", ["whsec_" + "a" * 32])
    two = signature_header("msg", at, "{}", ["whsec_" + "b" * 32, "whsec_" + "a" * 32])
    assert one.startswith("v1,") and two.split(" ")[1] == one


def test_retry_schedule_and_success() -> None:
    schedule = (5.0, 300.0, 1800.0)
    assert [retry_delay(n, schedule) for n in (1, 2, 3, 4)] == [5.0, 300.0, 1800.0, None]
    assert succeeded(200) and succeeded(204)
    assert not any(succeeded(s) for s in (None, 301, 400, 429, 500))

"""Delivery planning and the webhook body: pure functions, no I/O."""

from __future__ import annotations

import hashlib
import hmac
import json
from datetime import UTC, datetime

import pytest

from imagegen_delivery.domain.delivery import deliverable, plan_delivery
from imagegen_delivery.domain.links import LinkCheck, verify
from imagegen_delivery.domain.webhook import (
    derive_webhook_key,
    signature_header,
    verify_signature_header,
    webhook_body,
)
from imagegen_schemas.common import ImageRef
from imagegen_schemas.jobs import ImageModerated, Verdict

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


def test_webhook_body_is_stable_json_with_links_and_event_id() -> None:
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
    body = webhook_body("ev-1", "job-1", record.images)
    assert body == webhook_body("ev-1", "job-1", record.images)
    doc = json.loads(body)
    assert doc["event_id"] == "ev-1" and doc["type"] == "imagegen.image.delivered"
    assert doc["images"][0] == {
        "index": 0,
        "url": record.images[0].url,
        "sha256": record.images[0].sha256,
        "expires_at": "1970-01-01T00:01:00Z",
    }


def test_signature_header_is_github_style_hmac_of_the_raw_body() -> None:
    body = b'{"a":1}'
    header = signature_header(body, KEY)
    assert header == "sha256=" + hmac.new(KEY, body, hashlib.sha256).hexdigest()
    assert verify_signature_header(body, header, KEY)
    assert not verify_signature_header(body + b" ", header, KEY)
    assert not verify_signature_header(body, header, b"other-key-0123456")
    assert not verify_signature_header(body, "sha1=" + header[7:], KEY)


def test_derived_webhook_key_is_not_the_url_key_and_is_documented() -> None:
    derived = derive_webhook_key(KEY)
    assert derived != KEY
    assert derived == hmac.new(KEY, b"imagegen.webhook.v1", "sha256").hexdigest().encode()

"""Delivery with S3 storage against the real server of ``deploy/stack.py infra-up`` (issue 14:
"the bytes flow through our Python server"): the ImageDelivered links are presigned GETs on the
S3 server, which serves the image itself; our /files route is not involved."""

from __future__ import annotations

import urllib.request
from datetime import UTC, datetime

import pytest
from delivery_testkit import PNG, FakeClock, envelope_of, moderated

from imagegen_delivery.adapters.store import S3BlobStore
from imagegen_delivery.adapters.webhook_store import InMemoryWebhookStore
from imagegen_delivery.adapters.webhooks import FakeWebhookSender
from imagegen_delivery.config import DeliverySettings
from imagegen_delivery.service_layer.dispatch import WebhookDispatcher
from imagegen_delivery.service_layer.handlers import make_handlers
from imagegen_runtime.objectstore import BLOBS_PREFIX, S3Objects
from imagegen_runtime.publishing import InMemoryPublisher
from imagegen_runtime.standard import dispatcher
from imagegen_schemas import parse
from imagegen_schemas.jobs import ImageDelivered

pytestmark = pytest.mark.integration


async def test_delivered_links_are_presigned_s3_gets_that_serve_the_image(
    s3_bucket: S3Objects, settings: DeliverySettings
) -> None:
    clock = FakeClock()
    clock.now = datetime.now(UTC).timestamp()  # the S3 server checks expiry on its own clock

    def put(name: str, data: bytes) -> str:
        s3_bucket.put(BLOBS_PREFIX + name, data)
        return s3_bucket.uri(BLOBS_PREFIX + name)

    publisher = InMemoryPublisher(producer="delivery-1")
    hooks = InMemoryWebhookStore()
    sender = FakeWebhookSender(statuses=[204])
    timer = WebhookDispatcher(hooks, sender, publisher, schedule=(5.0,), clock=clock)
    handlers = make_handlers(publisher, S3BlobStore(s3_bucket), hooks, timer, settings, clock)
    env = envelope_of(moderated("job-1", put, n=2, webhook_url=None))
    await dispatcher(handlers)(env, parse(env), None)  # type: ignore[arg-type]
    await dispatcher(handlers)(env, parse(env), None)  # type: ignore[arg-type]  # redelivered

    delivered = [parse(e) for e in publisher.on("imagegen.jobs.delivered")]
    assert len(delivered) == 2 and delivered[0] == delivered[1]  # the replay: the same links
    event = delivered[0]
    assert isinstance(event, ImageDelivered)
    for image in event.images:
        assert image.url.startswith(f"{s3_bucket.settings.endpoint}/{s3_bucket.bucket}/delivery/")
        assert not image.url.startswith(settings.public_base_url)
        assert "X-Amz-Expires=3600" in image.url  # settings.url_ttl_s
        assert int(image.expires_at.timestamp()) == int(clock.now) + settings.url_ttl_s
        with urllib.request.urlopen(image.url, timeout=5) as resp:
            assert resp.status == 200 and resp.headers["Content-Type"] == "image/png"
            assert resp.read() == PNG + str(image.index).encode()

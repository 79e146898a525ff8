"""Given an ImageModerated, when delivery handles it, then files, webhook call and ImageDelivered.

Every test runs against the in-memory store and the local filesystem store.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
from delivery_testkit import PNG, FakeClock, PutSource, envelope_of, moderated
from pydantic import SecretStr

from imagegen_delivery.adapters.store import BlobStore, DigestMismatch
from imagegen_delivery.adapters.webhooks import FakeWebhookClient
from imagegen_delivery.config import DeliverySettings
from imagegen_delivery.domain.links import LinkCheck, verify
from imagegen_delivery.domain.webhook import (
    EVENT_ID_HEADER,
    SIGNATURE_HEADER,
    derive_webhook_key,
    verify_signature_header,
)
from imagegen_delivery.service_layer.handlers import make_handlers
from imagegen_runtime.publishing import InMemoryPublisher, derived_event_id
from imagegen_runtime.standard import dispatcher
from imagegen_schemas import Envelope, parse
from imagegen_schemas.jobs import ImageDelivered, ImageModerated, PromptModerated, Verdict

pytestmark = pytest.mark.unit
DELIVERED = "imagegen.jobs.delivered"


class Delivery:
    """The handler table wired to fakes, plus what a test looks at."""

    def __init__(
        self,
        store: BlobStore,
        settings: DeliverySettings,
        clock: FakeClock,
        webhooks: FakeWebhookClient | None = None,
    ) -> None:
        self.store, self.settings, self.clock = store, settings, clock
        self.publisher = InMemoryPublisher(producer="delivery-1")
        self.webhooks = webhooks or FakeWebhookClient(status=204)
        self.handlers = make_handlers(self.publisher, store, self.webhooks, settings, clock)

    async def handle(self, envelope: Envelope) -> None:
        await self.handlers[ImageModerated](envelope, parse(envelope))

    def delivered(self) -> list[Envelope]:
        return self.publisher.on(DELIVERED)


@pytest.fixture
def delivery(
    store_and_source: tuple[BlobStore, PutSource], settings: DeliverySettings, clock: FakeClock
) -> Delivery:
    return Delivery(store_and_source[0], settings, clock)


@pytest.fixture
def put(store_and_source: tuple[BlobStore, PutSource]) -> PutSource:
    return store_and_source[1]


async def test_allowed_copies_files_calls_webhook_once_and_publishes(
    delivery: Delivery,
    put: PutSource,
    clock: FakeClock,
) -> None:
    env = envelope_of(moderated("job-1", put, n=2))
    await delivery.handle(env)

    assert [delivery.store.read("job-1", i) for i in (0, 1)] == [PNG + b"0", PNG + b"1"]
    [out] = delivery.delivered()
    assert out.event_id == derived_event_id(env.event_id, ImageDelivered.event_type)
    assert out.causation_id == env.event_id and out.correlation_id == "job-1"
    event = parse(out)
    assert isinstance(event, ImageDelivered) and event.webhook_status == 204
    expires = int(clock.now) + 3600
    key = delivery.settings.signing_key.get_secret_value().encode()
    for i, image in enumerate(event.images):
        assert image.index == i and image.expires_at == datetime.fromtimestamp(expires, UTC)
        assert image.url.startswith(f"https://dl.example.com/files/job-1/{i}.png?exp={expires}&")
        sig = image.url.split("sig=")[1]
        assert verify(f"/files/job-1/{i}.png", expires, sig, key, int(clock.now)) is LinkCheck.OK

    [call] = delivery.webhooks.calls
    assert call.url == "https://hooks.example.com/in"
    assert call.headers[EVENT_ID_HEADER] == out.event_id
    assert verify_signature_header(
        call.body, call.headers[SIGNATURE_HEADER], derive_webhook_key(key)
    )
    body = json.loads(call.body)
    assert body["event_id"] == out.event_id and body["job_id"] == "job-1"
    assert [i["url"] for i in body["images"]] == [i.url for i in event.images]


async def test_redelivery_republishes_the_same_event_without_a_second_webhook_call(
    delivery: Delivery,
    put: PutSource,
    clock: FakeClock,
) -> None:
    env = envelope_of(moderated("job-1", put))
    await delivery.handle(env)
    clock.now += 600  # the redelivery comes later: the links must not change
    await delivery.handle(env)

    first, second = delivery.delivered()
    assert first.event_id == second.event_id
    assert first.data == second.data
    assert len(delivery.webhooks.calls) == 1


async def test_rejected_does_nothing(delivery: Delivery, put: PutSource) -> None:
    await delivery.handle(envelope_of(moderated("job-1", put, verdict=Verdict.REJECTED)))
    assert delivery.publisher.records == []
    assert delivery.webhooks.calls == []
    assert delivery.store.read("job-1", 0) is None and delivery.store.read_record("job-1") is None


async def test_prompt_verdicts_on_the_same_topic_are_skipped(delivery: Delivery) -> None:
    msg = PromptModerated(job_id="job-1", verdict=Verdict.ALLOWED)
    env = Envelope.wrap(msg, correlation_id="job-1", producer="safety-1")
    await dispatcher(delivery.handlers)(env, msg, None)  # type: ignore[arg-type]
    assert delivery.publisher.records == []


async def test_without_webhook_url_nothing_is_called(delivery: Delivery, put: PutSource) -> None:
    await delivery.handle(envelope_of(moderated("job-1", put, webhook_url=None)))
    assert delivery.webhooks.calls == []
    [out] = delivery.delivered()
    assert parse(out).webhook_status is None  # type: ignore[attr-defined]


async def test_a_failing_webhook_is_recorded_not_retried_by_redelivery(
    store_and_source: tuple[BlobStore, PutSource],
    settings: DeliverySettings,
    clock: FakeClock,
) -> None:
    store, put = store_and_source
    delivery = Delivery(store, settings, clock, FakeWebhookClient(status=503))
    env = envelope_of(moderated("job-1", put))
    await delivery.handle(env)
    await delivery.handle(env)
    assert len(delivery.webhooks.calls) == 1  # the client already retried; the outcome is final
    assert [parse(e).webhook_status for e in delivery.delivered()] == [503, 503]  # type: ignore[attr-defined]


async def test_a_crash_during_the_webhook_call_retries_it_with_the_same_body(
    store_and_source: tuple[BlobStore, PutSource],
    settings: DeliverySettings,
    clock: FakeClock,
) -> None:
    class CrashOnce(FakeWebhookClient):
        async def post(self, url: str, body: bytes, headers: object) -> int | None:
            await super().post(url, body, headers)  # type: ignore[arg-type]
            if len(self.calls) == 1:
                raise RuntimeError("process died mid-call")
            return self.status

    store, put = store_and_source
    delivery = Delivery(store, settings, clock, CrashOnce(status=200))
    env = envelope_of(moderated("job-1", put))
    with pytest.raises(RuntimeError):
        await delivery.handle(env)
    assert delivery.delivered() == []
    clock.now += 60
    await delivery.handle(env)  # the consumer redelivers the uncommitted record

    first, second = delivery.webhooks.calls
    assert first.body == second.body and first.headers == second.headers
    [out] = delivery.delivered()
    assert parse(out).webhook_status == 200  # type: ignore[attr-defined]


async def test_a_second_verdict_for_a_delivered_job_is_ignored(
    delivery: Delivery,
    put: PutSource,
) -> None:
    await delivery.handle(envelope_of(moderated("job-1", put)))
    await delivery.handle(envelope_of(moderated("job-1", put)))  # another event id
    assert len(delivery.delivered()) == 1 and len(delivery.webhooks.calls) == 1


async def test_a_digest_mismatch_publishes_nothing(delivery: Delivery, put: PutSource) -> None:
    msg = moderated("job-1", put, n=1)
    bad = msg.model_copy(
        update={"images": (msg.images[0].model_copy(update={"sha256": "0" * 64}),)}
    )
    with pytest.raises(DigestMismatch):  # the consumer retries, then dead-letters it
        await delivery.handle(envelope_of(bad))
    assert delivery.publisher.records == [] and delivery.webhooks.calls == []
    assert delivery.store.read("job-1", 0) is None and delivery.store.read_record("job-1") is None


async def test_images_rejected_on_their_own_are_not_delivered(
    delivery: Delivery,
    put: PutSource,
) -> None:
    msg = moderated("job-1", put, n=2, per_image=(Verdict.REJECTED, Verdict.ALLOWED))
    await delivery.handle(envelope_of(msg))
    assert delivery.store.read("job-1", 0) is None and delivery.store.read("job-1", 1) is not None
    [out] = delivery.delivered()
    assert [i.index for i in parse(out).images] == [1]  # type: ignore[attr-defined]


async def test_a_configured_webhook_secret_signs_the_calls(
    store_and_source: tuple[BlobStore, PutSource],
    settings: DeliverySettings,
    clock: FakeClock,
) -> None:
    store, put = store_and_source
    secret = "receiver-shared-secret-42"
    delivery = Delivery(
        store, settings.model_copy(update={"webhook_secret": SecretStr(secret)}), clock
    )
    await delivery.handle(envelope_of(moderated("job-1", put)))
    [call] = delivery.webhooks.calls
    assert verify_signature_header(call.body, call.headers[SIGNATURE_HEADER], secret.encode())

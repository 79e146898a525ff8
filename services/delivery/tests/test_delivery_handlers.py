"""Given delivery's input events, when its handlers and webhook dispatcher run, then files,
ImageDelivered, and one Standard Webhooks message per terminal state (docs/adr/0403).

Issue 14 regressions: webhooks fired only on success; the signature had no timestamp and was
not the Standard Webhooks one; retries gave up for good after ~3.5 s. Every test runs against the
in-memory store and the local filesystem store.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
from delivery_testkit import PNG, FakeClock, PutSource, envelope_of, moderated
from standardwebhooks.webhooks import Webhook

from imagegen_delivery.adapters.store import BlobStore, DigestMismatch
from imagegen_delivery.adapters.webhook_store import InMemoryWebhookStore
from imagegen_delivery.adapters.webhooks import FakeWebhookSender
from imagegen_delivery.config import DeliverySettings
from imagegen_delivery.domain.links import LinkCheck, verify
from imagegen_delivery.service_layer.dispatch import WebhookDispatcher
from imagegen_delivery.service_layer.handlers import make_handlers
from imagegen_runtime.publishing import InMemoryPublisher, derived_event_id
from imagegen_runtime.standard import dispatcher
from imagegen_schemas import Envelope, Payload, parse
from imagegen_schemas.common import GenerationParams, Plan, Tier
from imagegen_schemas.jobs import (
    FailureReason,
    GenerationCancelled,
    GenerationFailed,
    GenerationRequested,
    ImageDelivered,
    PromptModerated,
    Verdict,
)
from imagegen_schemas.webhooks import WebhookDeadLettered, WebhookScheduled

pytestmark = pytest.mark.unit
DELIVERED = "imagegen.jobs.delivered"
RETRY = "imagegen.webhooks.retry"
DEAD = "imagegen.webhooks.deadletter"
HOOK = "https://hooks.example.com/in"


class Delivery:
    """The handler table and dispatcher wired to fakes, plus what a test looks at."""

    def __init__(
        self,
        store: BlobStore,
        settings: DeliverySettings,
        clock: FakeClock,
        sender: FakeWebhookSender | None = None,
    ) -> None:
        self.store, self.settings, self.clock = store, settings, clock
        self.publisher = InMemoryPublisher(producer="delivery-1")
        self.sender = sender or FakeWebhookSender(statuses=[204])
        self.hooks = InMemoryWebhookStore()
        self.timer = WebhookDispatcher(
            self.hooks,
            self.sender,
            self.publisher,
            schedule=settings.webhook_retry_schedule_s,
            clock=clock,
        )
        self.handlers = make_handlers(
            self.publisher, store, self.hooks, self.timer, settings, clock
        )
        self._fed = 0

    async def handle(self, envelope: Envelope) -> None:
        await dispatcher(self.handlers)(envelope, parse(envelope), None)  # type: ignore[arg-type]

    async def send(self, payload: Payload, job_id: str = "job-1") -> Envelope:
        env = Envelope.wrap(payload, correlation_id=job_id, producer="test")
        await self.handle(env)
        return env

    async def pump(self) -> int:
        """Feed new retry-topic records to the consumer's handler, then make due attempts."""
        records = self.publisher.on(RETRY)
        for env in records[self._fed :]:
            await self.handle(env)
        self._fed = len(records)
        return await self.timer.run_due()

    def delivered(self) -> list[Envelope]:
        return self.publisher.on(DELIVERED)


def requested(job_id: str = "job-1", url: str | None = HOOK) -> GenerationRequested:
    return GenerationRequested(
        job_id=job_id,
        user_id="user-1",
        plan=Plan.FREE,
        tier=Tier.RELAX,
        params=GenerationParams(
            prompt="a red circle",
            model="shapes-demo",
            width=64,
            height=64,
            steps=2,
            guidance_scale=5.0,
            seed=1,
        ),
        webhook_url=url,
    )


@pytest.fixture
def delivery(
    store_and_source: tuple[BlobStore, PutSource], settings: DeliverySettings, clock: FakeClock
) -> Delivery:
    return Delivery(store_and_source[0], settings, clock)


@pytest.fixture
def put(store_and_source: tuple[BlobStore, PutSource]) -> PutSource:
    return store_and_source[1]


async def test_allowed_delivers_and_sends_a_standard_webhooks_signed_message(
    delivery: Delivery, put: PutSource, clock: FakeClock
) -> None:
    await delivery.send(requested())
    env = envelope_of(moderated("job-1", put, n=2))
    await delivery.handle(env)

    assert [delivery.store.read("job-1", i) for i in (0, 1)] == [PNG + b"0", PNG + b"1"]
    [out] = delivery.delivered()
    assert out.event_id == derived_event_id(env.event_id, ImageDelivered.event_type)
    event = parse(out)
    assert isinstance(event, ImageDelivered)
    expires = int(clock.now) + 3600
    key = delivery.settings.signing_key.get_secret_value().encode()
    for i, image in enumerate(event.images):
        assert image.index == i and image.expires_at == datetime.fromtimestamp(expires, UTC)
        sig = image.url.split("sig=")[1]
        assert verify(f"/files/job-1/{i}.png", expires, sig, key, int(clock.now)) is LinkCheck.OK

    assert await delivery.pump() == 1
    [call] = delivery.sender.calls
    assert call.url == HOOK
    assert call.headers["webhook-id"] == out.event_id
    assert call.headers["webhook-timestamp"] == str(int(clock.now))
    [secret] = await delivery.hooks.secrets("user-1", datetime.fromtimestamp(clock.now, UTC))
    assert secret.startswith("whsec_")
    at = datetime.fromtimestamp(clock.now, UTC)
    assert (
        Webhook(secret).sign(out.event_id, at, call.body.decode())
        == call.headers["webhook-signature"]
    )
    body = json.loads(call.body)
    assert body["type"] == "generation.delivered" and body["job_id"] == "job-1"
    assert body["event_id"] == out.event_id
    assert [i["url"] for i in body["data"]["images"]] == [i.url for i in event.images]
    assert "X-Imagegen-Signature" not in call.headers


async def test_a_receiver_verifies_with_the_standardwebhooks_library(
    delivery: Delivery, put: PutSource, clock: FakeClock
) -> None:
    clock.now = datetime.now(UTC).timestamp()  # the library checks the timestamp against now
    await delivery.send(requested())
    await delivery.send(GenerationCancelled(job_id="job-1", at_step=3))
    await delivery.pump()
    [call] = delivery.sender.calls
    [secret] = await delivery.hooks.secrets("user-1", datetime.now(UTC))
    doc = Webhook(secret).verify(call.body, call.headers)
    assert doc["type"] == "generation.cancelled" and doc["data"] == {"at_step": 3}
    with pytest.raises(Exception, match="signature"):
        Webhook(secret).verify(call.body.replace(b"3", b"4"), call.headers)


@pytest.mark.parametrize(
    ("payload", "kind"),
    [
        (GenerationFailed(job_id="job-1", reason=FailureReason.OUT_OF_MEMORY), "generation.failed"),
        (
            GenerationFailed(job_id="job-1", reason=FailureReason.PROMPT_REJECTED),
            "generation.rejected",
        ),
        (PromptModerated(job_id="job-1", verdict=Verdict.REJECTED), "generation.rejected"),
        (GenerationCancelled(job_id="job-1"), "generation.cancelled"),
    ],
)
async def test_every_terminal_state_sends_its_webhook(
    delivery: Delivery, payload: Payload, kind: str
) -> None:
    await delivery.send(requested())
    env = await delivery.send(payload)
    await delivery.pump()
    [call] = delivery.sender.calls
    assert json.loads(call.body)["type"] == kind
    assert call.headers["webhook-id"] == env.event_id


async def test_a_rejected_image_sends_generation_rejected(
    delivery: Delivery, put: PutSource
) -> None:
    await delivery.send(requested())
    await delivery.handle(envelope_of(moderated("job-1", put, verdict=Verdict.REJECTED)))
    await delivery.pump()
    [call] = delivery.sender.calls
    assert json.loads(call.body)["data"]["stage"] == "image"
    assert delivery.delivered() == [] and delivery.store.read("job-1", 0) is None


async def test_the_outcome_may_come_before_the_request(delivery: Delivery) -> None:
    await delivery.send(GenerationFailed(job_id="job-1", reason=FailureReason.TIMEOUT))
    assert await delivery.pump() == 0  # no user, no URL yet
    await delivery.send(requested())
    assert await delivery.pump() == 1
    assert json.loads(delivery.sender.calls[0].body)["data"]["reason"] == "timeout"


async def test_attempt_failures_and_allowed_prompts_send_nothing(delivery: Delivery) -> None:
    await delivery.send(requested())
    await delivery.send(PromptModerated(job_id="job-1", verdict=Verdict.ALLOWED))
    await delivery.send(
        GenerationFailed(job_id="job-1", reason=FailureReason.WORKER_LOST, terminal=False)
    )
    assert await delivery.pump() == 0 and delivery.publisher.on(RETRY) == []


async def test_without_webhook_url_nothing_is_scheduled(delivery: Delivery, put: PutSource) -> None:
    await delivery.send(requested(url=None))
    await delivery.handle(envelope_of(moderated("job-1", put, webhook_url=None)))
    assert await delivery.pump() == 0 and delivery.sender.calls == []
    assert len(delivery.delivered()) == 1


async def test_redelivered_events_send_one_message(delivery: Delivery, put: PutSource) -> None:
    req = Envelope.wrap(requested(), correlation_id="job-1", producer="api-1")
    env = envelope_of(moderated("job-1", put))
    for e in (req, env, req, env):
        await delivery.handle(e)
    await delivery.pump()
    first, second = delivery.delivered()
    assert first.event_id == second.event_id and first.data == second.data
    assert len(delivery.sender.calls) == 1


async def test_a_second_verdict_for_a_delivered_job_is_ignored(
    delivery: Delivery, put: PutSource
) -> None:
    await delivery.send(requested())
    await delivery.handle(envelope_of(moderated("job-1", put)))
    await delivery.handle(envelope_of(moderated("job-1", put)))  # another event id
    await delivery.pump()
    assert len(delivery.delivered()) == 1 and len(delivery.sender.calls) == 1


async def test_failed_calls_are_retried_on_the_schedule_with_the_same_id_then_dead_lettered(
    store_and_source: tuple[BlobStore, PutSource], settings: DeliverySettings, clock: FakeClock
) -> None:
    d = Delivery(store_and_source[0], settings, clock, FakeWebhookSender(statuses=[503, None]))
    await d.send(requested())
    await d.send(GenerationCancelled(job_id="job-1"))
    assert await d.pump() == 1
    [retry] = [parse(e) for e in d.publisher.on(RETRY)][1:]
    assert isinstance(retry, WebhookScheduled) and retry.attempt == 2
    assert retry.due_at.timestamp() == clock.now + 5 and retry.last_error == "answered 503"
    clock.now += 4.9
    assert await d.pump() == 0  # not due yet
    clock.now += 0.1
    assert await d.pump() == 1
    clock.now += 299
    assert await d.pump() == 0
    clock.now += 1
    assert await d.pump() == 1  # third and last attempt: schedule (5 s, 300 s) is spent
    assert await d.pump() == 0
    ids = {c.headers["webhook-id"] for c in d.sender.calls}
    stamps = [c.headers["webhook-timestamp"] for c in d.sender.calls]
    assert len(d.sender.calls) == 3 and len(ids) == 1 and len(set(stamps)) == 3
    assert len({c.body for c in d.sender.calls}) == 1
    [dead] = [parse(e) for e in d.publisher.on(DEAD)]
    assert isinstance(dead, WebhookDeadLettered)
    assert dead.attempts == 3 and dead.reason == "no answer" and dead.message_id in ids
    assert (await d.hooks.status_of(dead.message_id))[0] == "dead"  # type: ignore[index]


async def test_a_refused_url_is_dead_lettered_at_once_with_the_reason(
    store_and_source: tuple[BlobStore, PutSource], settings: DeliverySettings, clock: FakeClock
) -> None:
    sender = FakeWebhookSender(forbidden={HOOK})
    d = Delivery(store_and_source[0], settings, clock, sender)
    await d.send(requested())
    await d.send(GenerationCancelled(job_id="job-1"))
    await d.pump()
    [dead] = [parse(e) for e in d.publisher.on(DEAD)]
    assert isinstance(dead, WebhookDeadLettered) and dead.attempts == 1
    assert dead.reason.startswith("refused:")
    assert len(d.publisher.on(RETRY)) == 1  # no retry of a refused call


async def test_during_a_rotation_both_secrets_sign(delivery: Delivery, clock: FakeClock) -> None:
    now = datetime.fromtimestamp(clock.now, UTC)
    [old] = await delivery.hooks.secrets("user-1", now)
    clock.now += 1
    new = await delivery.hooks.rotate(
        "user-1", datetime.fromtimestamp(clock.now, UTC), timedelta(hours=1)
    )
    await delivery.send(requested())
    await delivery.send(GenerationCancelled(job_id="job-1"))
    await delivery.pump()
    [call] = delivery.sender.calls
    at = datetime.fromtimestamp(clock.now, UTC)
    sigs = call.headers["webhook-signature"].split(" ")
    assert sigs == [
        Webhook(s).sign(call.headers["webhook-id"], at, call.body.decode()) for s in (new, old)
    ]
    clock.now += 3601  # the overlap is over: only the new secret signs
    assert await delivery.hooks.secrets("user-1", datetime.fromtimestamp(clock.now, UTC)) == [new]


async def test_a_digest_mismatch_publishes_nothing(delivery: Delivery, put: PutSource) -> None:
    msg = moderated("job-1", put, n=1)
    bad = msg.model_copy(
        update={"images": (msg.images[0].model_copy(update={"sha256": "0" * 64}),)}
    )
    with pytest.raises(DigestMismatch):  # the consumer retries, then dead-letters it
        await delivery.handle(envelope_of(bad))
    assert delivery.publisher.records == [] and delivery.sender.calls == []
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


async def test_an_outcome_older_than_the_max_age_sends_nothing(
    delivery: Delivery, clock: FakeClock
) -> None:
    await delivery.send(requested())
    old = datetime.fromtimestamp(clock.now - 86401, UTC)  # ended over a day ago: old history
    msg = GenerationCancelled(job_id="job-1")
    await delivery.handle(Envelope.wrap(msg, correlation_id="job-1", producer="t", occurred_at=old))
    assert await delivery.pump() == 0 and delivery.publisher.on(RETRY) == []
    fresh = datetime.fromtimestamp(clock.now - 60, UTC)
    await delivery.handle(
        Envelope.wrap(msg, correlation_id="job-1", producer="t", occurred_at=fresh)
    )
    assert await delivery.pump() == 1

"""Handlers of the delivery service: one per event type it reacts to.

ImageModerated, allowed: copy the images to the delivery store, sign their links, publish
ImageDelivered, then schedule the ``generation.delivered`` webhook.

Every terminal state has its webhook (docs/adr/0403): delivered (above), failed (a terminal
GenerationFailed), rejected (a rejected PromptModerated or ImageModerated, or a terminal
GenerationFailed for a rejection) and cancelled (GenerationCancelled). Those events do not carry
the user or the URL, so GenerationRequested is joined to the outcome in the webhook store, in
whichever order they come; the first outcome of a job wins. An outcome older than
``webhook_max_age_s`` sends nothing (history read by a new consumer group). Once both are
known, the first attempt is published on the retry topic, due at once.

WebhookScheduled (the retry topic): stored, then handed to the dispatcher's timer; the consumer
never waits for a due time nor for a receiver.

Idempotency (docs/adr/0401): the job's DeliveryRecord is written once the files are stored and
again once the webhook is scheduled. A redelivered verdict replays the record: same links, same
event id; a redelivered terminal event schedules the same message (same webhook-id and record
event id), which the store drops as a duplicate.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime

from imagegen_runtime.publishing import Publisher, derived_event_id
from imagegen_runtime.standard import TypedHandler
from imagegen_runtime.tracing import job_span
from imagegen_schemas import Envelope, Payload
from imagegen_schemas.jobs import (
    GenerationCancelled,
    GenerationFailed,
    GenerationRequested,
    ImageDelivered,
    ImageModerated,
    PromptModerated,
    Verdict,
)
from imagegen_schemas.webhooks import WebhookScheduled

from ..adapters.store import BlobStore
from ..adapters.webhook_store import Ready, WebhookStore
from ..config import DeliverySettings
from ..domain.delivery import DeliveryRecord, deliverable, plan_delivery
from ..domain.webhook import outcome_of
from ..metrics import UPLOAD_SECONDS
from .dispatch import WebhookDispatcher, scheduled_event_id

log = logging.getLogger(__name__)

Clock = Callable[[], float]  # unix seconds, e.g. time.time


def make_handlers(
    publisher: Publisher,
    store: BlobStore,
    hooks: WebhookStore,
    dispatcher: WebhookDispatcher,
    settings: DeliverySettings,
    clock: Clock = time.time,
) -> dict[type[Payload], TypedHandler]:
    url_key = settings.signing_key.get_secret_value().encode()

    async def prepare(envelope: Envelope, msg: ImageModerated) -> DeliveryRecord:
        refs = deliverable(msg)
        for ref in refs:
            with (
                job_span("delivery upload", msg.job_id, attributes={"imagegen.image": ref.index}),
                UPLOAD_SECONDS.time(),  # imagegen_delivery_upload_seconds, one per image
            ):
                await asyncio.to_thread(store.copy_in, msg.job_id, ref.index, ref.uri, ref.sha256)
        record = plan_delivery(
            msg,
            refs,
            causation_id=envelope.event_id,
            event_id=derived_event_id(envelope.event_id, ImageDelivered.event_type),
            now=clock(),
            ttl_s=settings.url_ttl_s,
            base_url=settings.public_base_url,
            key=url_key,
            storage_link=store.download_url,  # presigned S3 links; None: our /files links
        )
        await asyncio.to_thread(store.write_record, record)
        return record

    async def schedule(ready: Ready | None) -> None:
        if ready is None:
            return
        if ready.url is not None:
            first = WebhookScheduled(
                message_id=ready.outcome.message_id,
                job_id=ready.job_id,
                user_id=ready.user_id,
                url=ready.url,
                webhook_type=ready.outcome.webhook_type,
                body=ready.outcome.body,
                attempt=1,
                due_at=datetime.fromtimestamp(clock(), UTC),
            )
            await publisher.publish(
                first,
                key=ready.job_id,
                causation_id=ready.outcome.message_id,
                event_id=scheduled_event_id(first),
            )
        await hooks.mark_scheduled(ready.job_id)

    async def on_outcome(envelope: Envelope, msg: Payload, job_id: str) -> None:
        outcome = outcome_of(msg, envelope.event_id, job_id, envelope.occurred_at)
        age = clock() - envelope.occurred_at.timestamp()
        if outcome is not None and age > settings.webhook_max_age_s:
            log.info("job %s ended %.0f s ago: no webhook", job_id, age)
        elif outcome is not None:
            await schedule(await hooks.note_outcome(job_id, outcome))

    async def on_requested(envelope: Envelope, msg: GenerationRequested) -> None:
        await schedule(await hooks.note_request(msg.job_id, msg.user_id, msg.webhook_url))

    async def on_ended(envelope: Envelope, msg: GenerationFailed | GenerationCancelled) -> None:
        await on_outcome(envelope, msg, msg.job_id)

    async def on_prompt_moderated(envelope: Envelope, msg: PromptModerated) -> None:
        await on_outcome(envelope, msg, msg.job_id)

    async def on_image_moderated(envelope: Envelope, msg: ImageModerated) -> None:
        if msg.verdict != Verdict.ALLOWED:
            await on_outcome(envelope, msg, msg.job_id)
            return
        record = await asyncio.to_thread(store.read_record, msg.job_id)
        if record is not None and record.causation_id != envelope.event_id:
            if record.webhook_done:  # a job is delivered once: the first allowed verdict wins
                log.warning(
                    "job already delivered by event %s; verdict %s ignored",
                    record.causation_id,
                    envelope.event_id,
                )
                return
            record = None  # an earlier verdict's delivery never finished: this one replaces it
        if record is None:
            record = await prepare(envelope, msg)
        delivered = await publisher.publish(
            record.delivered(),
            key=msg.job_id,
            causation_id=envelope.event_id,
            event_id=record.event_id,
        )
        if not record.webhook_done:
            await on_outcome(delivered, record.delivered(), msg.job_id)
            done = record.model_copy(update={"webhook_done": True})
            await asyncio.to_thread(store.write_record, done)

    async def on_webhook_scheduled(envelope: Envelope, msg: WebhookScheduled) -> None:
        if await hooks.upsert_message(msg):
            dispatcher.add(msg)

    return {
        GenerationRequested: on_requested,
        PromptModerated: on_prompt_moderated,
        ImageModerated: on_image_moderated,
        GenerationFailed: on_ended,
        GenerationCancelled: on_ended,
        WebhookScheduled: on_webhook_scheduled,
    }

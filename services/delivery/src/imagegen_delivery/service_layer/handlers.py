"""Handlers of the delivery service: one per event type it reacts to.

ImageModerated, allowed: copy the images to the delivery store, sign their links, call the
webhook, publish ImageDelivered. Rejected: nothing (the rejection is the safety service's fact).

Idempotency (docs/adr/0401): the job's DeliveryRecord is written once the files are stored (the
expiry fixed there) and again after the webhook call. A redelivered verdict replays the record:
same links, same event id, and no second webhook call once the first one finished.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from imagegen_runtime.publishing import Publisher, derived_event_id
from imagegen_runtime.standard import PayloadHandler
from imagegen_schemas import Envelope, Payload
from imagegen_schemas.jobs import ImageDelivered, ImageModerated, Verdict

from ..adapters.store import BlobStore
from ..adapters.webhooks import WebhookClient
from ..config import DeliverySettings
from ..domain.delivery import DeliveryRecord, deliverable, plan_delivery
from ..domain.webhook import (
    EVENT_ID_HEADER,
    SIGNATURE_HEADER,
    derive_webhook_key,
    signature_header,
    webhook_body,
)

log = logging.getLogger(__name__)

Clock = Callable[[], float]  # unix seconds, e.g. time.time


def make_handlers(
    publisher: Publisher,
    store: BlobStore,
    webhooks: WebhookClient,
    settings: DeliverySettings,
    clock: Clock = time.time,
) -> dict[type[Payload], PayloadHandler]:
    url_key = settings.signing_key.get_secret_value().encode()
    hook_key = (
        settings.webhook_secret.get_secret_value().encode()
        if settings.webhook_secret
        else derive_webhook_key(url_key)
    )

    async def prepare(envelope: Envelope, msg: ImageModerated) -> DeliveryRecord:
        refs = deliverable(msg)
        for ref in refs:
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
        )
        await asyncio.to_thread(store.write_record, record)
        return record

    async def call_webhook(record: DeliveryRecord) -> DeliveryRecord:
        status = None
        if record.webhook_url:
            body = webhook_body(record.event_id, record.job_id, record.images)
            status = await webhooks.post(
                record.webhook_url,
                body,
                {
                    "Content-Type": "application/json",
                    EVENT_ID_HEADER: record.event_id,
                    SIGNATURE_HEADER: signature_header(body, hook_key),
                },
            )
        done = record.model_copy(update={"webhook_done": True, "webhook_status": status})
        await asyncio.to_thread(store.write_record, done)
        return done

    async def on_image_moderated(envelope: Envelope, msg: ImageModerated) -> None:
        if msg.verdict != Verdict.ALLOWED:
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
        if not record.webhook_done:
            record = await call_webhook(record)
        await publisher.publish(
            record.delivered(),
            key=msg.job_id,
            causation_id=envelope.event_id,
            event_id=record.event_id,
        )

    return {ImageModerated: on_image_moderated}  # type: ignore[dict-item]

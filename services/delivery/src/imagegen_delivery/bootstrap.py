"""Composition root of the delivery service: the only place adapters are built."""

from __future__ import annotations

import time

from imagegen_runtime.kafka import KafkaPublisher
from imagegen_runtime.service import ServiceApp
from imagegen_runtime.standard import consumer_service, dispatcher

from .adapters.store import BlobStore, LocalFileStore
from .adapters.webhooks import HttpxWebhookClient, WebhookClient
from .config import SERVICE, SUBSCRIBES, DeliverySettings
from .entrypoints.http import make_http_app
from .service_layer.handlers import Clock, make_handlers


def bootstrap(
    settings: DeliverySettings,
    *,
    publisher: KafkaPublisher | None = None,
    store: BlobStore | None = None,
    webhooks: WebhookClient | None = None,
    clock: Clock = time.time,
) -> ServiceApp:
    publisher = publisher or KafkaPublisher(
        settings.kafka_bootstrap, f"{SERVICE}-{settings.instance_id}", settings.topic_prefix
    )
    store = store or LocalFileStore(settings.store_dir, source_root=settings.source_dir)
    webhooks = webhooks or HttpxWebhookClient(
        timeout_s=settings.webhook_timeout_s,
        attempts=settings.webhook_attempts,
        backoff_s=settings.webhook_backoff_s,
    )
    handlers = make_handlers(publisher, store, webhooks, settings, clock)
    app = consumer_service(
        settings,
        SERVICE,
        SUBSCRIBES,
        dispatcher(handlers),
        publisher,
        http=make_http_app(store, settings, clock),
    )
    app.on_shutdown.append(webhooks.close)
    return app

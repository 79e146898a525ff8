"""Composition root of the delivery service: the only place adapters are built."""

from __future__ import annotations

import time

from imagegen_runtime.db import make_engine
from imagegen_runtime.kafka import KafkaPublisher
from imagegen_runtime.objectstore import DELIVERY_PREFIX, object_store, sweeper, sweeper_task
from imagegen_runtime.service import ServiceApp
from imagegen_runtime.ssrf import AllowList
from imagegen_runtime.standard import consumer_service, database_check, dispatcher

from .adapters.store import BlobStore, LocalFileStore, S3BlobStore
from .adapters.webhook_store import PgWebhookStore, WebhookStore
from .adapters.webhooks import PinnedHttpxSender, WebhookSender
from .config import SERVICE, SUBSCRIBES, DeliverySettings
from .entrypoints.http import make_http_app
from .service_layer.dispatch import WebhookDispatcher
from .service_layer.handlers import Clock, make_handlers


def bootstrap(
    settings: DeliverySettings,
    *,
    publisher: KafkaPublisher | None = None,
    store: BlobStore | None = None,
    webhooks: WebhookSender | None = None,
    hooks: WebhookStore | None = None,
    clock: Clock = time.time,
) -> ServiceApp:
    publisher = publisher or KafkaPublisher(
        settings.kafka_bootstrap, f"{SERVICE}-{settings.instance_id}", settings.topic_prefix
    )
    objects = object_store(settings.storage)  # None: local folders (docs/storage.md)
    if store is None:
        store = (
            LocalFileStore(settings.store_dir, source_root=settings.source_dir)
            if objects is None
            else S3BlobStore(objects)  # presigned download links
        )
    webhooks = webhooks or PinnedHttpxSender(
        timeout_s=settings.webhook_timeout_s,
        per_endpoint=settings.webhook_per_endpoint,
        max_in_flight=settings.webhook_max_in_flight,
        allow=AllowList.parse(settings.webhook_allow),
    )
    engine = None
    if hooks is None:
        engine = make_engine(settings.database_url, pool_size=4)
        hooks = PgWebhookStore(engine)
    timer = WebhookDispatcher(
        hooks,
        webhooks,
        publisher,
        schedule=settings.webhook_retry_schedule_s,
        clock=clock,
    )
    handlers = make_handlers(publisher, store, hooks, timer, settings, clock)
    app = consumer_service(
        settings,
        SERVICE,
        SUBSCRIBES,
        dispatcher(handlers),
        publisher,
        http=make_http_app(store, settings, clock),
    )
    app.tasks.append(timer.run)
    # Retention: delivered images and their records older than their limit go (docs/storage.md).
    images = sweeper(objects, settings.store_dir, DELIVERY_PREFIX, settings.retention_images_s)
    app.tasks.append(sweeper_task("delivery", [images], settings.retention_sweep_interval_s))
    app.on_shutdown.append(webhooks.close)
    if engine is not None:
        check, dispose = database_check(settings.database_url)
        app.readiness.add("database", check)
        app.on_shutdown.extend([dispose, engine.dispose])
    return app

"""Composition root of the pool-manager service: the only place adapters are built."""

from __future__ import annotations

from imagegen_runtime.kafka import KafkaPublisher
from imagegen_runtime.service import ServiceApp
from imagegen_runtime.standard import consumer_service, database_check, dispatcher

from .config import SERVICE, SUBSCRIBES, PoolManagerSettings
from .service_layer.handlers import HANDLERS


def bootstrap(settings: PoolManagerSettings, *, publisher: KafkaPublisher | None = None) -> ServiceApp:
    publisher = publisher or KafkaPublisher(
        settings.kafka_bootstrap, f"{SERVICE}-{settings.instance_id}", settings.topic_prefix
    )
    app = consumer_service(settings, SERVICE, SUBSCRIBES, dispatcher(HANDLERS), publisher)
    check, dispose = database_check(settings.database_url)
    app.readiness.add("postgres", check)  # type: ignore[arg-type]
    app.on_shutdown.append(dispose)  # type: ignore[arg-type]
    return app

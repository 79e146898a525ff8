"""Composition root of the scheduler service: the only place adapters are built."""

from __future__ import annotations

from imagegen_runtime.kafka import KafkaPublisher
from imagegen_runtime.service import ServiceApp
from imagegen_runtime.standard import consumer_service, dispatcher

from .config import SERVICE, SUBSCRIBES, SchedulerSettings
from .service_layer.handlers import HANDLERS


def bootstrap(
    settings: SchedulerSettings, *, publisher: KafkaPublisher | None = None
) -> ServiceApp:
    publisher = publisher or KafkaPublisher(
        settings.kafka_bootstrap, f"{SERVICE}-{settings.instance_id}", settings.topic_prefix
    )
    return consumer_service(settings, SERVICE, SUBSCRIBES, dispatcher(HANDLERS), publisher)

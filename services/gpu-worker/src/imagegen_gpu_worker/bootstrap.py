"""Composition root of the gpu-worker service: the only place adapters are built."""

from __future__ import annotations

import asyncio
from functools import partial

from imagegen_runtime.kafka import KafkaPublisher
from imagegen_runtime.service import ServiceApp
from imagegen_runtime.standard import consumer_service, dispatcher

from .adapters.memory import read_memory
from .config import SERVICE, SUBSCRIBES, GpuWorkerSettings
from .service_layer.handlers import HANDLERS
from .service_layer.heartbeat import heartbeat_loop


def bootstrap(settings: GpuWorkerSettings, *, publisher: KafkaPublisher | None = None) -> ServiceApp:
    publisher = publisher or KafkaPublisher(
        settings.kafka_bootstrap, f"{SERVICE}-{settings.worker_id}", settings.topic_prefix
    )
    app = consumer_service(settings, SERVICE, SUBSCRIBES, dispatcher(HANDLERS), publisher)

    async def beat(stop: asyncio.Event) -> None:
        await heartbeat_loop(publisher, settings.worker_id, partial(read_memory, settings.device),
                             settings.heartbeat_interval_s, stop)

    app.tasks.append(beat)
    return app

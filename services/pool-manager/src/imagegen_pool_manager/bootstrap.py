"""Composition root of the pool-manager service: the only place adapters are built."""

from __future__ import annotations

import asyncio

from imagegen_runtime.health import Readiness, health_app
from imagegen_runtime.kafka import KafkaPublisher, ReplayingConsumer
from imagegen_runtime.publishing import Publisher
from imagegen_runtime.service import ServiceApp
from imagegen_runtime.standard import database_check, kafka_metadata_check

from .config import SERVICE, SUBSCRIBES, PoolManagerSettings
from .service_layer.pool import PoolManager


def bootstrap(settings: PoolManagerSettings, *, publisher: Publisher | None = None) -> ServiceApp:
    kafka = KafkaPublisher(
        settings.kafka_bootstrap, f"{SERVICE}-{settings.instance_id}", settings.topic_prefix
    )
    publisher = publisher or kafka
    pool = PoolManager(publisher, settings.heartbeat_timeout_s)
    consumer = ReplayingConsumer(
        settings.kafka_bootstrap,
        [settings.topic_prefix + t for t in SUBSCRIBES],
        pool.on_event,
        kafka,
        f"{settings.topic_prefix}imagegen-pool-manager",
    )
    readiness = Readiness()
    readiness.add("kafka", kafka_metadata_check(settings.kafka_bootstrap))
    check, dispose = database_check(settings.database_url)
    readiness.add("postgres", check)

    async def caught_up() -> bool:
        return consumer.caught_up.is_set()

    readiness.add("caught_up", caught_up)

    async def sweeps(stop: asyncio.Event) -> None:
        await pool.sweep_loop(consumer.caught_up, stop)

    http = health_app(SERVICE, readiness)

    @http.get("/v1/workers")
    async def workers() -> list[dict[str, object]]:
        """The fleet as projected from heartbeats: alive or lost, memory, models, running job."""
        return [
            {
                "worker_id": w.worker_id,
                "lost": w.lost,
                "last_seen": w.last_seen,
                "in_flight": sorted(
                    j for j, f in pool.fleet.in_flight.items() if f.worker_id == w.worker_id
                ),
                **w.heartbeat.model_dump(mode="json", exclude={"worker_id"}),
            }
            for w in pool.fleet.workers.values()
        ]

    return ServiceApp(
        SERVICE, http, readiness, tasks=[consumer.run, sweeps], on_shutdown=[kafka.close, dispose]
    )

"""Building blocks that every service's bootstrap and main share."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Callable

from confluent_kafka.admin import AdminClient
from fastapi import FastAPI

from imagegen_schemas import Envelope, Payload

from .health import Readiness, add_health_routes, health_app
from .kafka import Handler, KafkaConsumerLoop, KafkaPublisher, RecordMeta
from .logs import configure_logging
from .service import ServiceApp, serve
from .settings import ServiceSettings, load_settings
from .tracing import configure_tracing

PayloadHandler = Callable[[Envelope, Payload], Awaitable[None]]


def kafka_metadata_check(bootstrap: str) -> Callable[[], object]:
    """A readiness check that passes when the broker answers a metadata request."""
    admin = AdminClient({"bootstrap.servers": bootstrap})

    async def check() -> bool:
        md = await asyncio.to_thread(admin.list_topics, timeout=1.0)
        return bool(md.brokers)

    return check


def consumer_assigned_check(consumer: KafkaConsumerLoop) -> Callable[[], object]:
    """A readiness check that passes once the consumer group gave this member its partitions."""

    async def check() -> bool:
        return consumer.assigned.is_set()

    return check


def run_main(
    service: str,
    settings_cls: type[ServiceSettings],
    bootstrap: Callable[[ServiceSettings], ServiceApp],
) -> None:
    """Load settings (exit 2 naming the bad setting), configure logs and tracing, serve."""
    settings = load_settings(settings_cls)
    configure_logging(service, settings.log_level)
    configure_tracing(service, settings.trace_exporter)

    async def main() -> int:
        app = bootstrap(settings)
        return await serve(app, settings.http_host, settings.http_port)

    sys.exit(asyncio.run(main()))


def database_check(url: str) -> tuple[Callable[[], object], Callable[[], object]]:
    """A readiness check that round-trips to PostgreSQL, and the engine's disposer."""
    from .db import make_engine, ping

    engine = make_engine(url, pool_size=1)

    async def check() -> bool:
        return await ping(engine)

    return check, engine.dispose


def consumer_service(
    settings: ServiceSettings,
    service: str,
    subscribes: tuple[str, ...],
    handler: Handler,
    publisher: KafkaPublisher,
    *,
    http: FastAPI | None = None,
    group: str | None = None,
) -> ServiceApp:
    """A service that consumes ``subscribes`` in group ``imagegen-<service>`` with ``handler``.

    Readiness: the broker answers metadata and the group assigned this member its partitions.
    """
    readiness = Readiness()
    readiness.add("kafka", kafka_metadata_check(settings.kafka_bootstrap))  # type: ignore[arg-type]
    if http is None:
        http = health_app(service, readiness)
    else:
        add_health_routes(http, service, readiness)
    app = ServiceApp(service, http, readiness)
    if subscribes:
        consumer = KafkaConsumerLoop(
            settings.kafka_bootstrap,
            group or f"{settings.topic_prefix}imagegen-{service}",
            [settings.topic_prefix + t for t in subscribes],
            handler,
            publisher,
        )
        readiness.add("consumer", consumer_assigned_check(consumer))  # type: ignore[arg-type]
        app.tasks.append(consumer.run)
    app.on_shutdown.append(publisher.close)
    return app


def dispatcher(handlers: dict[type[Payload], PayloadHandler]) -> Handler:
    """A consumer handler that routes each payload to the handler of its type.

    Types the service does not handle are skipped (committed): a topic carries several types.
    """

    async def handle(envelope: Envelope, payload: Payload, meta: RecordMeta) -> None:
        fn = handlers.get(type(payload))
        if fn is not None:
            await fn(envelope, payload)

    return handle

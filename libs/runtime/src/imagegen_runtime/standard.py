"""Building blocks that every service's bootstrap and main share."""

from __future__ import annotations

import asyncio
import gc
import sys
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

from confluent_kafka.admin import AdminClient
from fastapi import FastAPI

from imagegen_schemas import Envelope, Payload

from .faststream_consumer import FastStreamConsumer
from .health import CheckResult, Readiness, ReadinessCheck, add_health_routes, health_app
from .kafka import Handler, RecordMeta, ReplayingConsumer
from .logs import configure_logging
from .operator_auth import OperatorAuth
from .publishing import Publisher
from .service import ServiceApp, serve
from .settings import ConfigError, ServiceSettings, load_settings
from .tracing import (
    TracingConfigError,
    configure_tracing,
    instrument_http_app,
    shutdown_tracing_async,
)

P = TypeVar("P", bound=Payload)
S = TypeVar("S", bound=ServiceSettings)

PayloadHandler = Callable[[Envelope, Payload], Awaitable[None]]
# A handler of one payload type. In a dispatcher's table the key (the payload's type) is what
# guarantees the type, so the table's values take ``Any``: ``{ImageModerated: on_moderated}``
# type-checks without a cast. :func:`route` keeps key and handler in step when that matters.
TypedHandler = Callable[[Envelope, Any], Awaitable[None]]
Closer = Callable[[], Awaitable[None]]


def kafka_metadata_check(bootstrap: str) -> ReadinessCheck:
    """A readiness check that passes when the broker answers a metadata request."""
    admin = AdminClient({"bootstrap.servers": bootstrap})

    async def check() -> bool:
        md = await asyncio.to_thread(admin.list_topics, timeout=1.0)
        return bool(md.brokers)

    return check


def consumer_assigned_check(consumer: FastStreamConsumer | ReplayingConsumer) -> ReadinessCheck:
    """A readiness check: the group gave this member its partitions and no transient fault
    holds the consumer (ADR 0008); when failing, the reason names the fault and the record."""

    async def check() -> CheckResult:
        return consumer.health()

    return check


def run_main(
    service: str,
    settings_cls: type[S],
    bootstrap: Callable[[S], ServiceApp],
) -> None:
    """Load settings (exit 2 naming the bad setting), configure logs and tracing, serve.

    Tracing (ADR 0800): the ``OTEL_*`` variables choose the exporters (exit 2 naming a variable
    this service cannot honour); the HTTP app gets server spans; the spans still buffered are
    exported on the way out.
    """
    settings = load_settings(settings_cls)
    configure_gc(settings.gc_thresholds)
    configure_logging(service, settings.log_level)
    try:
        configure_tracing(service, settings.trace_exporter)
    except TracingConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        raise ConfigError(2) from None

    async def main() -> int:
        app = bootstrap(settings)
        instrument_http_app(app.http)
        app.on_shutdown.append(shutdown_tracing_async)  # last: after the publishers' flush
        return await serve(app, settings.http_host, settings.http_port)

    sys.exit(asyncio.run(main()))


def configure_gc(thresholds: str) -> tuple[int, ...]:
    """Set the garbage collector's thresholds from ``ServiceSettings.gc_thresholds`` ("python"
    keeps Python's own) and return the ones in force (ADR 0642).

    A full collection walks every object the process holds and stops the event loop while it
    does: 75-95 ms in the API, whose heap holds FastAPI, pydantic, SQLAlchemy and the Kafka
    client. With Python's thresholds (700, 10, 10) the API ran four in one admission bench run,
    each holding up all 32 requests in flight: that was most of its p99."""
    if thresholds != "python":
        gen0, gen1, gen2 = (int(n) for n in thresholds.split(","))
        gc.set_threshold(gen0, gen1, gen2)
    return gc.get_threshold()


def database_check(url: str) -> tuple[ReadinessCheck, Closer]:
    """A readiness check that round-trips to PostgreSQL, and the engine's disposer."""
    from .db import make_engine, ping

    engine = make_engine(url, pool_size=1)

    async def check() -> bool:
        return await ping(engine)

    async def dispose() -> None:
        await engine.dispose()

    return check, dispose


def consumer_service(
    settings: ServiceSettings,
    service: str,
    subscribes: tuple[str, ...],
    handler: Handler,
    publisher: Publisher,
    *,
    http: FastAPI | None = None,
    group: str | None = None,
    operator: OperatorAuth | None = None,
) -> ServiceApp:
    """A service that consumes ``subscribes`` in group ``imagegen-<service>`` with ``handler``,
    on FastStream with the fault model as its middleware (:mod:`.faststream_consumer`).

    Readiness: the broker answers metadata, the group assigned this member its partitions and
    no transient fault holds the consumer. ``publisher`` also sends dead letters and the
    terminal failures of poisoned jobs (ADR 0008). ``/metrics`` admits operator keys only
    (``operator``, else one built from ``settings``: see :mod:`.operator_auth`).
    """
    readiness = Readiness()
    readiness.add("kafka", kafka_metadata_check(settings.kafka_bootstrap))
    operator = operator or OperatorAuth.from_settings(settings, service)  # guards /metrics
    if http is None:
        http = health_app(service, readiness, operator)
    else:
        add_health_routes(http, service, readiness, operator)
    app = ServiceApp(service, http, readiness)
    app.on_shutdown.append(operator.close)
    if subscribes:
        consumer = FastStreamConsumer(
            settings.kafka_bootstrap,
            group or f"{settings.topic_prefix}imagegen-{service}",
            [settings.topic_prefix + t for t in subscribes],
            handler,
            publisher,
        )
        readiness.add("consumer", consumer_assigned_check(consumer))
        app.tasks.append(consumer.run)
    app.on_shutdown.append(publisher.close)
    return app


def route(
    payload_type: type[P], handler: Callable[[Envelope, P], Awaitable[None]]
) -> tuple[type[P], TypedHandler]:
    """One entry of a dispatcher table, type-checked: ``dict([route(A, on_a), route(B, on_b)])``."""
    return payload_type, handler


def dispatcher(handlers: Mapping[type[Payload], TypedHandler]) -> Handler:
    """A consumer handler that routes each payload to the handler of its type.

    Types the service does not handle are skipped (committed): a topic carries several types.
    """

    async def handle(envelope: Envelope, payload: Payload, meta: RecordMeta) -> None:
        fn = handlers.get(type(payload))
        if fn is not None:
            await fn(envelope, payload)

    return handle

"""Composition root of the pool-manager service: the only place adapters are built."""

from __future__ import annotations

import asyncio

from fastapi import Depends

from imagegen_runtime.db import make_engine
from imagegen_runtime.faults import describe, is_transient
from imagegen_runtime.health import CheckResult, Readiness, health_app
from imagegen_runtime.kafka import KafkaPublisher, ReplayingConsumer
from imagegen_runtime.operator_auth import OperatorAuth, PgKeyRoles
from imagegen_runtime.publishing import Publisher
from imagegen_runtime.service import ServiceApp
from imagegen_runtime.standard import database_check, kafka_metadata_check
from imagegen_runtime.waiting import sleep_or_stop

from .adapters.backlog import KafkaBacklog
from .adapters.catalog import load_models
from .adapters.fleet_store import PgFleetStore
from .config import DEAD_LETTER_TOPICS, SERVICE, SUBSCRIBES, PoolManagerSettings
from .domain.fleet import project
from .service_layer.backlog import collect_loop
from .service_layer.planner import Planner, PlannerConfig
from .service_layer.pool import FleetStore, PoolManager


def bootstrap(
    settings: PoolManagerSettings,
    *,
    publisher: Publisher | None = None,
    store: FleetStore | None = None,
) -> ServiceApp:
    kafka = KafkaPublisher(
        settings.kafka_bootstrap, f"{SERVICE}-{settings.instance_id}", settings.topic_prefix
    )
    publisher = publisher or kafka
    engine = make_engine(settings.database_url, pool_size=2)
    if store is None:
        store = PgFleetStore(engine)
    pool = PoolManager(publisher, settings.heartbeat_timeout_s, store=store)
    planner = Planner(
        publisher,
        pool.fleet,
        pool.demand,
        load_models(settings.models_dir),
        PlannerConfig(
            plan_every_s=settings.plan_every_s,
            load_timeout_s=settings.load_timeout_s,
            autoscale_pool_window_s=settings.autoscale_pool_window_s,
            fresh_s=settings.heartbeat_timeout_s,
        ),
    )
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

    async def fleet_saved() -> CheckResult:
        return pool.store_health()

    readiness.add("fleet_store", fleet_saved)

    async def sweeps(stop: asyncio.Event) -> None:
        await create_tables(stop)
        await pool.sweep_loop(
            consumer.caught_up, stop, planner=planner if settings.pool == "ours" else None
        )

    async def create_tables(stop: asyncio.Event) -> None:
        """The projection's table, made once; a database that is away is waited out."""
        create = getattr(store, "create_tables", None)
        while create is not None and not stop.is_set():
            try:
                await create()
                return
            except Exception as exc:
                if not is_transient(exc):
                    raise
                pool.store_error = describe(exc)
                await sleep_or_stop(stop, 1.0)

    operator = OperatorAuth(PgKeyRoles(engine))  # keys live in the same database
    http = health_app(SERVICE, readiness, operator)

    @http.get("/v1/workers", dependencies=[Depends(operator)])
    async def workers() -> list[dict[str, object]]:
        """The fleet projection (``domain.fleet.project``): state, memory, models, jobs."""
        return list(project(pool.fleet).values())

    async def close_engine() -> None:
        await engine.dispose()

    # The cluster's dead-letter sizes and consumer lag, measured here for every service (ADR 0810).
    backlog = KafkaBacklog(settings.kafka_bootstrap, settings.topic_prefix, DEAD_LETTER_TOPICS)

    async def backlog_gauges(stop: asyncio.Event) -> None:
        await collect_loop(backlog, stop, settings.backlog_every_s)

    return ServiceApp(
        SERVICE,
        http,
        readiness,
        tasks=[consumer.run, sweeps, backlog_gauges],
        on_shutdown=[kafka.close, dispose, close_engine],
    )

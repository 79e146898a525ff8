"""Composition root of the scheduler service: the only place adapters are built."""

from __future__ import annotations

import asyncio

from fastapi import Depends

from imagegen_runtime.health import Readiness, health_app
from imagegen_runtime.kafka import KafkaPublisher, ReplayingConsumer
from imagegen_runtime.operator_auth import OperatorAuth
from imagegen_runtime.publishing import Publisher
from imagegen_runtime.service import ServiceApp
from imagegen_runtime.standard import kafka_metadata_check

from .adapters.catalog import load_catalog
from .config import SERVICE, SUBSCRIBES, SchedulerSettings
from .domain import SchedulerConfig, Tier
from .domain.faults import Deadlines
from .service_layer.scheduling import Scheduler
from .service_layer.usage import GROUP as USAGE_GROUP
from .service_layer.usage import USAGE_TOPICS, UsageMeter


def scheduler_config(settings: SchedulerSettings) -> SchedulerConfig:
    """The policy's knobs the service's settings set (the rest keep the policy's defaults)."""
    return SchedulerConfig(
        preemption=settings.preemption,
        user_rotation=settings.user_rotation,
        guard_switches=settings.guard_switches,
    )


def bootstrap(settings: SchedulerSettings, *, publisher: Publisher | None = None) -> ServiceApp:
    kafka = KafkaPublisher(
        settings.kafka_bootstrap, f"{SERVICE}-{settings.instance_id}", settings.topic_prefix
    )
    scheduler = Scheduler(
        publisher or kafka,
        load_catalog(settings.models_dir),
        max_attempts=settings.max_attempts,
        worker_silent_after_s=settings.worker_silent_after_s,
        config=scheduler_config(settings),
        deadlines=Deadlines(
            queue_s={
                Tier.TURBO: settings.queue_deadline_turbo_s,
                Tier.FAST: settings.queue_deadline_fast_s,
                Tier.RELAX: settings.queue_deadline_relax_s,
            },
            run_s=settings.run_deadline_s,
        ),
        admission_grace_s=settings.admission_grace_s,
        admission_fleet_window_s=settings.admission_fleet_window_s,
        eta_every_s=settings.eta_every_s,
    )
    consumer = ReplayingConsumer(
        settings.kafka_bootstrap,
        [settings.topic_prefix + t for t in SUBSCRIBES],
        scheduler.on_event,
        kafka,
        f"{settings.topic_prefix}imagegen-scheduler",
        after_batch=scheduler.after_batch,
    )
    # The usage meter (ADR 0630): its own replaying consumer and group, beside the scheduler's.
    meter = UsageMeter(publisher or kafka)
    meter_consumer = ReplayingConsumer(
        settings.kafka_bootstrap,
        [settings.topic_prefix + t for t in USAGE_TOPICS],
        meter.on_event,
        kafka,
        settings.topic_prefix + USAGE_GROUP,
        after_batch=meter.flush,
    )

    async def meter_ticks(stop: asyncio.Event) -> None:
        await meter.run(meter_consumer.caught_up, stop)

    readiness = Readiness()
    readiness.add("kafka", kafka_metadata_check(settings.kafka_bootstrap))

    async def live() -> bool:
        return scheduler.live

    readiness.add("caught_up", live)

    async def ticks(stop: asyncio.Event) -> None:
        await scheduler.tick_loop(consumer.caught_up, stop)

    operator = OperatorAuth.from_settings(settings, SERVICE)
    http = health_app(SERVICE, readiness, operator)

    @http.get("/v1/queues", dependencies=[Depends(operator)])
    async def queues() -> dict[str, object]:
        """Queued and running jobs per tier, and idle workers (operator view)."""
        st = scheduler.state
        return {
            "queued": {t.value: len(q) for t, q in st.queues.items()},
            "running": {t.value: n for t, n in st.running_by_tier.items()},
            "idle_workers": sorted(st.idle),
            "workers": sorted(st.workers),
        }

    return ServiceApp(
        SERVICE,
        http,
        readiness,
        tasks=[consumer.run, ticks, meter_consumer.run, meter_ticks],
        on_shutdown=[kafka.close, operator.close],
    )

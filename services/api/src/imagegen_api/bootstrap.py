"""Composition root of the api service: the only place adapters are built."""

from __future__ import annotations

from fastapi import FastAPI

from imagegen_runtime.health import Readiness, add_health_routes
from imagegen_runtime.kafka import KafkaPublisher
from imagegen_runtime.service import ServiceApp
from imagegen_runtime.standard import database_check, kafka_metadata_check

from .config import SERVICE, ApiSettings


def bootstrap(settings: ApiSettings, *, publisher: KafkaPublisher | None = None) -> ServiceApp:
    publisher = publisher or KafkaPublisher(
        settings.kafka_bootstrap, f"{SERVICE}-{settings.instance_id}", settings.topic_prefix
    )
    readiness = Readiness()
    readiness.add("kafka", kafka_metadata_check(settings.kafka_bootstrap))  # type: ignore[arg-type]
    check, dispose = database_check(settings.database_url)
    readiness.add("postgres", check)  # type: ignore[arg-type]
    http = FastAPI(title="imagegen API", version="0.1.0")
    add_health_routes(http, SERVICE, readiness)
    app = ServiceApp(SERVICE, http, readiness, on_shutdown=[publisher.close, dispose])  # type: ignore[list-item]
    return app

"""Composition root of the api service: the only place adapters are built."""

from __future__ import annotations

from fastapi import FastAPI

from imagegen_runtime.db import make_engine
from imagegen_runtime.kafka import KafkaPublisher
from imagegen_runtime.publishing import Publisher
from imagegen_runtime.service import ServiceApp
from imagegen_runtime.standard import consumer_service

from .adapters.accounts import PgAccounts
from .adapters.catalog import load_catalog
from .adapters.files import LocalFileStore
from .adapters.jobstore import PgJobStore, projector_group
from .config import SERVICE, SUBSCRIBES, ApiSettings
from .entrypoints.http import Deps, mount
from .projections.jobs import projector


def bootstrap(settings: ApiSettings, *, publisher: Publisher | None = None) -> ServiceApp:
    kafka = KafkaPublisher(
        settings.kafka_bootstrap, f"{SERVICE}-{settings.instance_id}", settings.topic_prefix
    )
    publisher = publisher or kafka
    engine = make_engine(settings.database_url, pool_size=10)
    accounts, jobs = PgAccounts(engine), PgJobStore(engine)
    deps = Deps(
        accounts=accounts,
        jobs=jobs,
        publisher=publisher,
        catalog=load_catalog(settings.models_dir),
        default_model=settings.default_model,
        public_base_url=settings.public_base_url,
        openai_timeout_s=settings.openai_timeout_s,
        files=LocalFileStore(settings.files_dir),
        max_control_image_bytes=settings.max_control_image_bytes,
    )

    async def lifespan(app: FastAPI):  # type: ignore[no-untyped-def]
        await accounts.create_tables()
        await jobs.create()
        yield
        await engine.dispose()

    http = FastAPI(title="imagegen API", version="0.1.0", lifespan=lifespan)
    mount(http, deps)
    app = consumer_service(
        settings,
        SERVICE,
        SUBSCRIBES,
        projector(jobs),
        kafka,
        http=http,
        group=projector_group(settings.topic_prefix),
    )

    async def database() -> bool:
        return await jobs.get("readiness-probe") is None

    app.readiness.add("postgres", database)
    return app

"""Composition root of the api service: the only place adapters are built."""

from __future__ import annotations

from fastapi import FastAPI

from imagegen_runtime.db import make_engine
from imagegen_runtime.kafka import KafkaPublisher
from imagegen_runtime.objectstore import FILES_PREFIX, object_store, sweeper, sweeper_task
from imagegen_runtime.operator_auth import OperatorAuth, PgKeyRoles, mount_operator_docs
from imagegen_runtime.publishing import Publisher
from imagegen_runtime.service import ServiceApp
from imagegen_runtime.standard import consumer_service
from imagegen_runtime.tracing import FASTAPI_TELEMETRY

from .adapters.accounts import PgAccounts
from .adapters.catalog import load_catalog
from .adapters.fastpath import FastAccounts
from .adapters.files import LocalFileStore, S3FileStore
from .adapters.jobstore import PgJobStore, projector_group
from .adapters.limiter import PgLimiter
from .adapters.opsreads import KafkaDlq, PgOpsReads
from .config import PROJECTOR, SERVICE, SUBSCRIBES, ApiSettings
from .domain.limits import with_overrides
from .entrypoints.http import Deps, mount, ops
from .projections.jobs import projector


def bootstrap(settings: ApiSettings, *, publisher: Publisher | None = None) -> ServiceApp:
    kafka = KafkaPublisher(
        settings.kafka_bootstrap, f"{SERVICE}-{settings.instance_id}", settings.topic_prefix
    )
    publisher = publisher or kafka
    engine = make_engine(settings.database_url, pool_size=10)
    objects = object_store(settings.storage)  # None: local folders (docs/storage.md)
    accounts, jobs = PgAccounts(engine), PgJobStore(engine)
    # The admission path's own engines: every use is a group commit run through
    # retry_if_disconnected, so they skip the per-checkout ping (ADR 0641). Claims and marks
    # are one statement each: autocommit, no begin/commit round trips.
    url = settings.database_url
    claims = make_engine(url, pool_size=5, pre_ping=False, autocommit=True)
    marks = make_engine(url, pool_size=2, async_commit=True, pre_ping=False, autocommit=True)
    cheap = make_engine(url, pool_size=5, async_commit=True, pre_ping=False)  # ADR 0640
    limiter = PgLimiter(cheap, jobs.jobs.name)
    deps = Deps(
        # cached key lookups, group-committed claims and marks (ADR 0640)
        accounts=FastAccounts(accounts, claims, marks_engine=marks),
        jobs=jobs,
        publisher=publisher,
        catalog=load_catalog(settings.models_dir),
        default_model=settings.default_model,
        public_base_url=settings.public_base_url,
        openai_timeout_s=settings.openai_timeout_s,
        files=LocalFileStore(settings.files_dir) if objects is None else S3FileStore(objects),
        max_control_image_bytes=settings.max_control_image_bytes,
        limiter=limiter,
        limits=with_overrides(settings.limits),
    )

    async def lifespan(app: FastAPI):  # type: ignore[no-untyped-def]
        await accounts.create_tables()
        await jobs.create()
        await limiter.create_tables()
        yield
        await engine.dispose()
        await claims.dispose()
        await marks.dispose()
        await cheap.dispose()

    operator = OperatorAuth(PgKeyRoles(engine))  # /metrics; /docs unless public_docs
    public = settings.public_docs
    http = FastAPI(
        title="imagegen API",
        version="0.1.0",
        lifespan=lifespan,
        docs_url="/docs" if public else None,
        redoc_url="/redoc" if public else None,
        openapi_url="/openapi.json" if public else None,
        telemetry=FASTAPI_TELEMETRY,
    )
    if not public:
        mount_operator_docs(http, operator)
    mount(http, deps)
    ops.mount(  # /ops, the operator page (ADR 0820)
        http,
        ops.OpsDeps(
            reads=PgOpsReads(jobs),
            dlq=KafkaDlq(settings.kafka_bootstrap, settings.topic_prefix),
            scheduler_url=settings.scheduler_url,
            pool_manager_url=settings.pool_manager_url,
        ),
    )
    # the projector runs here, or in its own process (ADR 0641)
    app = _jobs_service(settings, SERVICE, settings.run_projector, jobs, kafka, http, operator)
    # Retention: control images not uploaded again for their limit go (docs/storage.md).
    uploads = sweeper(objects, settings.files_dir, FILES_PREFIX, settings.retention_uploads_s)
    app.tasks.append(sweeper_task("uploads", [uploads], settings.retention_sweep_interval_s))
    return app


def bootstrap_projector(settings: ApiSettings) -> ServiceApp:
    """The job projector on its own (``python -m imagegen_api.projector``, ADR 0641): the same
    consumer group and tables as the API's in-process projector, and health routes only."""
    kafka = KafkaPublisher(
        settings.kafka_bootstrap, f"{PROJECTOR}-{settings.instance_id}", settings.topic_prefix
    )
    engine = make_engine(settings.database_url, pool_size=2)
    jobs = PgJobStore(engine)

    async def lifespan(app: FastAPI):  # type: ignore[no-untyped-def]
        await jobs.create()
        yield
        await engine.dispose()

    operator = OperatorAuth(PgKeyRoles(engine))  # /metrics
    http = FastAPI(
        title="imagegen api projector",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
        telemetry=FASTAPI_TELEMETRY,
    )
    return _jobs_service(settings, PROJECTOR, True, jobs, kafka, http, operator)


def _jobs_service(
    settings: ApiSettings,
    service: str,
    projects: bool,
    jobs: PgJobStore,
    kafka: KafkaPublisher,
    http: FastAPI,
    operator: OperatorAuth,
) -> ServiceApp:
    """``http`` as a service ready once the job tables answer; with ``projects``, it also
    consumes the job topics into them (the job projector's group)."""
    app = consumer_service(
        settings,
        service,
        SUBSCRIBES if projects else (),
        projector(jobs),
        kafka,
        http=http,
        group=projector_group(settings.topic_prefix),
        operator=operator,
    )

    async def database() -> bool:
        return await jobs.get("readiness-probe") is None

    app.readiness.add("postgres", database)
    return app

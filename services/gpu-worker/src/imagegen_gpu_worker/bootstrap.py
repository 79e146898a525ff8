"""Composition root of the gpu-worker service: the only place adapters are built."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from imagegen_runtime.faststream_consumer import FastStreamConsumer
from imagegen_runtime.kafka import KafkaPublisher
from imagegen_runtime.objectstore import (
    BLOBS_PREFIX,
    by_suffix,
    object_store,
    sweeper,
    sweeper_task,
)
from imagegen_runtime.service import ServiceApp
from imagegen_runtime.standard import consumer_assigned_check, consumer_service, dispatcher
from imagegen_schemas import jobs as ev

from .adapters.admission import BudgetAdmission
from .adapters.blobs import (
    BlobStore,
    LocalBlobStore,
    S3BlobStore,
    S3ControlFiles,
    StorageUnavailable,
)
from .adapters.diffusers_runner import DiffusersRunner
from .adapters.memory import read_memory, within_budget
from .adapters.registry import Integrity, TrustStore, families
from .config import SERVICE, GpuWorkerSettings
from .service_layer.commands import ModelHost, PoolCommands
from .service_layer.heartbeat import heartbeat, heartbeat_loop, loaded_models, premerged_loras
from .service_layer.integrity import IntegrityChecker
from .service_layer.residency import Cause
from .service_layer.worker import Runner, Worker, WorkerState

log = logging.getLogger(__name__)


def blob_store_check(blobs: BlobStore) -> Callable[[], Awaitable[bool]]:
    """A readiness check that fails while ``blobs`` cannot be written; the reason is logged
    when the verdict changes (``/readyz`` shows only the check's name)."""
    last: list[str | None] = [None]  # the reason of the last failure, None while writable

    async def check() -> bool:
        try:
            await asyncio.to_thread(blobs.check_writable)
        except StorageUnavailable as exc:
            if last[0] != str(exc):
                log.warning(
                    "not ready: the blob store cannot be written", extra={"reason": str(exc)}
                )
            last[0] = str(exc)
            return False
        if last[0] is not None:
            log.info("the blob store can be written again")
        last[0] = None
        return True

    return check


def bootstrap(
    settings: GpuWorkerSettings,
    *,
    publisher: KafkaPublisher | None = None,
    runner: Runner | None = None,
    blobs: BlobStore | None = None,
    models: ModelHost | None = None,
) -> ServiceApp:
    publisher = publisher or KafkaPublisher(
        settings.kafka_bootstrap, f"{SERVICE}-{settings.worker_id}", settings.topic_prefix
    )
    budget_mb = settings.model_memory_budget_mb
    objects = object_store(settings.storage)  # None: local folders (docs/storage.md)
    diffusers_runner = DiffusersRunner(
        settings.models_dir,
        settings.device,
        None if budget_mb is None else budget_mb * 2**20,
        ram_cache_bytes=settings.ram_cache_mb * 2**20,  # the RAM tier (ADR 0705)
        accel=settings.accel_settings(),  # dtype, attention, compile, VAE tiling (ADR 0709)
        premerge=settings.premerge_settings(),  # top LoRAs of tier-1 models fused (ADR 0704)
        # Model file integrity: trust records kept in integrity_dir (ADR 0707).
        integrity=Integrity(TrustStore(settings.integrity_dir)),
        # control images of ControlNet jobs (ADR 0706): the api's folder, or files/ of the bucket
        files_dir=settings.files_dir if objects is None else S3ControlFiles(objects),
    )
    if blobs is None:
        blobs = LocalBlobStore(settings.blob_dir) if objects is None else S3BlobStore(objects)
    worker = Worker(WorkerState(settings.worker_id), runner or diffusers_runner, blobs, publisher)
    if runner is None:  # the budget model admits each run, OOMs retried split (ADR 0708)
        worker.memory = BudgetAdmission(diffusers_runner)
    # Residency facts (loads, evictions) go from the runner to imagegen.workers.models through
    # the worker's reporter, in the order they happen (ADR 0702).
    diffusers_runner.on_change = worker.reporter.record
    host = models or diffusers_runner  # what pool commands act on (a fake in tests)
    host.on_change = worker.reporter.record
    commands = PoolCommands(settings.worker_id, host, worker.reporter)
    # The periodic integrity check (ADR 0707): hashes every registered model's files in the
    # background and repairs what does not match; it shares the runner's trust records.
    checker = IntegrityChecker(
        settings.models_dir,
        diffusers_runner.integrity,
        diffusers_runner,
        worker.reporter,
        interval_s=settings.integrity_interval_s,
        bytes_per_s=settings.integrity_check_mb_s * 1e6,
    )

    async def after_run() -> None:
        await commands.after_run()  # evictions deferred while the run used their model
        await checker.after_run()  # models found corrupted while the run used them

    worker.after_run = after_run
    prefix = settings.topic_prefix
    # Assignments are consumed by this worker's own group: every worker sees every assignment
    # and runs only its own. Cancellations and preemption requests come on a second loop so they
    # are seen mid-run (the first loop is busy with the run).
    app = consumer_service(
        settings,
        SERVICE,
        ("imagegen.jobs.scheduled",),
        dispatcher({ev.JobScheduled: worker.on_assignment}),
        publisher,
        group=f"{prefix}imagegen-worker-{settings.worker_id}",
    )
    control = FastStreamConsumer(
        settings.kafka_bootstrap,
        f"{prefix}imagegen-worker-{settings.worker_id}-control",
        [prefix + "imagegen.jobs.requested", prefix + "imagegen.jobs.scheduled"],
        dispatcher(
            {
                ev.CancellationRequested: worker.on_cancel,
                ev.PreemptionRequested: worker.on_preempt,
            }
        ),
        publisher,
    )
    app.tasks.append(control.run)
    app.readiness.add("control", consumer_assigned_check(control))
    # The pool-manager's commands (LoadModel, EvictModel, DefragmentMemory), keyed by worker
    # id, in this worker's own group; those for other workers are skipped.
    pool = FastStreamConsumer(
        settings.kafka_bootstrap,
        f"{prefix}imagegen-worker-{settings.worker_id}-commands",
        [prefix + "imagegen.pool.commands"],
        commands.handle,
        publisher,
    )
    app.tasks.append(pool.run)
    app.readiness.add("pool_commands", consumer_assigned_check(pool))
    # Not ready while no image could be stored; jobs that arrive meanwhile fail their attempt
    # with storage_unavailable and are re-queued (service_layer/worker.py).
    app.readiness.add("blob_store_writable", blob_store_check(blobs))

    # The families this worker announces: those of the models registered in its models_dir,
    # read once, at start (a model added later is announced after a restart).
    capabilities = families(settings.models_dir)
    log.info("model families registered", extra={"capabilities": list(capabilities)})

    def beat():  # type: ignore[no-untyped-def]
        held = diffusers_runner.resident()
        return heartbeat(
            settings.worker_id,
            # The runner's budget (on CUDA without a setting, 90% of the device): what its
            # admission checks jobs against, so the scheduler routes by the same number.
            within_budget(
                read_memory(settings.device),
                diffusers_runner.budget_bytes(),
                sum(b for _, b in diffusers_runner.held()),  # models and ControlNets
            ),
            settings.heartbeat_interval_s,
            worker.state.running_job,
            loaded_models(
                held,
                diffusers_runner.resident_loras(),
                diffusers_runner.resident_controlnets(),
            ),
            capabilities,
            premerged_loras(diffusers_runner.premerged()),  # ADR 0704's top-5 pre-merge
            tuple(diffusers_runner.pins()),  # ADR 0711
        )

    async def beats(stop: asyncio.Event) -> None:
        await heartbeat_loop(publisher, beat, settings.heartbeat_interval_s, stop)

    warmed = asyncio.Event()

    async def warm(stop: asyncio.Event) -> None:
        """Import diffusers (~10 s) and preload the default model before taking work."""
        await worker.reporter.in_thread(
            diffusers_runner.warm_up, settings.preload_model, cause=Cause()
        )
        warmed.set()

    async def is_warm() -> bool:
        return warmed.is_set()

    app.readiness.add("warm", is_warm)
    app.tasks.extend([beats, warm, checker.run])
    # Retention (docs/storage.md): generated images and pause states older than their limit go.
    retention = [
        sweeper(objects, settings.blob_dir, BLOBS_PREFIX, max_age, by_suffix(suffix))
        for max_age, suffix in (
            (settings.retention_images_s, ".png"),
            (settings.retention_pause_states_s, ".pt"),
        )
    ]
    app.tasks.append(sweeper_task("blobs", retention, settings.retention_sweep_interval_s))
    return app

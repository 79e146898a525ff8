"""With real Kafka: the scheduler service pauses a relax job for a turbo job and resumes it.

A relax job runs on the only worker; a turbo job arrives and waits past its patience with the
relax job far from done: the scheduler publishes PreemptionRequested. The test, acting as the
worker, publishes GenerationPaused; the scheduler gives the worker to the turbo job, and once
that is done re-assigns the relax job with ``resume`` carrying the saved state. The scheduler's
clock runs ahead of the wall clock by what the test sets (no waiting for patience to pass).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable

import pytest
from confluent_kafka import Consumer, KafkaException, TopicPartition

from imagegen_runtime.kafka import KafkaPublisher, ReplayingConsumer, ensure_topics
from imagegen_scheduler.config import SUBSCRIBES
from imagegen_scheduler.domain import ModelCatalog, ModelSpec, SchedulerConfig
from imagegen_scheduler.service_layer.scheduling import Scheduler
from imagegen_schemas import TOPICS, Envelope, GenerationParams, Payload, Plan, Tier
from imagegen_schemas import jobs as ev
from imagegen_schemas.workers import WorkerHeartbeat, WorkerStatus

pytestmark = pytest.mark.integration
# A 30-40 s cold load: the relax job is expected to run far past the turbo job's 15 s target.
CATALOG = ModelCatalog(
    models={"m": ModelSpec("m", "sd15", 0.01, (30.0, 40.0), 0.2, 0.05)}, adapters={}
)
PARAMS = GenerationParams(
    prompt="p", model="m", width=512, height=512, steps=30, guidance_scale=5, seed=1
)
SHA = "cd" * 32
TIMEOUT_S = 30.0


class Watch:
    """Everything published on the assignments topic, with a wait for a condition on it."""

    def __init__(self) -> None:
        self.seen: list[Payload] = []
        self.changed = asyncio.Event()

    async def on(self, env: Envelope, payload: Payload, meta: object, live: bool) -> None:
        self.seen.append(payload)
        self.changed.set()

    async def until(self, found: Callable[[Payload], bool]) -> Payload:
        deadline = time.monotonic() + TIMEOUT_S
        while True:
            for p in self.seen:
                if found(p):
                    return p
            self.changed.clear()
            await asyncio.wait_for(self.changed.wait(), max(0.01, deadline - time.monotonic()))


def topics_ready(bootstrap: str, prefix: str) -> None:
    """Create the catalog's topics under ``prefix`` and return once the watermarks of every
    partition can be read (just after creation the broker answers "not leader" for a while)."""
    ensure_topics(bootstrap, prefix)
    probe = Consumer({"bootstrap.servers": bootstrap, "group.id": f"{prefix}probe"})
    pending = [TopicPartition(prefix + t.name, p) for t in TOPICS for p in range(t.partitions)]
    deadline = time.monotonic() + TIMEOUT_S
    try:
        while pending:
            try:
                probe.get_watermark_offsets(pending[0], timeout=5)
                pending.pop(0)
            except KafkaException:
                if time.monotonic() > deadline:
                    raise
    finally:
        probe.close()


async def test_scheduler_preempts_relax_for_turbo_and_resumes_it_with_its_state(infra) -> None:  # type: ignore[no-untyped-def]
    prefix = f"p{uuid.uuid4().hex[:8]}."  # topics of its own: no other test's workers or jobs
    topics_ready(infra.kafka_bootstrap, prefix)
    pub = KafkaPublisher(infra.kafka_bootstrap, "preempt-test", prefix)
    ahead = [0.0]
    scheduler = Scheduler(
        pub,
        CATALOG,
        clock=lambda: time.time() + ahead[0],
        config=SchedulerConfig(relax_reserve_fraction=0.0),
    )
    stop = asyncio.Event()
    consumer = ReplayingConsumer(
        infra.kafka_bootstrap,
        [prefix + t for t in SUBSCRIBES],
        scheduler.on_event,
        pub,
        f"{prefix}scheduler",
        after_batch=scheduler.after_batch,
    )
    watch = Watch()
    reader = ReplayingConsumer(
        infra.kafka_bootstrap,
        [prefix + "imagegen.jobs.scheduled"],
        watch.on,
        pub,
        f"{prefix}worker",
    )
    tasks = [
        asyncio.create_task(consumer.run(stop)),
        asyncio.create_task(reader.run(stop)),
        asyncio.create_task(scheduler.tick_loop(consumer.caught_up, stop, every_s=0.1)),
    ]
    try:
        await pub.publish(
            WorkerHeartbeat(
                worker_id="w1",
                status=WorkerStatus.IDLE,
                gpu_type="cpu",
                memory_total_bytes=16 * 10**9,
                memory_free_bytes=16 * 10**9,
                capabilities=("sd15",),
            ),
            key="w1",
        )
        await pub.publish(
            ev.GenerationRequested(
                job_id="relax", user_id="u1", plan=Plan.FREE, tier=Tier.RELAX, params=PARAMS
            ),
            key="relax",
        )
        await pub.publish(ev.PromptModerated(job_id="relax", verdict="allowed"), key="relax")
        relax = await watch.until(lambda p: isinstance(p, ev.JobScheduled) and p.job_id == "relax")
        assert isinstance(relax, ev.JobScheduled) and relax.resume is None

        await pub.publish(
            ev.GenerationRequested(
                job_id="turbo", user_id="u2", plan=Plan.TURBO, tier=Tier.TURBO, params=PARAMS
            ),
            key="turbo",
        )
        await pub.publish(ev.PromptModerated(job_id="turbo", verdict="allowed"), key="turbo")
        ahead[0] = 10.0  # the turbo job has now waited 10 s, past its 5 s patience
        request = await watch.until(lambda p: isinstance(p, ev.PreemptionRequested))
        assert isinstance(request, ev.PreemptionRequested)
        assert (request.job_id, request.worker_id, request.fencing_token, request.for_job_id) == (
            "relax",
            "w1",
            relax.fencing_token,
            "turbo",
        )

        await pub.publish(
            ev.GenerationPaused(  # the worker paused it after 12 of 30 steps
                job_id="relax",
                worker_id="w1",
                fencing_token=relax.fencing_token,
                steps_done=12,
                total_steps=30,
                state_uri="file:///blobs/relax/1-paused-12.pt",
                state_sha256=SHA,
            ),
            key="relax",
        )
        turbo = await watch.until(lambda p: isinstance(p, ev.JobScheduled) and p.job_id == "turbo")
        assert isinstance(turbo, ev.JobScheduled) and turbo.worker_id == "w1"

        await pub.publish(
            ev.ImageGenerated(
                job_id="turbo", worker_id="w1", fencing_token=turbo.fencing_token, images=()
            ),
            key="turbo",
        )
        again = await watch.until(
            lambda p: isinstance(p, ev.JobScheduled)
            and p.job_id == "relax"
            and p.resume is not None
        )
        assert isinstance(again, ev.JobScheduled) and again.resume is not None
        assert again.worker_id == "w1" and again.fencing_token > turbo.fencing_token
        assert (again.resume.steps_done, again.resume.state_uri, again.resume.state_sha256) == (
            12,
            "file:///blobs/relax/1-paused-12.pt",
            SHA,
        )
        assert again.attempt == relax.attempt, "a pause is not a failed attempt"
        assert sum(isinstance(p, ev.PreemptionRequested) for p in watch.seen) == 1
    finally:
        stop.set()
        await asyncio.gather(*tasks)
        await pub.close()

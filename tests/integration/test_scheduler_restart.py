"""With real Kafka: a scheduler restarted in the middle of 500 queued jobs loses none and
assigns none twice."""

from __future__ import annotations

import asyncio
import time
from collections import Counter

import pytest

from imagegen.replay import high_watermarks, read
from imagegen_runtime.kafka import KafkaPublisher, ReplayingConsumer
from imagegen_scheduler.domain import ModelCatalog, ModelSpec
from imagegen_scheduler.service_layer.scheduling import Scheduler
from imagegen_schemas import Envelope, GenerationParams, Payload, Plan, Tier
from imagegen_schemas import jobs as ev
from imagegen_schemas.workers import WorkerHeartbeat, WorkerStatus

pytestmark = pytest.mark.integration
N_JOBS, N_WORKERS = 500, 8
CATALOG = ModelCatalog(
    models={"m": ModelSpec("m", "sd15", 1.0, (0.1, 0.2), 0.01, 0.05)}, adapters={}
)
PARAMS = GenerationParams(
    prompt="p", model="m", width=64, height=64, steps=1, guidance_scale=5, seed=1
)
TOPICS = (
    "imagegen.jobs.requested",
    "imagegen.jobs.moderated",
    "imagegen.jobs.scheduled",
    "imagegen.jobs.generated",
    "imagegen.jobs.ended",
    "imagegen.workers.heartbeats",
)


class RunningScheduler:
    """The service's scheduler (same classes as its bootstrap) on the test's topics."""

    def __init__(self, bootstrap: str, prefix: str, pub: KafkaPublisher, name: str) -> None:
        self.scheduler = Scheduler(pub, CATALOG)
        self.consumer = ReplayingConsumer(
            bootstrap,
            [prefix + t for t in TOPICS],
            self.scheduler.on_event,
            pub,
            f"{prefix}{name}",
            after_batch=self.scheduler.after_batch,
        )
        self.stop = asyncio.Event()
        self.tasks = [
            asyncio.create_task(self.consumer.run(self.stop)),
            asyncio.create_task(self.scheduler.tick_loop(self.consumer.caught_up, self.stop)),
        ]

    async def halt(self) -> None:
        self.stop.set()
        await asyncio.gather(*self.tasks)


async def fake_workers(
    bootstrap: str, prefix: str, pub: KafkaPublisher, stop: asyncio.Event, finished: list[str]
) -> None:
    """Workers that finish each assignment at once (reading the scheduled topic)."""

    async def on(env: Envelope, payload: Payload, meta: object, live: bool) -> None:
        if isinstance(payload, ev.JobScheduled) and payload.job_id not in finished:
            finished.append(payload.job_id)
            await pub.publish(
                ev.ImageGenerated(
                    job_id=payload.job_id,
                    worker_id=payload.worker_id,
                    fencing_token=payload.fencing_token,
                    images=(),
                ),
                key=payload.job_id,
            )

    reader = ReplayingConsumer(
        bootstrap, [prefix + "imagegen.jobs.scheduled"], on, pub, f"{prefix}workers"
    )
    await reader.run(stop)


async def test_restart_mid_queue_loses_none_and_assigns_none_twice(infra, topics) -> None:
    pub = KafkaPublisher(infra.kafka_bootstrap, "restart-test", topics)
    await asyncio.gather(
        *(
            pub.publish(
                WorkerHeartbeat(
                    worker_id=f"w{w}",
                    status=WorkerStatus.IDLE,
                    gpu_type="cpu",
                    memory_total_bytes=16 * 10**9,
                    memory_free_bytes=16 * 10**9,
                    capabilities=("sd15",),
                ),
                key=f"w{w}",
            )
            for w in range(N_WORKERS)
        )
    )
    tiers = (Tier.TURBO, Tier.FAST, Tier.RELAX)
    futs = []
    for i in range(N_JOBS):
        job = f"r-{topics}{i}"
        futs.append(
            pub.publish(
                ev.GenerationRequested(
                    job_id=job, user_id=f"u{i % 7}", plan=Plan.PRO, tier=tiers[i % 3], params=PARAMS
                ),
                key=job,
            )
        )
        futs.append(pub.publish(ev.PromptModerated(job_id=job, verdict="allowed"), key=job))
    await asyncio.gather(*futs)

    finished: list[str] = []
    workers_stop = asyncio.Event()
    workers = asyncio.create_task(
        fake_workers(infra.kafka_bootstrap, topics, pub, workers_stop, finished)
    )
    first = RunningScheduler(infra.kafka_bootstrap, topics, pub, "sched-a")
    deadline = time.monotonic() + 120
    while len(finished) < N_JOBS // 3 and time.monotonic() < deadline:
        await asyncio.sleep(0.05)  # until a third of the jobs went through
    await first.halt()  # the restart: a new process rebuilds its state from the log
    assert len(finished) < N_JOBS, "the restart must happen with jobs still queued"
    second = RunningScheduler(infra.kafka_bootstrap, topics, pub, "sched-b")
    while len(finished) < N_JOBS and time.monotonic() < deadline:
        await asyncio.sleep(0.05)  # until every job went through
    await second.halt()
    workers_stop.set()
    await workers
    await pub.close()

    topic = topics + "imagegen.jobs.scheduled"
    scheduled = [
        r.envelope
        for r in read(infra.kafka_bootstrap, high_watermarks(infra.kafka_bootstrap, (topic,)))
    ]
    per_job = Counter(e.correlation_id for e in {e.event_id: e for e in scheduled}.values())
    assert len(per_job) == N_JOBS, f"{N_JOBS - len(per_job)} jobs never assigned"
    assert max(per_job.values()) == 1, (
        f"assigned twice: {[j for j, n in per_job.items() if n > 1][:5]}"
    )
    tokens = [e.data["fencing_token"] for e in scheduled]
    assert len(set(tokens)) == len(tokens), "a fencing token was issued twice"

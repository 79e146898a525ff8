"""With real Kafka: the usage meter (as the scheduler's bootstrap runs it) publishes one
UsageRecorded per ended job, a restarted meter publishes none twice, a job that ended while the
meter was down is recorded when it comes back, and ``imagegen usage`` reads the records."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections import Counter

import pytest

from imagegen.cli import main
from imagegen.replay import high_watermarks, read
from imagegen_runtime.kafka import KafkaPublisher, ReplayingConsumer
from imagegen_scheduler.service_layer.usage import (
    GROUP,
    USAGE_TOPICS,
    UsageMeter,
    usage_event_id,
)
from imagegen_schemas import GenerationParams, ImageRef, Payload, Plan, Tier
from imagegen_schemas import jobs as ev
from imagegen_schemas.workers import WorkerHeartbeat, WorkerStatus

pytestmark = pytest.mark.integration
SHA = "b" * 64
PARAMS = GenerationParams(
    prompt="p", model="m", width=64, height=64, steps=4, guidance_scale=5, seed=1, num_images=1
)


class RunningMeter:
    """The service's meter (same classes and wiring as the scheduler's bootstrap)."""

    def __init__(self, bootstrap: str, prefix: str, pub: KafkaPublisher) -> None:
        self.meter = UsageMeter(pub)
        self.consumer = ReplayingConsumer(
            bootstrap,
            [prefix + t for t in USAGE_TOPICS],
            self.meter.on_event,
            pub,
            prefix + GROUP,
            after_batch=self.meter.flush,
        )
        self.stop = asyncio.Event()
        self.tasks = [
            asyncio.create_task(self.consumer.run(self.stop)),
            asyncio.create_task(self.meter.run(self.consumer.caught_up, self.stop, every_s=0.2)),
        ]

    async def until(self, published: int, timeout_s: float = 60) -> None:
        deadline = time.monotonic() + timeout_s
        while self.meter.published < published and time.monotonic() < deadline:
            await asyncio.sleep(0.05)  # until the meter published that many records
        assert self.meter.published >= published, f"published {self.meter.published}"

    async def halt(self) -> None:
        self.stop.set()
        await asyncio.gather(*self.tasks)


def job_events(job: str, user: str, *, preempted: bool) -> list[Payload]:
    """A job that ran twice (paused on the A10G, or out of memory there) and was delivered."""
    image = ImageRef(uri="file:///x.png", sha256=SHA, width=64, height=64)
    first: Payload = (
        ev.GenerationPaused(
            job_id=job,
            worker_id="wa",
            fencing_token=1,
            steps_done=2,
            total_steps=4,
            state_uri="file:///s",
            state_sha256=SHA,
        )
        if preempted
        else ev.GenerationFailed(
            job_id=job,
            reason=ev.FailureReason.OUT_OF_MEMORY,
            terminal=False,
            worker_id="wa",
            fencing_token=1,
        )
    )
    return [
        ev.GenerationRequested(
            job_id=job, user_id=user, plan=Plan.PRO, tier=Tier.FAST, params=PARAMS
        ),
        ev.PromptModerated(job_id=job, verdict=ev.Verdict.ALLOWED),
        ev.JobScheduled(job_id=job, worker_id="wa", fencing_token=1, tier=Tier.FAST),
        first,
        ev.JobScheduled(job_id=job, worker_id="wh", fencing_token=2, attempt=2, tier=Tier.FAST),
        ev.ImageGenerated(job_id=job, worker_id="wh", fencing_token=2, images=(image,)),
        ev.ImageModerated(job_id=job, verdict=ev.Verdict.ALLOWED, fencing_token=2),
        ev.ImageDelivered(
            job_id=job,
            images=(
                ev.DeliveredImage(
                    index=0, url="http://x/0", sha256=SHA, expires_at="2030-01-01T00:00:00Z"
                ),
            ),
        ),
    ]


async def publish_all(pub: KafkaPublisher, job: str, events: list[Payload]) -> None:
    for payload in events:  # one by one: the job's order, as the services produce it
        await pub.publish(payload, key=job)


async def test_one_record_per_job_across_restarts_and_the_cli_reads_them(
    infra, topics, capsys
) -> None:
    bootstrap = infra.kafka_bootstrap
    pub = KafkaPublisher(bootstrap, "usage-test", topics)
    user = f"user-{uuid.uuid4().hex[:8]}"
    job1, job2 = f"j1-{uuid.uuid4()}", f"j2-{uuid.uuid4()}"
    for worker, gpu in (("wa", "A10G-24GB"), ("wh", "H100-80GB")):
        beat = WorkerHeartbeat(
            worker_id=worker,
            status=WorkerStatus.IDLE,
            gpu_type=gpu,
            memory_total_bytes=1,
            memory_free_bytes=1,
        )
        await pub.publish(beat, key=worker)

    first = RunningMeter(bootstrap, topics, pub)
    await publish_all(pub, job1, job_events(job1, user, preempted=True))
    await first.until(1)
    await first.halt()

    # A restart replays everything, its own record included: nothing is published again.
    second = RunningMeter(bootstrap, topics, pub)
    assert await asyncio.wait_for(second.consumer.caught_up.wait(), 60) is True
    await second.meter.flush()
    assert second.meter.published == 0
    await second.halt()

    # A job that ends while no meter runs is recorded by the next one, and only that job.
    await publish_all(pub, job2, job_events(job2, user, preempted=False))
    third = RunningMeter(bootstrap, topics, pub)
    await third.until(1)
    await third.meter.flush()
    await third.halt()
    assert third.meter.published == 1
    await pub.close()

    topic = topics + "imagegen.usage"
    found = [
        r.envelope
        for r in read(bootstrap, high_watermarks(bootstrap, (topic,)))
        if r.envelope.data["user_id"] == user
    ]
    assert Counter(e.data["job_id"] for e in found) == {job1: 1, job2: 1}
    by_job = {e.data["job_id"]: e for e in found}
    for job, outcome in ((job1, "paused"), (job2, "failed")):
        e = by_job[job]
        assert e.event_id == usage_event_id(job)
        assert e.correlation_id == user  # the record key
        d = e.data
        assert (d["state"], d["images"], d["plan"], d["tier"]) == ("delivered", 1, "pro", "fast")
        assert [a["outcome"] for a in d["attempts"]] == [outcome, "generated"]
        assert set(d["gpu_seconds_by_class"]) == {"A10G-24GB", "H100-80GB"}
        assert all(s > 0 for s in d["gpu_seconds_by_class"].values())
        assert d["gpu_seconds"] == pytest.approx(sum(d["gpu_seconds_by_class"].values()))

    # The CLI reads the same records back from the topic.
    argv = ["usage", "--user", user, "--since", "1h", "--json"]
    assert main([*argv, "--bootstrap", bootstrap, "--prefix", topics]) == 0
    report = json.loads(capsys.readouterr().out)
    assert sorted(j["job_id"] for j in report["jobs"]) == sorted([job1, job2])
    totals = report["totals"]
    assert (totals["jobs"], totals["images"]) == (2, 2)
    assert totals["by_plan"]["pro"]["jobs"] == 2 and totals["by_tier"]["fast"]["jobs"] == 2
    assert totals["gpu_seconds"] == pytest.approx(
        by_job[job1].data["gpu_seconds"] + by_job[job2].data["gpu_seconds"]
    )
    # A window that ended before the jobs holds none of them.
    earlier = ["usage", "--user", user, "--since", "2h", "--until", "1h"]
    assert main([*earlier, "--bootstrap", bootstrap, "--prefix", topics]) == 0
    assert "total: 0 jobs" in capsys.readouterr().out

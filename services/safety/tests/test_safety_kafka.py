"""Against the real local broker: the wired service turns requests and results into verdicts.

The classifiers are fakes (the models are covered by the contract tests); everything else is
real: bootstrap, the consumer group, the Kafka publisher, commit after the effect.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer
from safety_testkit import envelope_of, generated, png, requested, store

from imagegen_runtime.kafka import KafkaPublisher, ensure_topics
from imagegen_runtime.service import run_until
from imagegen_safety.adapters.fakes import FakeImageClassifier, FakePromptClassifier
from imagegen_safety.bootstrap import bootstrap
from imagegen_safety.config import SafetySettings
from imagegen_schemas import Envelope, parse
from imagegen_schemas.jobs import AssignmentRevoked, ImageModerated, PromptModerated, Verdict

pytestmark = pytest.mark.integration


def read_job(
    bootstrap_servers: str, topic: str, job_id: str, expect: int, timeout: float = 60
) -> list[Envelope]:
    """The records of ``job_id`` on ``topic`` from offset 0 (stops at ``expect``)."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap_servers,
            "group.id": f"reader-{uuid.uuid4()}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    consumer.subscribe([topic])
    out: list[Envelope] = []
    deadline = time.monotonic() + timeout
    while len(out) < expect and time.monotonic() < deadline:
        msg = consumer.poll(0.5)
        if msg is not None and not msg.error() and msg.key() == job_id.encode():
            env = Envelope.from_json(msg.value())  # other tests share the session's topics
            if env.correlation_id == job_id:
                out.append(env)
    consumer.close()
    return out


async def test_requests_and_results_become_verdicts_once_per_cause(
    infra: Any,
    topics: str,
    tmp_path: Path,
) -> None:
    # Topics of its own: the session's shared topics hold other tests' records (e.g. results
    # with no images, which this service rightly refuses, slowly, with retries).
    topics = f"{topics}safety{uuid.uuid4().hex[:6]}."
    ensure_topics(infra.kafka_bootstrap, topics)
    settings = SafetySettings(
        kafka_bootstrap=infra.kafka_bootstrap,
        topic_prefix=topics,
        instance_id=f"it{uuid.uuid4().hex[:6]}",
    )
    app = bootstrap(
        settings, prompt_classifier=FakePromptClassifier(), image_classifier=FakeImageClassifier()
    )
    stop = asyncio.Event()
    running = [asyncio.create_task(task(stop)) for task in app.tasks]
    client = KafkaPublisher(infra.kafka_bootstrap, "test", topics)
    job = f"job-{uuid.uuid4().hex[:8]}"
    try:
        deadline = time.monotonic() + 60
        while not all((await app.readiness.evaluate()).values()):
            assert time.monotonic() < deadline, await app.readiness.evaluate()
            await asyncio.sleep(0.2)
        cause = envelope_of(requested(job, "explicit porn"))
        result = envelope_of(generated(store(tmp_path, job, [png()]), job_id=job))
        for topic, env in [("requested", cause), ("requested", cause), ("generated", result)]:
            # the request twice: what a redelivery after a crash looks like to the service
            await client.send_raw(f"{topics}imagegen.jobs.{topic}", job.encode(), env.to_json(), [])
        verdicts = await asyncio.to_thread(
            read_job, infra.kafka_bootstrap, topics + "imagegen.jobs.moderated", job, 3
        )
    finally:
        stop.set()
        await asyncio.gather(*running)
        for close in app.on_shutdown:
            await close()
        await client.close()
    # one consumer reads both topics: the image verdict may come before or between the others
    prompt_1, prompt_2 = [v for v in verdicts if v.type == PromptModerated.event_type]
    [image] = [v for v in verdicts if v.type == ImageModerated.event_type]
    assert prompt_1.event_id == prompt_2.event_id  # same cause, same id: dropped downstream
    assert prompt_1.causation_id == cause.event_id
    moderated = parse(prompt_1)
    assert isinstance(moderated, PromptModerated)
    assert (moderated.verdict, moderated.categories) == (Verdict.REJECTED, ("sexual",))
    judged = parse(image)
    assert isinstance(judged, ImageModerated)
    assert (judged.verdict, judged.fencing_token) == (Verdict.ALLOWED, 3)


def committed_through(bootstrap_servers: str, group: str, topic: str, partition: int) -> int:
    """The group's committed offset on one partition (-1001 when none yet)."""
    from confluent_kafka import TopicPartition

    reader = Consumer({"bootstrap.servers": bootstrap_servers, "group.id": group})
    try:
        [tp] = reader.committed([TopicPartition(topic, partition)], timeout=10)
        return int(tp.offset)
    finally:
        reader.close()


async def test_a_restart_between_a_revocation_and_the_late_image_still_drops_the_image(
    infra: Any, topics: str, tmp_path: Path
) -> None:
    """Found by the chaos soak (run 3): safety committed a revocation, was killed, and after the
    restart judged the revoked assignment's late image, which delivery then delivered."""
    topics = f"{topics}safety{uuid.uuid4().hex[:6]}."
    ensure_topics(infra.kafka_bootstrap, topics)
    settings = SafetySettings(
        kafka_bootstrap=infra.kafka_bootstrap,
        topic_prefix=topics,
        instance_id=f"it{uuid.uuid4().hex[:6]}",
    )
    generated_topic = f"{topics}imagegen.jobs.generated"
    client = KafkaPublisher(infra.kafka_bootstrap, "test", topics)
    job = f"job-{uuid.uuid4().hex[:8]}"
    refs = store(tmp_path, job, [png()])

    async def run_safety(until: Any) -> None:
        app = bootstrap(
            settings,
            prompt_classifier=FakePromptClassifier(),
            image_classifier=FakeImageClassifier(),
        )
        await run_until(app, until)

    try:
        # A first safety process reads and commits the revocation of token 3, then stops.
        revoked = AssignmentRevoked(job_id=job, worker_id="worker-1", fencing_token=3)
        await client.publish(revoked, key=job)
        partition = -1
        reader = Consumer(
            {"bootstrap.servers": infra.kafka_bootstrap, "group.id": f"r-{uuid.uuid4()}"}
        )
        md = await asyncio.to_thread(reader.list_topics, generated_topic, 10)
        reader.close()
        partitions = sorted(md.topics[generated_topic].partitions)
        group = f"{topics}imagegen-safety"

        async def revocation_committed() -> bool:
            nonlocal partition
            for p in partitions:
                offset = await asyncio.to_thread(
                    committed_through, infra.kafka_bootstrap, group, generated_topic, p
                )
                if offset >= 1:
                    partition = p
                    return True
            return False

        await run_safety(revocation_committed)
        # The revoked worker's late image, then the new assignment's, both while safety is down.
        late = envelope_of(generated(refs, job_id=job))  # token 3
        fresh = envelope_of(generated(refs, job_id=job).model_copy(update={"fencing_token": 4}))
        for env in (late, fresh):
            await client.send_raw(generated_topic, job.encode(), env.to_json(), [])

        async def fresh_committed() -> bool:
            offset = await asyncio.to_thread(
                committed_through, infra.kafka_bootstrap, group, generated_topic, partition
            )
            return offset >= 3

        await run_safety(fresh_committed)
        verdicts = await asyncio.to_thread(
            read_job, infra.kafka_bootstrap, topics + "imagegen.jobs.moderated", job, 1
        )  # the late image's verdict, had there been one, comes first (same key, same order)
    finally:
        await client.close()
    tokens = [judged.fencing_token for judged in map(parse, verdicts)]  # type: ignore[attr-defined]
    assert tokens == [4]

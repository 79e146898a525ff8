"""Pool commands through the real broker and the wired worker (issue 13 item 3, ADR 0702).

The worker is ``bootstrap``'s, with its real ``DiffusersRunner`` on the committed demo model
(``models/shapes-demo``, CPU) and nothing preloaded. A LoadModel published twice with the same
event id (a duplicate record) gives exactly one ``ModelLoaded`` on ``imagegen.workers.models``;
a LoadModel of a model not registered on the worker ends in ``imagegen.deadletter``.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
from confluent_kafka import Consumer, TopicPartition

from imagegen_gpu_worker.bootstrap import bootstrap
from imagegen_gpu_worker.config import GpuWorkerSettings
from imagegen_runtime.kafka import KafkaPublisher
from imagegen_schemas import Envelope, parse
from imagegen_schemas.workers import LoadModel, ModelLoaded, ModelLoadFailed

pytestmark = pytest.mark.integration

MODELS_DIR = Path(__file__).resolve().parents[3] / "models"  # holds shapes-demo


def read_until(
    bootstrap_servers: str,
    topic: str,
    done: Callable[[list[Envelope]], bool],
    timeout: float,
) -> list[Envelope]:
    """Records of ``topic`` from offset 0 until ``done(records)`` (or the deadline)."""
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
    try:
        while not done(out) and time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is not None and not msg.error():
                out.append(Envelope.from_json(msg.value()))
    finally:
        consumer.close()
    return out


def read_to_end(bootstrap_servers: str, topic: str, timeout: float = 60) -> list[Envelope]:
    """Every record of ``topic`` up to each partition's high watermark now."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap_servers,
            "group.id": f"reader-{uuid.uuid4()}",
            "enable.auto.commit": False,
        }
    )
    partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
    ends = {
        p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
        for p in partitions
    }
    consumer.assign([TopicPartition(topic, p, 0) for p in partitions])
    out: list[Envelope] = []
    left = {p for p, end in ends.items() if end > 0}
    deadline = time.monotonic() + timeout
    try:
        while left and time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is None or msg.error():
                continue
            out.append(Envelope.from_json(msg.value()))
            if msg.offset() + 1 >= ends[msg.partition()]:
                left.discard(msg.partition())
    finally:
        consumer.close()
    assert not left, f"{topic}: partitions {sorted(left)} not read to their end in time"
    return out


async def test_load_model_is_answered_once_and_an_unknown_model_is_dead_lettered(
    infra, topics, tmp_path: Path
) -> None:
    pytest.importorskip("torch")
    worker_id = f"w-{uuid.uuid4().hex[:8]}"
    settings = GpuWorkerSettings(
        kafka_bootstrap=infra.kafka_bootstrap,
        topic_prefix=topics,
        worker_id=worker_id,
        models_dir=MODELS_DIR,
        blob_dir=tmp_path / "blobs",
        preload_model="",  # nothing resident: the command's load reads the disk
        heartbeat_interval_s=1.0,
    )
    app = bootstrap(settings)
    pub = KafkaPublisher(infra.kafka_bootstrap, "pool-manager", topics)
    load = LoadModel(worker_id=worker_id, model_id="shapes-demo", reason="predicted_demand")
    command_id = str(uuid.uuid4())
    # The same command twice (a producer retry's duplicate record), then an unknown model's.
    for _ in range(2):
        await pub.publish(load, key=worker_id, event_id=command_id)
    unknown = await pub.publish(
        LoadModel(worker_id=worker_id, model_id="no-such-model"), key=worker_id
    )
    stop = asyncio.Event()
    running = [asyncio.create_task(task(stop)) for task in app.tasks]
    group = f"{topics}imagegen-worker-{worker_id}-commands"
    try:
        letters = await asyncio.to_thread(
            read_until,
            infra.kafka_bootstrap,
            topics + "imagegen.deadletter",
            lambda got: any(e.data.get("consumer_group") == group for e in got),
            240,
        )
        for task in running:  # none crashed meanwhile
            if task.done():
                task.result()
    finally:
        stop.set()
        await asyncio.wait_for(asyncio.gather(*running, return_exceptions=True), 60)
        for close in app.on_shutdown:
            await close()
        await pub.close()

    [letter] = [e for e in letters if e.data.get("consumer_group") == group]
    assert letter.data["source_topic"] == topics + "imagegen.pool.commands"
    assert "UnknownModel" in letter.data["error"]
    assert "'no-such-model' is not registered on this worker" in letter.data["error"]

    # The dead letter came after the two LoadModel records (one partition, in order), so both
    # were handled, and their facts published, by then.
    facts = [
        parse(e)
        for e in await asyncio.to_thread(
            read_to_end, infra.kafka_bootstrap, topics + "imagegen.workers.models"
        )
        if e.correlation_id == worker_id
    ]
    loaded = [f for f in facts if isinstance(f, ModelLoaded)]
    assert len(loaded) == 1, facts
    assert (loaded[0].model.model_id, loaded[0].source) == ("shapes-demo", "disk")
    assert loaded[0].command_id == command_id and loaded[0].load_ms > 0
    failed = [f for f in facts if isinstance(f, ModelLoadFailed)]
    assert {(f.model_id, f.reason, f.command_id) for f in failed} == {
        ("no-such-model", "unknown_model", unknown.event_id)
    }

"""Acknowledged records survive a kill -9 of the broker and a restart by the project's scripts."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from imagegen_runtime.faststream_consumer import FastStreamConsumer
from imagegen_runtime.kafka import KafkaPublisher, RecordMeta, wait_for_kafka
from imagegen_schemas import Envelope, Payload
from imagegen_schemas.jobs import CancellationRequested

from .test_kafka import read_all

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


def kafka_pid() -> int:
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "supervisor.supervisorctl",
            "-c",
            str(ROOT / "var/run/supervisord.conf"),
            "pid",
            "kafka",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    return int(out)


async def test_acknowledged_events_survive_kill_9_of_the_broker(infra, topics) -> None:
    if not infra.local:
        pytest.skip("kills the local broker process; testcontainers' broker is not ours to kill")
    pub = KafkaPublisher(infra.kafka_bootstrap, "crash-test", topics)
    job = str(uuid.uuid4())
    acked = [
        await pub.publish(CancellationRequested(job_id=job, requested_by=str(i)), key=job)
        for i in range(200)
    ]
    await pub.close()

    pid = kafka_pid()
    os.kill(pid, signal.SIGKILL)
    # `make up` (infra part): idempotent; supervisord may already be restarting the broker.
    subprocess.run(
        [sys.executable, str(ROOT / "deploy/stack.py"), "infra-up"],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    wait_for_kafka(infra.kafka_bootstrap, timeout_s=90)
    assert kafka_pid() != pid, "the broker was not restarted"

    ids = {
        e.event_id
        for e in read_all(
            infra.kafka_bootstrap, topics + "imagegen.jobs.requested", 10_000, timeout=20
        )
        if e.correlation_id == job
    }
    missing = [e.event_id for e in acked if e.event_id not in ids]
    assert not missing, f"{len(missing)} acknowledged events lost"


async def test_publisher_and_consumer_ride_out_a_broker_restart(infra, topics) -> None:
    """Regression (issue 10, broker restart; ADR 0008): a publish during the outage failed with
    ``_MSG_TIMED_OUT`` (its handler's record went to the dead-letter topic), and a consumer
    whose commit failed across the restart crashed. Now the publish is retried until the broker
    is back, and the consumer goes on and handles what is published after the restart."""
    if not infra.local:
        pytest.skip("kills the local broker process; testcontainers' broker is not ours to kill")
    job = str(uuid.uuid4())
    topic = topics + "imagegen.jobs.requested"
    # A short delivery timeout, so that each delivery attempt fails during the outage.
    pub = KafkaPublisher(
        infra.kafka_bootstrap, "crash-test", topics, **{"message.timeout.ms": 1000}
    )
    seen: dict[str, asyncio.Event] = {}

    async def handle(env: Envelope, payload: Payload, meta: RecordMeta) -> None:
        if env.correlation_id == job:
            seen.setdefault(env.event_id, asyncio.Event()).set()

    consumer = FastStreamConsumer(
        infra.kafka_bootstrap, f"{topics}restart-{job[:6]}", [topic], handle, pub
    )
    stop = asyncio.Event()
    task = asyncio.create_task(consumer.run(stop))
    try:
        before = await pub.publish(CancellationRequested(job_id=job, requested_by="a"), key=job)
        await asyncio.wait_for(seen.setdefault(before.event_id, asyncio.Event()).wait(), 60)

        pid = kafka_pid()
        os.kill(pid, signal.SIGKILL)
        during = asyncio.create_task(
            pub.publish(CancellationRequested(job_id=job, requested_by="b"), key=job)
        )
        await asyncio.to_thread(
            subprocess.run,
            [sys.executable, str(ROOT / "deploy/stack.py"), "infra-up"],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        await asyncio.to_thread(wait_for_kafka, infra.kafka_bootstrap, 90)
        assert kafka_pid() != pid, "the broker was not restarted"
        sent = await asyncio.wait_for(during, 150)  # raised _MSG_TIMED_OUT before ADR 0008
        assert pub.retries > 0, "the broker came back before any delivery timed out"
        await asyncio.wait_for(seen.setdefault(sent.event_id, asyncio.Event()).wait(), 120)
        assert not task.done(), f"the consumer stopped: {task.exception()!r}"
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)  # raises if the consumer crashed
        await pub.close()

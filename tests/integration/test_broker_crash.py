"""Acknowledged records survive a kill -9 of the broker and a restart by the project's scripts."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from imagegen_runtime.kafka import KafkaPublisher, wait_for_kafka
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

"""Failure semantics of the running stack: poison records, and kill -9 of every service."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from imagegen_runtime.kafka import KafkaPublisher

from .conftest import ROOT, RunningStack
from .test_generation import MODEL, read_topic

pytestmark = pytest.mark.e2e

# Which consumer groups read each topic (a malformed record must reach the DLQ from each).
CONSUMERS = {
    "imagegen.jobs.requested": {
        "imagegen-safety",
        "imagegen-worker-worker-local-1-control",
        "imagegen-scheduler",
    },
    "imagegen.jobs.moderated": {"imagegen-delivery", "imagegen-scheduler"},
    "imagegen.jobs.scheduled": {
        "imagegen-worker-worker-local-1",
        "imagegen-scheduler",
        "imagegen-pool-manager",
    },
    "imagegen.jobs.progress": set(),
    "imagegen.jobs.generated": {"imagegen-safety", "imagegen-scheduler", "imagegen-pool-manager"},
    "imagegen.jobs.delivered": set(),
    "imagegen.jobs.ended": {"imagegen-scheduler", "imagegen-pool-manager"},
    "imagegen.workers.heartbeats": {"imagegen-scheduler", "imagegen-pool-manager"},
}


def projector_group() -> str:
    from imagegen_api.adapters.jobstore import projector_group as group

    return group()


def test_malformed_record_on_each_topic_is_dead_lettered_and_consumers_go_on(
    stack: RunningStack,
) -> None:
    marker = f"poison-{uuid.uuid4().hex[:8]}".encode()

    async def poison() -> None:
        pub = KafkaPublisher(stack.kafka_bootstrap, "e2e-poison")
        for topic in CONSUMERS:
            await pub.send_raw(topic, marker, b'{"type": "imagegen.nope", "truncated', [])
        await pub.close()

    asyncio.run(poison())
    key_b64 = base64.b64encode(marker).decode()
    wanted = {
        (t, g)
        for t, groups in CONSUMERS.items()
        for g in groups | {projector_group()}
        if t != "imagegen.workers.heartbeats" or g != projector_group()
    }
    deadline = time.monotonic() + 60
    seen: set[tuple[str, str]] = set()
    while time.monotonic() < deadline and not wanted <= seen:
        letters = [
            e["data"]
            for e in read_topic(stack, "imagegen.deadletter")
            if e["data"].get("original_key_b64") == key_b64
        ]
        seen = {(d["source_topic"], d["consumer_group"]) for d in letters}
        time.sleep(0.5)  # between reads of the dead-letter topic
    assert wanted <= seen, f"not dead-lettered: {sorted(wanted - seen)}"
    assert all("unparseable" in d["error"] for d in letters)
    # ... and every consumer went on: a job still goes all the way through.
    with stack.client() as c:
        job = c.post(
            "/v1/generations", json={"prompt": "a blue ring", "model": MODEL, "steps": 2}
        ).json()["id"]
    assert stack.wait_terminal(job)["status"] == "delivered"


class Webhooks(BaseHTTPRequestHandler):
    event_ids: dict[str, set[str]] = {}

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        event_id = self.headers.get("X-Imagegen-Event-Id", "")
        Webhooks.event_ids.setdefault(body["job_id"], set()).add(event_id)
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def supervised_pid(name: str) -> int:
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "supervisor.supervisorctl",
            "-c",
            str(ROOT / "var/run/supervisord.conf"),
            "pid",
            name,
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    return int(out)


@pytest.mark.parametrize(
    "service", ["api", "safety", "scheduler", "gpu-worker", "delivery", "pool-manager"]
)
def test_kill_9_with_50_jobs_in_flight_loses_none_and_delivers_none_twice(
    stack: RunningStack, service: str
) -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Webhooks)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    hook = f"http://127.0.0.1:{server.server_port}/hook"
    jobs = []
    run = uuid.uuid4().hex[:6]
    for i in range(50):
        body = {
            "prompt": f"a red square number {i}",
            "model": MODEL,
            "steps": 3,
            "seed": i,
            "webhook_url": hook,
        }
        jobs.append(stack.submit(body, idempotency_key=f"kill-{run}-{i}"))
        if i == 10:
            os.kill(supervised_pid(service), signal.SIGKILL)  # supervisord restarts it
    ends = {j: stack.wait_terminal(j, timeout_s=300)["status"] for j in jobs}
    server.shutdown()
    assert set(ends.values()) <= {"delivered", "failed"}, Counter(ends.values())
    with stack.client() as c:
        for j, status in ends.items():
            if status == "failed":
                assert c.get(f"/v1/generations/{j}").json()["failure"]["reason"]
    delivered = Counter(
        e["correlation_id"]
        for e in {
            e["event_id"]: e
            for e in read_topic(stack, "imagegen.jobs.delivered")
            if e["correlation_id"] in ends
        }.values()
    )
    assert max(delivered.values()) == 1, "a job was delivered twice"
    assert all(len(Webhooks.event_ids.get(j, ())) <= 1 for j in jobs), "webhook sent twice"
    assert Counter(ends.values())["delivered"] >= 45, Counter(ends.values())

"""After 200+ jobs, rebuilding the projections from offset 0 equals the live ones, and the
rebuild repeats no side effect (no event published, no file delivered, no webhook)."""

from __future__ import annotations

import subprocess
import sys
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest

from imagegen.replay import JOB_TOPICS, high_watermarks

from .conftest import ROOT, RunningStack
from .test_generation import MODEL, read_topic

pytestmark = pytest.mark.e2e


def count_jobs(stack: RunningStack) -> int:
    return sum(
        1
        for e in read_topic(stack, "imagegen.jobs.requested")
        if e.get("type") == "imagegen.generation.requested"
    )


def delivered_files() -> int:
    return sum(1 for _ in (ROOT / "var" / "delivery").rglob("*.png"))


def test_rebuild_from_the_log_equals_the_live_projection(stack: RunningStack) -> None:
    missing = max(0, 200 - count_jobs(stack))
    run = uuid.uuid4().hex[:6]
    with ThreadPoolExecutor(max_workers=8) as pool:
        jobs = list(
            pool.map(
                lambda i: stack.submit(
                    {"prompt": f"a green star {i}", "model": MODEL, "steps": 1, "seed": i},
                    idempotency_key=f"replay-{run}-{i}",
                ),
                range(missing),
            )
        )
    for job in jobs:
        assert stack.wait_terminal(job)["status"] in ("delivered", "failed")
    assert count_jobs(stack) >= 200

    before = (high_watermarks(stack.kafka_bootstrap, JOB_TOPICS), delivered_files())
    out = subprocess.run(
        [sys.executable, "-m", "imagegen.cli", "replay", "--rebuild", "--verify"],
        env=stack.env,
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
    )
    after = (high_watermarks(stack.kafka_bootstrap, JOB_TOPICS), delivered_files())
    assert out.returncode == 0, out.stdout + out.stderr
    assert "VERIFIED" in out.stdout, out.stdout
    compared = int(out.stdout.split("compared ")[1].split(" jobs")[0])
    assert compared >= 200, out.stdout
    assert before == after, "the rebuild published events or delivered files"

"""The usage ledger through the running stack (issue 14, ADR 0630): a delivered job is metered
once on imagegen.usage, and `imagegen usage` shows it with its images and GPU-seconds."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid

import pytest

from .conftest import RunningStack

pytestmark = pytest.mark.e2e
MODEL = "tiny-random"


def usage(stack: RunningStack, user: str) -> dict:  # type: ignore[type-arg]
    out = subprocess.run(
        [sys.executable, "-m", "imagegen.cli", "usage", "--user", user, "--since", "1h", "--json"],
        env=stack.env,
        capture_output=True,
        text=True,
        check=True,
    )
    report: dict = json.loads(out.stdout)  # type: ignore[type-arg]
    return report


def test_a_delivered_job_is_metered_once(stack: RunningStack) -> None:
    user = f"e2e-usage-{uuid.uuid4().hex[:8]}"
    key = stack.new_key("pro", user=user)
    body = {"prompt": "a red circle", "model": MODEL, "steps": 2, "seed": 3, "num_images": 2}
    with stack.client(key) as c:
        answer = c.post("/v1/generations", json=body)
    assert answer.status_code == 202, answer.text
    job_id = answer.json()["id"]
    assert stack.wait_terminal(job_id, key=key)["status"] == "delivered"
    deadline = time.monotonic() + 90  # the meter waits up to 30 s for late facts of a job
    report = usage(stack, user)
    while not report["jobs"] and time.monotonic() < deadline:
        time.sleep(1.0)  # between reads of the usage topic
        report = usage(stack, user)
    assert [j["job_id"] for j in report["jobs"]] == [job_id], report
    job = report["jobs"][0]
    assert job["state"] == "delivered" and job["images"] == 2 and job["tier"] == "fast"
    assert job["gpu_seconds"] > 0 and len(job["gpu_seconds_by_class"]) == 1
    assert report["totals"]["jobs"] == 1

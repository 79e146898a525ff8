"""`make up` brings Kafka, PostgreSQL and the six services to ready; `make down` leaves nothing.

Runs a second, isolated stack (own var/ folder and ports) so the suite's infra stays untouched.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]
OFFSET = 1000  # this stack's services listen on 9000, 9101..9106, beside the suite's stack
SERVICES = {
    "api": 8000 + OFFSET,
    "scheduler": 8101 + OFFSET,
    "gpu-worker": 8102 + OFFSET,
    "safety": 8103 + OFFSET,
    "delivery": 8104 + OFFSET,
    "pool-manager": 8105 + OFFSET,
    "api-projector": 8106 + OFFSET,  # the api's job projector, its own program (ADR 0641)
}


def get(url: str, headers: dict[str, str]):  # type: ignore[no-untyped-def]
    return urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=5)


def live_pids_mentioning(mark: str) -> list[int]:
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmd = (proc / "cmdline").read_bytes()
            state = (proc / "stat").read_text().split(") ", 1)[1][0]
        except OSError:
            continue
        if mark.encode() in cmd and state != "Z":
            pids.append(int(proc.name))
    return pids


def test_up_is_ready_idempotent_and_down_leaves_no_process(tmp_path: Path) -> None:
    var = tmp_path / "var"
    # Below Linux's ephemeral range (32768-60999): this stack starts late in the suite, after
    # thousands of client connections, and a port in that range was once taken by one of them
    # (Kafka: "failed to bind to 127.0.0.1:39192: Address already in use").
    env = {
        **os.environ,
        "IMAGEGEN_STACK_VAR": str(var),
        "IMAGEGEN_STACK_KAFKA_PORT": "29192",
        "IMAGEGEN_STACK_CONTROLLER_PORT": "29193",
        "IMAGEGEN_STACK_PG_PORT": "25532",
        "IMAGEGEN_STACK_PORT_OFFSET": str(OFFSET),
    }
    stack = [sys.executable, str(ROOT / "deploy/stack.py")]
    try:
        first = subprocess.run([*stack, "up"], env=env, capture_output=True, text=True, timeout=300)
        assert first.returncode == 0, first.stdout + first.stderr
        for written in (var / "stack.env", var / "run" / "supervisord.conf"):  # issue 14
            assert stat.S_IMODE(written.stat().st_mode) == 0o600, written
        made = dict(
            line.split("=", 1) for line in (var / "stack.env").read_text().splitlines() if line
        )
        operator = {"Authorization": f"Bearer {made['IMAGEGEN_OPERATOR_KEY']}"}
        user = {"Authorization": f"Bearer {made['IMAGEGEN_API_KEY']}"}
        for name, port in SERVICES.items():
            assert f"ready  {name}" in first.stdout
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5) as r:
                assert json.loads(r.read())["ready"] is True
            metrics = f"http://127.0.0.1:{port}/metrics"
            with get(metrics, operator) as r:
                assert b"python_info" in r.read()
            for headers, code in (({}, 401), (user, 403)):  # operator-only (issue 14)
                with pytest.raises(urllib.error.HTTPError) as refused:
                    get(metrics, headers)
                assert refused.value.code == code, (name, headers)
        for view in (
            f"http://127.0.0.1:{SERVICES['scheduler']}/v1/queues",
            f"http://127.0.0.1:{SERVICES['pool-manager']}/v1/workers",
            f"http://127.0.0.1:{SERVICES['api']}/docs",
        ):
            with get(view, operator) as r:
                assert r.status == 200, view
            with pytest.raises(urllib.error.HTTPError) as refused:
                get(view, user)
            assert refused.value.code == 403, view
        second = subprocess.run(
            [*stack, "up"], env=env, capture_output=True, text=True, timeout=120
        )
        assert second.returncode == 0, second.stdout + second.stderr
        # kafka, postgres, s3, six services and the api's projector
        assert second.stdout.count("ready  ") == 10
    finally:
        down = subprocess.run(
            [*stack, "down"], env=env, capture_output=True, text=True, timeout=120
        )
    assert down.returncode == 0, down.stderr
    assert live_pids_mentioning(str(var)) == []
    for port in SERVICES.values():
        with pytest.raises(OSError):
            urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1)

"""The whole stack as processes (``deploy/stack.py up``) with a registered test model."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.otlp import OtlpReceiver

ROOT = Path(__file__).resolve().parents[2]
# The stack's services export their spans here (OTLP/HTTP); a fixed port, so the services'
# environment, and so their supervisor config, stays the same from one session to the next.
OTLP_PORT = int(os.environ.get("IMAGEGEN_E2E_OTLP_PORT", "24318"))
TERMINAL = {"delivered", "failed", "cancelled"}


@dataclass(frozen=True)
class RunningStack:
    api: str  # base URL of the API
    key: str  # an API key of a fresh user on the pro plan
    models: Path  # the models folder the services use
    kafka_bootstrap: str
    env: dict[str, str]  # environment that reaches this stack with deploy/stack.py
    otlp: OtlpReceiver | None = None  # receives every service's spans (docs/tracing.md)

    def client(self, key: str | None = None) -> httpx.Client:
        return httpx.Client(
            base_url=self.api, timeout=30, headers={"Authorization": f"Bearer {key or self.key}"}
        )

    def new_key(self, plan: str = "pro", user: str | None = None) -> str:
        """A new API key of ``user`` (default: a fresh user) on ``plan``."""
        out = subprocess.run(
            [
                sys.executable,
                "-m",
                "imagegen.cli",
                "keys",
                "create",
                "--user",
                user or f"e2e-{uuid.uuid4().hex[:8]}",
                "--plan",
                plan,
            ],
            env=self.env,
            capture_output=True,
            text=True,
            check=True,
        )
        return out.stdout.strip()

    def wait_terminal(
        self, job_id: str, timeout_s: float = 180, key: str | None = None
    ) -> dict[str, Any]:
        """Poll the job until it ends (a condition, not a fixed wait); rides out API restarts."""
        deadline = time.monotonic() + timeout_s
        body: dict[str, Any] = {}
        with self.client(key) as c:
            while time.monotonic() < deadline:
                try:
                    body = c.get(f"/v1/generations/{job_id}").json()
                except (httpx.TransportError, ValueError):
                    body = {}
                if body.get("status") in TERMINAL:
                    break
                time.sleep(0.1)  # between polls of the job's status
        return body

    def delivered_png(self, body: dict[str, Any], timeout_s: float = 300) -> bytes:
        """POST ``body`` (202 asserted), wait until the job ends delivered, and fetch its first
        image through its signed URL."""
        with self.client() as c:
            r = c.post("/v1/generations", json=body)
        assert r.status_code == 202, r.text
        job = self.wait_terminal(r.json()["id"], timeout_s=timeout_s)
        assert job.get("status") == "delivered", job
        png = httpx.get(job["images"][0]["url"], timeout=30)
        assert png.status_code == 200
        return png.content

    def submit(self, body: dict[str, Any], idempotency_key: str, timeout_s: float = 120) -> str:
        """Submit until accepted: retries (same Idempotency-Key) ride out an API restart."""
        deadline = time.monotonic() + timeout_s
        with self.client() as c:
            while True:
                try:
                    r = c.post(
                        "/v1/generations", json=body, headers={"Idempotency-Key": idempotency_key}
                    )
                    if r.status_code == 202:
                        return str(r.json()["id"])
                    # 409: the first request with this key is in flight; 5xx: a restart
                    assert r.status_code == 409 or r.status_code >= 500, r.text
                except httpx.TransportError:
                    pass
                assert time.monotonic() < deadline, "the API did not come back"
                time.sleep(0.2)  # before retrying the submission


@pytest.fixture(scope="session")
def stack(infra) -> Iterator[RunningStack]:  # type: ignore[no-untyped-def]
    models = ROOT / "var" / "e2e-models"
    models.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [sys.executable, str(ROOT / "tests/fixtures/tiny_model.py"), str(models)],
        check=True,
        capture_output=True,
    )
    subprocess.run(  # tiny-sd15, tiny-sdxl, tiny-sd3, tiny-flux: every family (seconds)
        [sys.executable, "-m", "imagegen_model_zoo", "--out", str(models)],
        check=True,
        capture_output=True,
    )
    demo = ROOT / "models" / "shapes-demo"
    if (demo / "model.json").exists() and not (models / "shapes-demo").exists():
        (models / "shapes-demo").symlink_to(demo)
    try:  # started before the stack, so no span of the session is lost
        otlp = OtlpReceiver(port=OTLP_PORT).start()
    except OSError:  # the port is taken: any free one (the services restart with it)
        otlp = OtlpReceiver().start()
    env = {
        **os.environ,
        "IMAGEGEN_STACK_OTEL_ENDPOINT": otlp.endpoint,
        "OTEL_BSP_SCHEDULE_DELAY": "500",  # export every 0.5 s (default 5 s)
        "IMAGEGEN_STACK_MODELS": str(models),
        "IMAGEGEN_STACK_PRELOAD_MODEL": "tiny-random",
        # The session's pro key polls often and runs 50-job fault tests: room for that. The
        # free and turbo plans keep their shipped limits (tests/e2e/test_limits.py).
        "IMAGEGEN_STACK_API_LIMITS": json.dumps(
            {"pro": {"requests_per_minute": 6000, "burst": 1000, "active_jobs": 200}}
        ),
    }
    subprocess.run(
        [sys.executable, str(ROOT / "deploy/stack.py"), "up"],
        env=env,
        check=True,
        stdout=subprocess.DEVNULL,
    )
    running = RunningStack("http://127.0.0.1:8000", "", models, infra.kafka_bootstrap, env)
    key = running.new_key("pro")
    yield RunningStack(running.api, key, models, infra.kafka_bootstrap, env, otlp)
    otlp.stop()

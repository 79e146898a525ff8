"""The soak's own local stack: ``deploy/stack.py`` with its IMAGEGEN_STACK_* variables set to
a separate var folder, ports and HTTP port offset, so the shared stack is never touched.

``deploy/stack.py`` gives api and delivery ``WEBHOOK_ALLOW=127.0.0.0/8,::1/128``, so the SSRF
guard lets webhooks reach the harness's loopback receiver. The services inherit the environment
``deploy/stack.py`` runs with (supervisord passes it on), so delivery gets this stack's compressed
retry schedule (``IMAGEGEN_DELIVERY_WEBHOOK_RETRY_SCHEDULE_S``, a JSON list of seconds).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from .faults import SERVICES, Supervisor

ROOT = Path(__file__).resolve().parents[4]  # tools/chaos/src/imagegen_chaos -> the checkout
SERVICE_PORTS = {
    "api": 8000,
    "scheduler": 8101,
    "gpu-worker": 8102,
    "safety": 8103,
    "delivery": 8104,
    "pool-manager": 8105,
    "api-projector": 8106,  # the api's job projector (ADR 0641)
}
MODEL = "tiny-random"  # tests/fixtures/tiny_model.py: random weights, ~30 ms an image
# Waits before each webhook retry: short, so the soak sees retries end (the default schedule
# spans ten hours); five retries, so a call fails for good only after six 503s in a row.
WEBHOOK_RETRY_SCHEDULE_S = (1.0, 2.0, 4.0, 8.0, 16.0)


@dataclass(frozen=True)
class ChaosStack:
    var: Path  # the stack's own var folder (never the shared one)
    kafka_port: int = 29192
    controller_port: int = 29193
    pg_port: int = 25532
    port_offset: int = 100  # added to every service's HTTP port
    root: Path = ROOT
    webhook_retry_schedule_s: tuple[float, ...] = WEBHOOK_RETRY_SCHEDULE_S
    workers: int = 1  # gpu-worker processes (IMAGEGEN_STACK_WORKERS): gpu-worker, gpu-worker-2, ...

    @property
    def models(self) -> Path:
        return self.var / "models"

    @property
    def blobs(self) -> Path:
        return self.var / "blobs"  # the gpu-worker's BLOB_DIR and delivery's SOURCE_DIR

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.kafka_port}"

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{SERVICE_PORTS['api'] + self.port_offset}"

    def more_workers(self) -> tuple[str, ...]:
        """The fleet's programs beyond ``gpu-worker``: gpu-worker-2 ... gpu-worker-N."""
        return tuple(f"gpu-worker-{i}" for i in range(2, self.workers + 1))

    def port(self, program: str) -> int:
        """A program's HTTP port, as deploy/stack.py gives it (gpu-worker-i: 8110 + i)."""
        if program.startswith("gpu-worker-"):
            return 8110 + int(program.rsplit("-", 1)[1]) + self.port_offset
        return SERVICE_PORTS[program] + self.port_offset

    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            "IMAGEGEN_STACK_VAR": str(self.var),
            "IMAGEGEN_STACK_KAFKA_PORT": str(self.kafka_port),
            "IMAGEGEN_STACK_CONTROLLER_PORT": str(self.controller_port),
            "IMAGEGEN_STACK_PG_PORT": str(self.pg_port),
            "IMAGEGEN_STACK_PORT_OFFSET": str(self.port_offset),
            "IMAGEGEN_STACK_MODELS": str(self.models),
            "IMAGEGEN_STACK_PRELOAD_MODEL": MODEL,
            "IMAGEGEN_STACK_WORKERS": str(self.workers),
            # pydantic-settings reads a tuple setting as JSON: "[1.0, 2.0]", not "1,2".
            "IMAGEGEN_DELIVERY_WEBHOOK_RETRY_SCHEDULE_S": json.dumps(
                list(self.webhook_retry_schedule_s)
            ),
        }

    def setting(self, name: str) -> str:
        """A line of the stack's var/stack.env, e.g. DATABASE_URL."""
        for line in (self.var / "stack.env").read_text().splitlines():
            key, _, value = line.partition("=")
            if key == f"IMAGEGEN_{name}":
                return value
        raise KeyError(name)

    @property
    def database_url(self) -> str:
        return self.setting("DATABASE_URL")

    @property
    def supervisor(self) -> Supervisor:
        return Supervisor(
            self.var / "run" / "supervisord.conf", Path(sys.executable).parent / "supervisorctl"
        )

    def _stack(self, command: str, log: Path | None = None) -> None:
        out = open(log, "a") if log else None  # noqa: SIM115 - closed below
        try:
            subprocess.run(
                [sys.executable, str(self.root / "deploy" / "stack.py"), command],
                env=self.env(),
                check=True,
                stdout=out,
                stderr=subprocess.STDOUT if out else None,
            )
        finally:
            if out:
                out.close()

    def up(self) -> None:
        """The tiny model, then `deploy/stack.py up` with this stack's variables."""
        self.var.mkdir(parents=True, exist_ok=True)
        self.models.mkdir(parents=True, exist_ok=True)
        if not (self.models / MODEL / "model.json").exists():
            subprocess.run(
                [sys.executable, str(self.root / "tests/fixtures/tiny_model.py"), str(self.models)],
                check=True,
                capture_output=True,
            )
        demo = self.root / "models" / "shapes-demo"  # the API's default model, as in the e2e stack
        if (demo / "model.json").exists() and not (self.models / "shapes-demo").exists():
            (self.models / "shapes-demo").symlink_to(demo)
        self._stack("up")

    def down(self) -> None:
        self._stack("down")

    def create_key(self, user: str, plan: str) -> str:
        out = subprocess.run(
            [
                sys.executable,
                "-m",
                "imagegen.cli",
                "keys",
                "create",
                "--user",
                user,
                "--plan",
                plan,
                "--database-url",
                self.database_url,
            ],
            env=self.env(),
            capture_output=True,
            text=True,
            check=True,
        )
        return out.stdout.strip()

    def webhook_secret(self, user: str) -> str:
        """The user's newest ``whsec_`` secret (``imagegen webhooks secret``; made if none):
        what delivery signs that user's webhook calls with."""
        out = subprocess.run(
            [
                sys.executable,
                "-m",
                "imagegen.cli",
                "webhooks",
                "secret",
                "--user",
                user,
                "--database-url",
                self.database_url,
            ],
            env=self.env(),
            capture_output=True,
            text=True,
            check=True,
        )
        secret = out.stdout.strip()
        if not secret.startswith("whsec_"):
            raise RuntimeError(f"imagegen webhooks secret --user {user} printed no whsec_ secret")
        return secret

    def not_ready(self) -> list[str]:
        """Services whose /readyz does not answer 200 now."""
        bad = []
        for name in (*SERVICES, *self.more_workers()):
            url = f"http://127.0.0.1:{self.port(name)}/readyz"
            try:
                with urllib.request.urlopen(url, timeout=2) as resp:
                    if resp.status != 200:
                        bad.append(name)
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
                bad.append(name)
        return bad

    def wait_ready(self, timeout_s: float) -> list[str]:
        """Wait until every service is ready; returns those still not ready at the timeout."""
        deadline = time.monotonic() + timeout_s
        while (bad := self.not_ready()) and time.monotonic() < deadline:
            time.sleep(1.0)  # between rounds of /readyz polls
        return bad

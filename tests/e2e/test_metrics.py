"""The seed's detection metrics on the running stack after one delivered job (issue 15): each
service's /metrics, scraped with the operator key, has the issue's names with samples."""

from __future__ import annotations

import re
import time
from pathlib import Path

import httpx
import pytest

from .conftest import RunningStack

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]
PORTS = {
    "api": 8000,
    "scheduler": 8101,
    "gpu-worker": 8102,
    "safety": 8103,
    "delivery": 8104,
    "pool-manager": 8105,
}
MODEL, FAMILY = "tiny-sd15", "sd15"
TIER = "fast"  # the session key's plan (pro) runs on the fast tier
SAMPLE = re.compile(r"^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(?P<labels>\{[^}]*\})? (?P<value>\S+)")


def operator_key(stack: RunningStack) -> str:
    """The stack's operator key: var/stack.env of the stack the fixture started."""
    var = Path(stack.env.get("IMAGEGEN_STACK_VAR", ROOT / "var"))
    env = dict(
        line.split("=", 1) for line in (var / "stack.env").read_text().splitlines() if "=" in line
    )
    return env["IMAGEGEN_OPERATOR_KEY"]


def scrape(port: int, key: str) -> list[tuple[str, dict[str, str], float]]:
    """(name, labels, value) of every sample /metrics serves on ``port``."""
    r = httpx.get(
        f"http://127.0.0.1:{port}/metrics", headers={"Authorization": f"Bearer {key}"}, timeout=10
    )
    assert r.status_code == 200, (port, r.status_code)
    out = []
    for line in r.text.splitlines():
        found = SAMPLE.match(line)
        if found is None or line.startswith("#"):
            continue
        labels = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', found.group("labels") or ""))
        out.append((found.group("name"), labels, float(found.group("value"))))
    return out


def total(samples: list[tuple[str, dict[str, str], float]], name: str, **labels: str) -> float:
    """Sum of ``name``'s samples whose labels include ``labels``; -1 when there is none."""
    hits = [v for n, ls, v in samples if n == name and labels.items() <= ls.items()]
    return sum(hits) if hits else -1.0


def test_one_delivered_job_shows_the_detection_metrics(stack: RunningStack) -> None:
    key = operator_key(stack)
    png = stack.delivered_png({"prompt": "a red circle", "model": MODEL, "steps": 4, "seed": 5})
    assert png.startswith(b"\x89PNG")
    for port in PORTS.values():  # one request each, counted before the scrape below
        assert httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=10).status_code == 200
    got = {service: scrape(port, key) for service, port in PORTS.items()}

    scheduler = got["scheduler"]
    for tier in ("turbo", "fast", "relax"):
        assert total(scheduler, "imagegen_queue_depth", tier=tier) >= 0, tier
    assert total(scheduler, "imagegen_queue_wait_seconds_count", tier=TIER) >= 1

    worker = got["gpu-worker"]
    runs = total(worker, "imagegen_warm_hits_total") + total(worker, "imagegen_cold_loads_total")
    assert runs >= 1  # the job ran warm or cold, and was counted either way
    assert total(worker, "imagegen_denoise_step_seconds_count", family=FAMILY) >= 4
    assert total(worker, "imagegen_model_load_seconds_count", source="disk") >= 1  # the preload
    for gauge in ("used_bytes", "free_bytes", "fragmentation_ratio"):
        assert total(worker, f"imagegen_worker_memory_{gauge}") >= 0, gauge
    ratio = total(worker, "imagegen_worker_memory_fragmentation_ratio")
    assert 0 <= ratio <= 1

    for kind in ("prompt", "image"):
        assert total(got["safety"], "imagegen_safety_check_seconds_count", kind=kind) >= 1, kind
    assert total(got["delivery"], "imagegen_delivery_upload_seconds_count") >= 1

    # The pool-manager reads the broker every few seconds (backlog_every_s): its gauges exist
    # once the first reading is in; waited for as a condition.
    deadline = time.monotonic() + 30
    while True:
        pool = scrape(PORTS["pool-manager"], key)
        dlq = total(pool, "imagegen_dlq_records", topic="imagegen.deadletter")
        lag = total(pool, "imagegen_consumer_lag", group="imagegen-safety")
        if (dlq >= 0 and lag >= 0) or time.monotonic() > deadline:
            break
        time.sleep(0.5)  # between scrapes
    assert (
        dlq >= 0 and total(pool, "imagegen_dlq_records", topic="imagegen.webhooks.deadletter") >= 0
    )
    assert lag >= 0

    # HTTP RED on every service; the api's generation routes by their template.
    for service, samples in got.items():
        healthz = {"service": service, "route": "/healthz", "status": "200"}
        assert total(samples, "imagegen_http_requests_total", **healthz) >= 1, service
        assert total(samples, "imagegen_http_request_seconds_count", service=service) >= 1
    api_routes = {ls["route"] for n, ls, _ in got["api"] if n == "imagegen_http_requests_total"}
    assert "/v1/generations" in api_routes
    assert not any(re.search(r"[0-9a-f]{8}-[0-9a-f]{4}", r) for r in api_routes), api_routes

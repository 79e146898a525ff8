"""The seed's detection metrics, observed where they happen (issue 15, ADR 0810).

Each test reads the process's default registry (what /metrics serves) before and after.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI, HTTPException
from fastapi.staticfiles import StaticFiles
from prometheus_client import REGISTRY

from imagegen_gpu_worker.metrics import StepTimer, contiguity, record_memory
from imagegen_pool_manager.adapters.backlog import Backlog
from imagegen_pool_manager.service_layer.backlog import BacklogGauges, collect_loop
from imagegen_runtime.health import Readiness, add_health_routes
from imagegen_runtime.publishing import InMemoryPublisher
from imagegen_scheduler.domain import ModelCatalog, ModelSpec
from imagegen_scheduler.service_layer.scheduling import Scheduler
from imagegen_schemas import Envelope, GenerationParams, Plan, Tier
from imagegen_schemas import jobs as ev
from imagegen_schemas.workers import WorkerHeartbeat, WorkerStatus

pytestmark = pytest.mark.unit


def value(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


# --- HTTP RED metrics (imagegen_runtime.http_metrics) -------------------------------------


def app_with_routes(service: str, static: Path | None = None) -> FastAPI:
    app = FastAPI()
    if static is not None:
        app.mount("/files/static", StaticFiles(directory=static), name="static")

    @app.get("/v1/things/{thing_id}")
    async def thing(thing_id: str) -> dict[str, str]:
        if thing_id == "gone":
            raise HTTPException(410, "gone")
        return {"id": thing_id}

    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError("boom")

    add_health_routes(app, service, Readiness())
    return app


async def test_http_requests_are_counted_by_route_template_method_and_status() -> None:
    service = "svc-red"
    app = app_with_routes(service)
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
        for thing in ("a", "b", "c", "gone"):
            await c.get(f"/v1/things/{thing}")
        assert (await c.get("/no/such/path/1")).status_code == 404
        assert (await c.get("/boom")).status_code == 500
        assert (await c.get("/healthz")).status_code == 200
    route = "/v1/things/{thing_id}"
    base = {"service": service, "method": "GET"}
    assert value("imagegen_http_requests_total", **base, route=route, status="200") == 3
    assert value("imagegen_http_requests_total", **base, route=route, status="410") == 1
    assert value("imagegen_http_requests_total", **base, route="unmatched", status="404") == 1
    assert value("imagegen_http_requests_total", **base, route="/boom", status="500") == 1
    assert value("imagegen_http_requests_total", **base, route="/healthz", status="200") == 1
    assert value("imagegen_http_request_seconds_count", **base, route=route) == 4
    # the raw path never becomes a label value
    assert value("imagegen_http_requests_total", **base, route="/v1/things/a", status="200") == 0


async def test_a_mounted_apps_requests_are_counted_under_its_prefix(tmp_path: Path) -> None:
    (tmp_path / "app.js").write_text("1")
    service = "svc-mount"
    app = app_with_routes(service, static=tmp_path)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        assert (await c.get("/files/static/app.js")).status_code == 200
        assert (await c.get("/files/static/other.js")).status_code == 404
    base = {"service": service, "method": "GET", "route": "/files/static/{path}"}
    assert value("imagegen_http_requests_total", **base, status="200") == 1
    assert value("imagegen_http_requests_total", **base, status="404") == 1


async def test_the_middleware_is_installed_once_per_app() -> None:
    service = "svc-once"
    app = app_with_routes(service)
    add_health_routes(app, service, Readiness())  # a second call (routes added twice)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        await c.get("/healthz")
    labels = {"service": service, "method": "GET", "route": "/healthz", "status": "200"}
    assert value("imagegen_http_requests_total", **labels) == 1


# --- gpu-worker: denoising steps and memory ------------------------------------------------


def test_a_step_is_timed_from_its_first_denoiser_call_to_the_callback() -> None:
    now = [100.0]
    timer = StepTimer("test-family-a", clock=lambda: now[0])
    before = value("imagegen_denoise_step_seconds_count", family="test-family-a")
    for start, second_call, end in ((100.0, 100.1, 100.5), (101.0, 101.2, 102.0)):
        now[0] = start
        timer.started()
        now[0] = second_call  # guidance may call the denoiser twice: the first call counts
        timer.started()
        now[0] = end
        timer.ended()
    assert value("imagegen_denoise_step_seconds_count", family="test-family-a") == before + 2
    assert value("imagegen_denoise_step_seconds_sum", family="test-family-a") == pytest.approx(1.5)


def test_without_denoiser_calls_steps_are_timed_between_callbacks() -> None:
    now = [0.0]
    timer = StepTimer("test-family-b", clock=lambda: now[0])
    for t in (1.0, 1.25, 1.75):
        now[0] = t
        timer.ended()
    # the first callback has nothing to be timed from; the next two are 0.25 s and 0.5 s
    assert value("imagegen_denoise_step_seconds_count", family="test-family-b") == 2
    assert value("imagegen_denoise_step_seconds_sum", family="test-family-b") == 0.75


def heartbeat(worker: str, fragmentation: float | None) -> WorkerHeartbeat:
    return WorkerHeartbeat(
        worker_id=worker,
        status=WorkerStatus.IDLE,
        gpu_type="test",
        memory_total_bytes=10_000,
        memory_free_bytes=4_000,
        largest_free_block_bytes=None if fragmentation is None else 1_000,
        fragmentation_ratio=fragmentation,
    )


def test_memory_gauges_follow_the_heartbeat_and_export_contiguity() -> None:
    record_memory(heartbeat("w-cuda", 0.75))  # the heartbeat's ratio: 1 - largest / free
    assert value("imagegen_worker_memory_used_bytes", worker="w-cuda") == 6_000
    assert value("imagegen_worker_memory_free_bytes", worker="w-cuda") == 4_000
    assert value("imagegen_worker_memory_fragmentation_ratio", worker="w-cuda") == 0.25
    record_memory(heartbeat("w-cpu", None))  # CPU: the budget model's one pool
    assert value("imagegen_worker_memory_fragmentation_ratio", worker="w-cpu") == 1.0
    assert contiguity(heartbeat("x", 1.0)) == 0.0


# --- pool-manager: dead letters and lag ----------------------------------------------------


def test_backlog_gauges_are_set_and_series_that_are_gone_are_removed() -> None:
    gauges = BacklogGauges()
    gauges.set(Backlog({"t.dlq": 3}, {("g1", "t.a"): 5, ("g2", "t.a"): 0}))
    assert value("imagegen_dlq_records", topic="t.dlq") == 3
    assert value("imagegen_consumer_lag", group="g1", topic="t.a") == 5
    gauges.set(Backlog({"t.dlq": 4}, {("g2", "t.a"): 7}))
    assert value("imagegen_dlq_records", topic="t.dlq") == 4
    assert (
        REGISTRY.get_sample_value("imagegen_consumer_lag", {"group": "g1", "topic": "t.a"}) is None
    )
    assert value("imagegen_consumer_lag", group="g2", topic="t.a") == 7


async def test_the_collector_rides_out_a_failed_reading_and_stops_when_asked() -> None:
    stop = asyncio.Event()
    calls: list[int] = []

    class Reader:
        def read(self) -> Backlog:
            calls.append(1)
            if len(calls) == 1:
                raise RuntimeError("broker away")
            stop.set()  # the second reading is the last
            return Backlog({"t.loop.dlq": 9}, {("g-loop", "t.a"): 2})

    await asyncio.wait_for(collect_loop(Reader(), stop, every_s=0.01), timeout=10)
    assert len(calls) == 2
    assert value("imagegen_dlq_records", topic="t.loop.dlq") == 9
    assert value("imagegen_consumer_lag", group="g-loop", topic="t.a") == 2


# --- scheduler: queue depth and wait -------------------------------------------------------

CATALOG = ModelCatalog(
    models={"m": ModelSpec("m", "sd15", 0.01, (0.1, 0.2), 0.01, 0.05)}, adapters={}
)
PARAMS = GenerationParams(
    prompt="p", model="m", width=64, height=64, steps=2, guidance_scale=5, seed=3
)


async def test_the_wait_is_observed_for_the_jobs_tier_when_it_is_assigned() -> None:
    now = [1_800_000_000.0]
    scheduler = Scheduler(InMemoryPublisher(), CATALOG, clock=lambda: now[0])
    scheduler.live = True

    async def given(payload: ev.Payload) -> None:
        key = getattr(payload, "job_id", None) or getattr(payload, "worker_id", "x")
        envelope = Envelope.wrap(
            payload,
            correlation_id=key,
            producer="t",
            occurred_at=datetime.fromtimestamp(now[0], UTC),
        )
        await scheduler.on_event(envelope, payload, None, True)
        await scheduler.after_batch()

    count = value("imagegen_queue_wait_seconds_count", tier="relax")
    total = value("imagegen_queue_wait_seconds_sum", tier="relax")
    request = ev.GenerationRequested(
        job_id="j-wait", user_id="u", plan=Plan.PRO, tier=Tier.RELAX, params=PARAMS
    )
    await given(request)
    await given(ev.PromptModerated(job_id="j-wait", verdict=ev.Verdict.ALLOWED))
    assert value("imagegen_queue_depth", tier="relax") == 1  # no worker yet
    now[0] += 12.0
    await given(
        WorkerHeartbeat(
            worker_id="w1",
            status=WorkerStatus.IDLE,
            gpu_type="cpu",
            memory_total_bytes=16 * 10**9,
            memory_free_bytes=10**9,
            capabilities=("sd15",),
        )
    )
    assert value("imagegen_queue_wait_seconds_count", tier="relax") == count + 1
    assert value("imagegen_queue_wait_seconds_sum", tier="relax") - total == pytest.approx(12.0)
    assert value("imagegen_queue_depth", tier="relax") == 0

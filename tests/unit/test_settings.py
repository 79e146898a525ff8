"""A wrong or missing setting stops each service at start-up with a message naming it."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.unit

SERVICES = ["api", "scheduler", "gpu-worker", "safety", "delivery", "pool-manager"]


def start(service: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("IMAGEGEN_")}
    module = "imagegen_" + service.replace("-", "_")
    return subprocess.run(
        [sys.executable, "-m", module],
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def prefix(service: str) -> str:
    return "IMAGEGEN_" + service.upper().replace("-", "_") + "_"


@pytest.mark.parametrize("service", SERVICES)
def test_missing_kafka_bootstrap_is_named(service: str) -> None:
    r = start(service, {})
    assert r.returncode == 2
    assert f"{prefix(service)}KAFKA_BOOTSTRAP is required but not set" in r.stderr


@pytest.mark.parametrize("service", SERVICES)
def test_wrong_setting_is_named_with_the_value(service: str) -> None:
    r = start(
        service,
        {
            f"{prefix(service)}KAFKA_BOOTSTRAP": "127.0.0.1:9092",
            f"{prefix(service)}HTTP_PORT": "99999",
        },
    )
    assert r.returncode == 2
    assert f"{prefix(service)}HTTP_PORT is invalid" in r.stderr
    assert "99999" in r.stderr


def test_service_specific_settings_are_checked() -> None:
    r = start(
        "delivery",
        {
            "IMAGEGEN_DELIVERY_KAFKA_BOOTSTRAP": "127.0.0.1:9092",
            "IMAGEGEN_DELIVERY_SIGNING_KEY": "short",
        },
    )
    assert r.returncode == 2 and "IMAGEGEN_DELIVERY_SIGNING_KEY is invalid" in r.stderr
    r = start(
        "api",
        {
            "IMAGEGEN_API_KAFKA_BOOTSTRAP": "127.0.0.1:9092",
            "IMAGEGEN_API_DATABASE_URL": "mysql://x",
        },
    )
    assert r.returncode == 2 and "IMAGEGEN_API_DATABASE_URL is invalid" in r.stderr


RUN_MAIN_PROBE = """
import gc, sys
from fastapi import FastAPI
from pydantic_settings import SettingsConfigDict
from imagegen_runtime import standard
from imagegen_runtime.health import Readiness
from imagegen_runtime.service import ServiceApp
from imagegen_runtime.settings import ServiceSettings

class Probe(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="IMAGEGEN_PROBE_", extra="ignore", frozen=True)
    http_port: int = 8999

async def serve(app, host, port):  # instead of uvicorn: report what the process runs with
    print("thresholds", *gc.get_threshold())
    return 0

standard.serve = serve
standard.run_main("probe", Probe, lambda s: ServiceApp("probe", FastAPI(), Readiness()))
"""


@pytest.mark.parametrize(
    ("setting", "expected"),
    [(None, "700 10 10"), ("python", "700 10 10"), ("50000,20,100", "50000 20 100")],
)
def test_a_service_runs_with_the_gc_thresholds_it_is_given(
    setting: str | None, expected: str
) -> None:
    """ADR 0642: ``run_main`` sets the collector's thresholds before the service serves;
    'python' (every service's default) keeps Python's own."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("IMAGEGEN_")}
    env = {**clean, "IMAGEGEN_PROBE_KAFKA_BOOTSTRAP": "127.0.0.1:9092"}
    if setting is not None:
        env["IMAGEGEN_PROBE_GC_THRESHOLDS"] = setting
    r = subprocess.run(
        [sys.executable, "-c", RUN_MAIN_PROBE], env=env, capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 0, r.stderr
    assert f"thresholds {expected}" in r.stdout


def test_the_api_collects_garbage_less_often_by_default() -> None:
    """ADR 0642: the API's default thresholds are raised (a full collection stalls every request
    in flight); the other services keep Python's unless told otherwise."""
    from imagegen_api.config import ApiSettings
    from imagegen_scheduler.config import SchedulerSettings

    api = ApiSettings(kafka_bootstrap="127.0.0.1:9092", database_url="postgresql+asyncpg://u@h/d")
    assert api.gc_thresholds == "50000,20,100"
    assert SchedulerSettings(kafka_bootstrap="127.0.0.1:9092").gc_thresholds == "python"


@pytest.mark.parametrize("value", ["0,10,10", "1000,10", "lots", "-5,1,1"])
def test_bad_gc_thresholds_are_named(value: str) -> None:
    r = start(
        "api",
        {"IMAGEGEN_API_KAFKA_BOOTSTRAP": "127.0.0.1:9092", "IMAGEGEN_API_GC_THRESHOLDS": value},
    )
    assert r.returncode == 2
    assert "IMAGEGEN_API_GC_THRESHOLDS is invalid" in r.stderr

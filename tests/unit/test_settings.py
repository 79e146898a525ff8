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

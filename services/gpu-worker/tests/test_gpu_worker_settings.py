"""The gpu-worker's model memory budget setting: unset by default, positive when set."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from pydantic import ValidationError

from imagegen_gpu_worker.config import GpuWorkerSettings

pytestmark = pytest.mark.unit
BOOTSTRAP = "127.0.0.1:9092"


def test_budget_is_unset_by_default_and_read_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("IMAGEGEN_GPU_WORKER_MODEL_MEMORY_BUDGET_MB", raising=False)
    assert GpuWorkerSettings(kafka_bootstrap=BOOTSTRAP).model_memory_budget_mb is None
    monkeypatch.setenv("IMAGEGEN_GPU_WORKER_MODEL_MEMORY_BUDGET_MB", "20480")
    assert GpuWorkerSettings(kafka_bootstrap=BOOTSTRAP).model_memory_budget_mb == 20480


@pytest.mark.parametrize("value", [0, -1])
def test_budget_of_zero_or_less_is_rejected(value: int) -> None:
    with pytest.raises(ValidationError, match="model_memory_budget_mb") as info:
        GpuWorkerSettings(kafka_bootstrap=BOOTSTRAP, model_memory_budget_mb=value)
    assert "greater than 0" in str(info.value)


def test_service_stops_at_start_up_naming_the_budget_variable() -> None:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("IMAGEGEN_")}
    env = {
        **clean,
        "IMAGEGEN_GPU_WORKER_KAFKA_BOOTSTRAP": BOOTSTRAP,
        "IMAGEGEN_GPU_WORKER_MODEL_MEMORY_BUDGET_MB": "0",
    }
    r = subprocess.run(
        [sys.executable, "-m", "imagegen_gpu_worker"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 2
    assert "IMAGEGEN_GPU_WORKER_MODEL_MEMORY_BUDGET_MB is invalid" in r.stderr
    assert "greater than 0" in r.stderr

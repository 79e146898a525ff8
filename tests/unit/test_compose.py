"""deploy/docker-compose.yml matches the services that exist (Docker cannot run here)."""

from __future__ import annotations

import importlib
import importlib.util
import re
from pathlib import Path

import pytest
import yaml

from imagegen_runtime.settings import env_vars

pytestmark = pytest.mark.unit
ROOT = Path(__file__).resolve().parents[2]
COMPOSE = yaml.safe_load((ROOT / "deploy/docker-compose.yml").read_text())
SETTINGS = {
    "api": "imagegen_api.config:ApiSettings",
    "scheduler": "imagegen_scheduler.config:SchedulerSettings",
    "gpu-worker": "imagegen_gpu_worker.config:GpuWorkerSettings",
    "safety": "imagegen_safety.config:SafetySettings",
    "delivery": "imagegen_delivery.config:DeliverySettings",
    "pool-manager": "imagegen_pool_manager.config:PoolManagerSettings",
}


def settings_class(service: str) -> type:
    module, cls = SETTINGS[service].split(":")
    return getattr(importlib.import_module(module), cls)  # type: ignore[no-any-return]


def test_every_service_of_the_design_is_in_compose() -> None:
    assert set(SETTINGS) <= set(COMPOSE["services"])


@pytest.mark.parametrize("name", sorted(n for n, s in COMPOSE["services"].items() if "build" in s))
def test_dockerfile_and_entrypoint_exist(name: str) -> None:
    build = COMPOSE["services"][name]["build"]
    dockerfile = (ROOT / "deploy" / build["context"] / build["dockerfile"]).resolve()
    assert dockerfile.exists(), dockerfile
    text = dockerfile.read_text()
    cmd = COMPOSE["services"][name].get("command") or re.search(r"CMD (\[.*\])", text).group(1)
    if isinstance(cmd, str):
        cmd = yaml.safe_load(cmd)
    if cmd[1] == "-m":
        assert importlib.util.find_spec(f"{cmd[2]}.__main__") is not None, cmd


@pytest.mark.parametrize("service", sorted(SETTINGS))
def test_every_variable_passed_is_read_by_the_service(service: str) -> None:
    passed = set(COMPOSE["services"][service].get("environment", {}))
    unknown = passed - env_vars(settings_class(service))
    assert not unknown, f"{service} is passed settings it never reads: {sorted(unknown)}"


@pytest.mark.parametrize("service", sorted(SETTINGS))
def test_every_required_setting_is_passed(service: str) -> None:
    cls = settings_class(service)
    prefix = cls.model_config["env_prefix"]
    required = {f"{prefix}{n}".upper() for n, f in cls.model_fields.items() if f.is_required()}
    missing = required - set(COMPOSE["services"][service].get("environment", {}))
    assert not missing, f"{service} would stop at start-up: {sorted(missing)} not passed"


@pytest.mark.parametrize("service", sorted(SETTINGS))
def test_local_stack_passes_the_same_contract(service: str) -> None:
    import sys

    sys.path.insert(0, str(ROOT / "deploy"))
    import stack  # deploy/stack.py

    local = set(stack.service_env(stack.Stack(var=ROOT / "var"), service))
    assert local <= env_vars(settings_class(service))

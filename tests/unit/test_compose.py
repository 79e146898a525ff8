"""deploy/docker-compose.yml and deploy/Dockerfile match the services that exist.

Docker cannot run here, so the build is checked statically and the image's CMD is run with a
fake ``python``.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import re
import subprocess
import tomllib
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
    # the api's job projector as its own process (ADR 0641): the api's image and settings
    "api-projector": "imagegen_api.config:ApiSettings",
}
BUILT_AS = {"api-projector": "api"}  # a compose service that runs another's image


def settings_class(service: str) -> type:
    module, cls = SETTINGS[service].split(":")
    return getattr(importlib.import_module(module), cls)  # type: ignore[no-any-return]


def test_every_service_of_the_design_is_in_compose() -> None:
    assert set(SETTINGS) <= set(COMPOSE["services"])


BUILT = sorted(n for n, s in COMPOSE["services"].items() if "build" in s)
DOCKERFILE = ROOT / "deploy" / "Dockerfile"


def build_of(name: str) -> tuple[Path, Path, str]:
    """(context, Dockerfile, SERVICE argument) of a compose service, paths resolved."""
    build = COMPOSE["services"][name]["build"]
    context = (ROOT / "deploy" / build["context"]).resolve()
    return context, (context / build["dockerfile"]).resolve(), build["args"]["SERVICE"]


def image_command(service_arg: str, tmp_path: Path) -> list[str]:
    """What the image's CMD runs for a SERVICE build argument (``python`` replaced by echo)."""
    text = DOCKERFILE.read_text()
    assert re.search(r"^ENV .*\bIMAGEGEN_SERVICE=\$\{SERVICE\}", text, re.MULTILINE)
    cmd = json.loads(re.search(r"^CMD (\[.*\])$", text, re.MULTILINE).group(1))
    fake = tmp_path / "python"
    fake.write_text('#!/bin/sh\necho python "$@"\n')
    fake.chmod(0o755)
    env = {"PATH": f"{tmp_path}:/usr/bin:/bin", "IMAGEGEN_SERVICE": service_arg}
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True, timeout=10)
    return out.stdout.split()


def test_one_dockerfile_for_every_service() -> None:
    assert {build_of(n)[:2] for n in BUILT} == {(ROOT, DOCKERFILE)}
    found = [*ROOT.glob("Dockerfile*"), *ROOT.glob("deploy/Dockerfile*")]
    for top in ("schemas", "libs", "services", "tools"):
        found += (ROOT / top).glob("**/Dockerfile*")
    others = [p for p in found if p != DOCKERFILE]
    assert others == [], "one image definition: pass --build-arg SERVICE=... to deploy/Dockerfile"


@pytest.mark.parametrize("service", sorted(SETTINGS))
def test_each_service_is_built_as_itself(service: str) -> None:
    assert build_of(service)[2] == BUILT_AS.get(service, service)


@pytest.mark.parametrize("name", BUILT)
def test_the_build_argument_names_a_locked_workspace_package(name: str) -> None:
    service_arg = build_of(name)[2]
    project = tomllib.loads((ROOT / "services" / service_arg / "pyproject.toml").read_text())
    assert project["project"]["name"] == f"imagegen-{service_arg}"
    assert f'name = "imagegen-{service_arg}"' in (ROOT / "uv.lock").read_text()
    assert '--package "imagegen-${SERVICE}"' in DOCKERFILE.read_text()


@pytest.mark.parametrize("name", BUILT)
def test_the_image_runs_an_entrypoint_that_exists(name: str, tmp_path: Path) -> None:
    cmd = COMPOSE["services"][name].get("command") or image_command(build_of(name)[2], tmp_path)
    assert cmd[:2] == ["python", "-m"] or cmd[:2] == ["python", "-c"], cmd
    if cmd[1] == "-m":
        assert importlib.util.find_spec(f"{cmd[2]}.__main__") is not None, cmd


def test_the_image_runs_the_service_named_by_its_build_argument(tmp_path: Path) -> None:
    assert image_command("gpu-worker", tmp_path) == ["python", "-m", "imagegen_gpu_worker"]


def test_dockerignore_lets_in_every_workspace_member() -> None:
    allowed = set((ROOT / ".dockerignore").read_text().split())
    root = tomllib.loads((ROOT / "pyproject.toml").read_text())
    needed = {m.split("/")[0] for m in root["tool"]["uv"]["workspace"]["members"]}
    needed |= {"pyproject.toml", "uv.lock", "src"}
    assert {f"!{n}" for n in needed} <= allowed


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


@pytest.mark.parametrize("service", sorted(SETTINGS))
def test_every_service_can_check_operator_keys(service: str) -> None:
    """Regression (stops 19-20): under compose the scheduler, gpu-worker and safety had no key
    store, so their operator-only endpoints (/metrics, /v1/queues) answered 503 to every key and
    the /ops page's queue panel showed the scheduler as refusing (ADR 0610: fail closed)."""
    prefix = settings_class(service).model_config["env_prefix"].upper()
    passed = set(COMPOSE["services"][service].get("environment", {}))
    stores = {f"{prefix}DATABASE_URL", f"{prefix}AUTH_DATABASE_URL"} & passed
    assert stores, f"{service} is passed no key store ({prefix}AUTH_DATABASE_URL)"

"""`IMAGEGEN_STACK_WORKERS=N make up`: N gpu-worker programs, each with its own id, port and
memory budget; one worker when unset."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit
ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("imagegen_stack_fleet", ROOT / "deploy/stack.py")
assert _spec and _spec.loader
stack = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = stack  # dataclasses look the module up while the class is built
_spec.loader.exec_module(stack)

WORKER = "IMAGEGEN_GPU_WORKER_"


def test_one_worker_by_default(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("IMAGEGEN_STACK_WORKERS", raising=False)
    monkeypatch.delenv("IMAGEGEN_STACK_WORKER_BUDGETS_MB", raising=False)
    st = stack.Stack(var=tmp_path)
    assert [p for p in st.programs() if p.startswith("gpu-worker")] == ["gpu-worker"]
    env = stack.service_env(st, "gpu-worker")
    assert env[f"{WORKER}WORKER_ID"] == "worker-local-1"
    assert env[f"{WORKER}HTTP_PORT"] == "8102"
    assert f"{WORKER}MODEL_MEMORY_BUDGET_MB" not in env


def test_n_workers_with_distinct_ids_ports_and_cycled_budgets(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("IMAGEGEN_STACK_WORKERS", "3")
    monkeypatch.setenv("IMAGEGEN_STACK_WORKER_BUDGETS_MB", "512,256")
    monkeypatch.setenv("IMAGEGEN_STACK_PORT_OFFSET", "100")
    st = stack.Stack(var=tmp_path)
    workers = [p for p in st.programs() if p.startswith("gpu-worker")]
    assert workers == ["gpu-worker", "gpu-worker-2", "gpu-worker-3"]
    envs = [stack.service_env(st, w) for w in workers]
    assert [e[f"{WORKER}WORKER_ID"] for e in envs] == [f"worker-local-{i}" for i in (1, 2, 3)]
    assert [e[f"{WORKER}MODEL_MEMORY_BUDGET_MB"] for e in envs] == ["512", "256", "512"]
    ports = [st.port(p) for p in st.programs()]
    assert len(set(ports)) == len(ports)  # no two programs share a port
    assert [e[f"{WORKER}HTTP_PORT"] for e in envs] == ["8202", "8212", "8213"]
    assert len(st.programs()) == 9  # the five other services and the api-projector once each


def test_the_supervisor_config_has_every_worker(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("IMAGEGEN_STACK_WORKERS", "2")
    monkeypatch.setattr(stack, "pg_bin", lambda: Path("/usr/lib/postgresql/15/bin"))
    st = stack.Stack(var=tmp_path)
    st.run.mkdir(parents=True)
    conf = stack.write_supervisor_config(st).read_text()
    assert "[program:gpu-worker]" in conf and "[program:gpu-worker-2]" in conf
    assert 'IMAGEGEN_GPU_WORKER_WORKER_ID="worker-local-2"' in conf


@pytest.mark.parametrize(("workers", "budgets"), [("0", ""), ("17", ""), ("2", "512,0")])
def test_a_bad_fleet_setting_is_refused_by_name(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, workers: str, budgets: str
) -> None:
    monkeypatch.setenv("IMAGEGEN_STACK_WORKERS", workers)
    monkeypatch.setenv("IMAGEGEN_STACK_WORKER_BUDGETS_MB", budgets)
    with pytest.raises(SystemExit, match="IMAGEGEN_STACK_WORKER"):
        stack.Stack(var=tmp_path)


@pytest.mark.parametrize(("pool", "guard"), [(None, None), ("ours", None), ("none", "false")])
def test_the_pool_setting_reaches_the_pool_manager_and_the_schedulers_switch_guard(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, pool: str | None, guard: str | None
) -> None:
    """IMAGEGEN_STACK_POOL=none turns off the whole warm pool: the pool-manager's policy and the
    scheduler's switch guard (ADR 0712; on by default in the scheduler's settings)."""
    if pool is None:
        monkeypatch.delenv("IMAGEGEN_STACK_POOL", raising=False)
    else:
        monkeypatch.setenv("IMAGEGEN_STACK_POOL", pool)
    st = stack.Stack(var=tmp_path)
    assert stack.service_env(st, "pool-manager").get("IMAGEGEN_POOL_MANAGER_POOL") == pool
    assert stack.service_env(st, "scheduler").get("IMAGEGEN_SCHEDULER_GUARD_SWITCHES") == guard


def _quiet_infra(monkeypatch: pytest.MonkeyPatch, running: bool) -> list[tuple[str, ...]]:
    """infra_up's downloads, processes and waits stubbed; supervisord ``running`` or not.
    Returns the supervisorctl calls."""
    calls: list[tuple[str, ...]] = []
    for name in (
        "ensure_kafka_jars",
        "ensure_s3_jars",
        "ensure_pg_cluster",
        "start",
        "wait_kafka",
        "wait_pg",
        "ensure_database",
        "wait_s3",
        "ensure_topics",
        "write_kafka_config",
        "write_s3_config",
        "sh",
    ):
        monkeypatch.setattr(stack, name, lambda *a, **k: None)
    monkeypatch.setattr(stack, "supervisord_pid", lambda st: 4242 if running else None)

    class Done:
        returncode = 0

    def ctl(st: object, *args: str, check: bool = False) -> Done:
        calls.append(args)
        return Done()

    monkeypatch.setattr(stack, "ctl", ctl)
    return calls


def test_infra_up_leaves_a_running_fleet_as_make_up_made_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # `IMAGEGEN_STACK_WORKERS=4 ... make up`, then `make test` (infra-up, no fleet settings):
    # the extra workers were dropped and the others restarted without their budgets.
    monkeypatch.setenv("IMAGEGEN_STACK_WORKERS", "4")
    monkeypatch.setenv("IMAGEGEN_STACK_WORKER_BUDGETS_MB", "64,32")
    calls = _quiet_infra(monkeypatch, running=False)
    fleet = stack.Stack(var=tmp_path)
    stack.write_supervisor_config(fleet)
    conf = (tmp_path / "run" / "supervisord.conf").read_text()
    assert "[program:gpu-worker-4]" in conf
    monkeypatch.delenv("IMAGEGEN_STACK_WORKERS")
    monkeypatch.delenv("IMAGEGEN_STACK_WORKER_BUDGETS_MB")
    calls = _quiet_infra(monkeypatch, running=True)
    stack.infra_up(stack.Stack(var=tmp_path))
    assert (tmp_path / "run" / "supervisord.conf").read_text() == conf
    assert ("update",) not in calls
    stack.infra_up(stack.Stack(var=tmp_path), reconfigure=True)  # what `make up` does
    assert "[program:gpu-worker-4]" not in (tmp_path / "run" / "supervisord.conf").read_text()
    assert ("update",) in calls


def test_infra_up_writes_the_programs_when_no_stack_runs(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("IMAGEGEN_STACK_WORKERS", raising=False)
    _quiet_infra(monkeypatch, running=False)
    stack.infra_up(stack.Stack(var=tmp_path))
    assert "[program:gpu-worker]" in (tmp_path / "run" / "supervisord.conf").read_text()

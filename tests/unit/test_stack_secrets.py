"""Every secret-bearing file the local stack writes is 0600 from the moment it exists, in 0700
folders where they hold secrets (issue 14: var/run/supervisord.conf was world-readable and held
the database password and the URL signing key)."""

from __future__ import annotations

import importlib.util
import os
import stat
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit
ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("imagegen_stack_secrets", ROOT / "deploy/stack.py")
assert _spec and _spec.loader
stack = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = stack  # dataclasses look the module up while the class is built
_spec.loader.exec_module(stack)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def loose_umask() -> Iterator[None]:
    """umask 0: a file made with the default mode would be 0666, a folder 0777."""
    old = os.umask(0)
    yield
    os.umask(old)


@pytest.fixture
def seen_before_rename(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, int]]:
    """(name, mode) of each file as it was just before it was moved into place."""
    seen: list[tuple[str, int]] = []
    replace = os.replace

    def spy(src: str | Path, dst: str | Path) -> None:
        seen.append((Path(dst).name, mode(Path(src))))
        replace(src, dst)

    monkeypatch.setattr(stack.os, "replace", spy)
    return seen


@pytest.fixture
def st(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> object:
    monkeypatch.setattr(stack, "pg_bin", lambda: Path("/usr/lib/postgresql/16/bin"))
    monkeypatch.delenv("IMAGEGEN_STACK_WORKERS", raising=False)
    return stack.Stack(var=tmp_path / "var")


@pytest.mark.usefixtures("loose_umask")
def test_supervisord_conf_is_0600_in_a_0700_folder(
    st: object, seen_before_rename: list[tuple[str, int]]
) -> None:
    conf = stack.write_supervisor_config(st)
    text = conf.read_text()
    assert stack.Stack.secret(st, "pg_password") in text  # it does hold the secrets
    assert stack.Stack.secret(st, "signing_key", 32) in text
    assert mode(conf) == 0o600
    assert mode(conf.parent) == 0o700
    assert mode(conf.parent.parent / "secrets") == 0o700
    for name in ("pg_password", "signing_key"):
        assert mode(conf.parent.parent / "secrets" / name) == 0o600
    assert seen_before_rename and all(m == 0o600 for _, m in seen_before_rename)
    assert {name for name, _ in seen_before_rename} >= {"supervisord.conf", "pg_password"}


@pytest.mark.usefixtures("loose_umask")
def test_an_old_world_readable_conf_and_folder_are_replaced_private(st: object) -> None:
    run = st.var / "run"  # type: ignore[attr-defined]
    run.mkdir(parents=True, mode=0o755)
    (run / "supervisord.conf").write_text("old")
    (run / "supervisord.conf").chmod(0o644)
    conf = stack.write_supervisor_config(st)
    assert mode(conf) == 0o600 and mode(run) == 0o700
    assert conf.read_text() != "old"
    assert sorted(p.name for p in run.iterdir()) == ["supervisord.conf"]  # no temp file left


@pytest.mark.usefixtures("loose_umask")
def test_stack_env_is_0600_and_names_the_operator_key(
    st: object, seen_before_rename: list[tuple[str, int]]
) -> None:
    secrets_dir = st.var / "secrets"  # type: ignore[attr-defined]
    stack.private_dir(secrets_dir)
    stack.write_private(secrets_dir / "dev_api_key", "igk_dev\n")
    stack.write_private(secrets_dir / "operator_api_key", "igk_ops\n")
    stack.write_env_file(st)
    env_file = st.var / "stack.env"  # type: ignore[attr-defined]
    lines = env_file.read_text().splitlines()
    assert "IMAGEGEN_API_KEY=igk_dev" in lines
    assert "IMAGEGEN_OPERATOR_KEY=igk_ops" in lines
    assert any(line.startswith("IMAGEGEN_DATABASE_URL=postgresql") for line in lines)
    assert mode(env_file) == 0o600
    assert mode(secrets_dir / "operator_api_key") == 0o600
    assert ("stack.env", 0o600) in seen_before_rename


def test_every_service_can_reach_the_key_store_for_operator_endpoints(st: object) -> None:
    for program in ("api", "scheduler", "gpu-worker", "safety", "delivery", "pool-manager"):
        prefix = "IMAGEGEN_" + program.upper().replace("-", "_") + "_"
        env = stack.service_env(st, program)
        own, auth = env.get(f"{prefix}DATABASE_URL"), env.get(f"{prefix}AUTH_DATABASE_URL")
        assert (own is None) != (auth is None), program  # its own database holds api_keys
        assert (own or auth or "").startswith("postgresql+asyncpg://"), program
    assert "IMAGEGEN_SCHEDULER_AUTH_DATABASE_URL" in stack.service_env(st, "scheduler")

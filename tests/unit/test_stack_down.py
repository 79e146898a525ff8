"""`stack.py down` finds its own stragglers and never another stack's processes."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit
ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("imagegen_stack", ROOT / "deploy/stack.py")
assert _spec and _spec.loader
stack = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = stack  # dataclasses look the module up while the class is built
_spec.loader.exec_module(stack)

# A process that lives until its stdin closes (the test holds the pipe), then exits.
WAIT = "import sys; sys.stdin.read()"


@pytest.fixture
def spawn() -> Iterator[object]:
    procs: list[subprocess.Popen[bytes]] = []

    def start(*argv: str, env: dict[str, str] | None = None) -> int:
        p = subprocess.Popen(
            [sys.executable, "-c", WAIT, *argv],
            stdin=subprocess.PIPE,
            env={**os.environ, **(env or {})},
        )
        procs.append(p)
        return p.pid

    yield start
    for p in procs:
        p.kill()
        p.wait()


def test_matches_own_marker_and_var_path_only(tmp_path: Path, spawn) -> None:  # type: ignore[no-untyped-def]
    mine, other = stack.Stack(var=tmp_path / "a"), stack.Stack(var=tmp_path / "b")
    by_env = spawn(env={"IMAGEGEN_STACK_VAR": str(mine.var.resolve())})
    by_cmdline = spawn(str(mine.var.resolve() / "kafka" / "server.properties"))
    others = [
        spawn(env={"IMAGEGEN_STACK_VAR": str(other.var.resolve())}),
        spawn(str(other.var.resolve() / "pg" / "data")),
        spawn(f"{mine.jars}/*"),  # the Kafka jars are shared by every stack
        spawn("-m", "imagegen_api"),  # so is a service's module name
    ]
    found = set(stack._our_processes(mine))
    assert {by_env, by_cmdline} <= found
    assert not found & set(others)


def test_down_kills_stragglers_and_waits_until_they_are_gone(tmp_path: Path, spawn) -> None:  # type: ignore[no-untyped-def]
    st = stack.Stack(var=tmp_path / "var")
    (st.var / "run").mkdir(parents=True)  # no supervisord.pid: supervisord already gone
    straggler = spawn(env={"IMAGEGEN_STACK_VAR": str(st.var.resolve())})
    bystander = spawn(env={"IMAGEGEN_STACK_VAR": str((tmp_path / "other").resolve())})
    stack.down(st, grace_s=0.2)
    assert not stack._alive(straggler)
    assert stack._alive(bystander)


def test_down_never_counts_its_caller_even_if_its_arguments_name_the_var(tmp_path: Path) -> None:
    # The chaos soak runs `stack.py down` from a process started with `--var DIR`: before,
    # `down` killed that process (and its `timeout` wrapper) as stragglers of the stack.
    var = (tmp_path / "var").resolve()
    child = (
        "import importlib.util, os, sys; from pathlib import Path;"
        f"spec = importlib.util.spec_from_file_location('s', {str(ROOT / 'deploy/stack.py')!r});"
        "m = importlib.util.module_from_spec(spec); sys.modules['s'] = m;"
        "spec.loader.exec_module(m);"
        f"print(os.getppid(), m._our_processes(m.Stack(var=Path({str(var)!r}))))"
    )
    caller = f"import subprocess, sys; subprocess.run([sys.executable, '-c', {child!r}])"
    out = subprocess.run(
        [sys.executable, "-c", caller, "--var", str(var)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    parent, found = out.split(" ", 1)
    assert parent.isdigit() and parent not in found, out

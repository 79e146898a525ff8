"""The fault injector's parts: the seeded choice, the broken blob folder, pause and heal."""

from __future__ import annotations

import random
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from imagegen_chaos.faults import BlobFault, FaultInjector, FaultPlan, next_fault

pytestmark = pytest.mark.unit


def test_the_choice_is_seeded_and_never_hits_a_target_under_a_fault() -> None:
    plan = FaultPlan()
    a = [next_fault(random.Random(7), plan, set()) for _ in range(3)]
    assert a == [next_fault(random.Random(7), plan, set()) for _ in range(3)]
    rng = random.Random(1)
    busy = set(plan.targets) - {"kafka"}
    assert {next_fault(rng, plan, busy)[0] for _ in range(50)} == {"kafka"}  # type: ignore[index]
    assert next_fault(rng, plan, set(plan.targets)) is None


def test_kinds_and_lengths_follow_the_plan() -> None:
    plan = FaultPlan(pause_s=(5, 20), unwritable_s=(1, 2), kill_share=0.5)
    rng = random.Random(3)
    seen = [next_fault(rng, plan, set()) for _ in range(300)]
    kinds = {(t == "blobs", k) for t, k, _ in seen}  # type: ignore[misc]
    assert kinds == {(True, "unwritable"), (False, "kill"), (False, "pause")}
    assert all(5 <= d <= 20 for _, k, d in seen if k == "pause")  # type: ignore[misc]
    assert all(1 <= d <= 2 for _, k, d in seen if k == "unwritable")  # type: ignore[misc]


def test_a_broken_blob_folder_refuses_writes_and_comes_back_whole(tmp_path: Path) -> None:
    blobs = tmp_path / "blobs"
    (blobs / "job1").mkdir(parents=True)
    (blobs / "job1" / "0.png").write_bytes(b"png")
    fault = BlobFault(blobs)
    fault.break_()
    with pytest.raises(OSError):  # what the worker's LocalBlobStore.put does first
        (blobs / "job2").mkdir(parents=True, exist_ok=True)
    with pytest.raises(OSError):
        (blobs / "job1" / "0.png").read_bytes()
    fault.restore()
    assert (blobs / "job1" / "0.png").read_bytes() == b"png"
    (blobs / "job2").mkdir()
    fault.restore()  # nothing broken: a no-op
    assert blobs.is_dir()


@dataclass
class OneProcess:
    pid_: int | None

    def pid(self, program: str) -> int | None:
        return self.pid_


def _state(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1][0]


def _becomes(pid: int, states: str, timeout_s: float = 10) -> str:
    """The process's state once it is one of ``states`` (signals land asynchronously)."""
    deadline = time.monotonic() + timeout_s
    while _state(pid) not in states and time.monotonic() < deadline:
        time.sleep(0.01)  # poll /proc for the state change
    return _state(pid)


def test_a_pause_stops_the_process_until_heal(tmp_path: Path) -> None:
    p = subprocess.Popen(
        [sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE
    )
    try:
        plan = FaultPlan(kill_share=0.0, pause_s=(60, 60), targets=("api",))
        inj = FaultInjector(OneProcess(p.pid), BlobFault(tmp_path / "b"), plan, seed=0)  # type: ignore[arg-type]
        fault = inj.inject(random.Random(0))
        assert fault is not None and (fault.target, fault.kind) == ("api", "pause")
        assert _becomes(p.pid, "T") == "T"
        assert inj.inject(random.Random(0)) is None  # the only target is still paused
        inj.heal()
        assert _becomes(p.pid, "SR") in "SR"
    finally:
        p.kill()
        p.wait()


def test_a_target_that_is_not_running_is_recorded_as_skipped(tmp_path: Path) -> None:
    plan = FaultPlan(kill_share=1.0, targets=("kafka",))
    inj = FaultInjector(OneProcess(None), BlobFault(tmp_path / "b"), plan, seed=0)  # type: ignore[arg-type]
    fault = inj.inject(random.Random(0))
    assert fault is not None and fault.kind == "skipped"


def test_a_fleet_soak_targets_every_worker_on_the_ports_the_stack_gives_them(
    tmp_path: Path,
) -> None:
    """`--workers N`: the soak's stack runs N gpu-workers (IMAGEGEN_STACK_WORKERS), each a fault
    target, each checked for readiness on the port deploy/stack.py gives it."""
    from imagegen_chaos.stack import ROOT, ChaosStack

    sys.path.insert(0, str(ROOT / "deploy"))
    import stack as local  # deploy/stack.py

    soak = ChaosStack(tmp_path / "chaos", port_offset=100, workers=3)
    assert soak.more_workers() == ("gpu-worker-2", "gpu-worker-3")
    assert soak.env()["IMAGEGEN_STACK_WORKERS"] == "3"
    made = local.Stack(var=tmp_path / "chaos", port_offset=100, workers=3)
    for program in made.programs():
        if program.startswith("gpu-worker") or program in ("api", "api-projector"):
            assert soak.port(program) == made.port(program), program
    out = subprocess.run(
        [sys.executable, "-m", "imagegen_chaos", "run", "--workers", "2", "--targets", "x"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 2 and "gpu-worker-2" in out.stderr  # listed among the known

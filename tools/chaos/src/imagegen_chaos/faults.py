"""The fault injector: every ~interval, one random component is killed, paused or broken.

Targets are the six services, Kafka and PostgreSQL (processes under the stack's supervisord,
which restarts what was killed) and the blob store (the gpu-worker's folder, replaced by a plain
file for a while so every write fails, even as root). The choice (``next_fault``) is pure and
seeded; ``FaultInjector`` carries it out and undoes pauses and broken folders on time, and all of
them at once on ``heal`` (the soak calls it before draining, and on every exit).
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from .history import Fault

SERVICES = ("api", "api-projector", "scheduler", "gpu-worker", "safety", "delivery", "pool-manager")
TARGETS = (*SERVICES, "kafka", "postgres", "blobs")


@dataclass(frozen=True)
class FaultPlan:
    interval_s: float = 10.0  # mean time between two faults
    jitter_s: float = 3.0  # each gap is interval +- jitter (uniform)
    pause_s: tuple[float, float] = (5.0, 20.0)  # SIGSTOP length, uniform
    unwritable_s: tuple[float, float] = (5.0, 20.0)  # how long the blob store stays broken
    kill_share: float = 0.5  # share of process faults that are SIGKILL (the rest pause)
    targets: tuple[str, ...] = TARGETS


def next_fault(
    rng: random.Random, plan: FaultPlan, busy: set[str]
) -> tuple[str, str, float] | None:
    """(target, kind, duration) of the next fault, never on a target still under one."""
    free = [t for t in plan.targets if t not in busy]
    if not free:
        return None
    target = rng.choice(free)
    if target == "blobs":
        return target, "unwritable", rng.uniform(*plan.unwritable_s)
    if rng.random() < plan.kill_share:
        return target, "kill", 0.0
    return target, "pause", rng.uniform(*plan.pause_s)


def process_tree(root: int) -> list[int]:
    """``root`` and its descendants (PostgreSQL's backends are their own process groups)."""
    children: dict[int, list[int]] = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            ppid = int((proc / "stat").read_text().rsplit(") ", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(proc.name))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, []))
    return out


@dataclass
class Supervisor:
    """The chaos stack's supervisord, through supervisorctl."""

    conf: Path
    ctl: Path

    def pid(self, program: str) -> int | None:
        r = subprocess.run(
            [str(self.ctl), "-c", str(self.conf), "pid", program],
            capture_output=True,
            text=True,
            check=False,
        )
        out = r.stdout.strip()
        return int(out) if out.isdigit() and int(out) > 0 else None


@dataclass
class BlobFault:
    """Makes a folder unwritable by moving it aside and putting a plain file in its place."""

    path: Path

    @property
    def hidden(self) -> Path:
        return self.path.with_name(self.path.name + ".chaos-hidden")

    def break_(self) -> str:
        if self.path.is_dir():
            self.path.rename(self.hidden)
        tmp = self.path.with_name(self.path.name + ".chaos-file")
        tmp.write_text("chaos: the blob store is unwritable for a while\n")
        try:
            os.rename(tmp, self.path)  # fails if a writer made the folder again meanwhile
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            return f"could not replace {self.path}: {exc}"
        return f"{self.path} replaced by a file"

    def restore(self) -> None:
        if self.path.is_file() or self.path.is_symlink():
            self.path.unlink()
        if self.hidden.is_dir():
            if self.path.is_dir():  # a writer recreated it after the unlink: merge
                for child in self.path.iterdir():
                    if not (self.hidden / child.name).exists():
                        child.rename(self.hidden / child.name)
                shutil.rmtree(self.path)
            self.hidden.rename(self.path)


@dataclass
class _Active:
    target: str
    ends_at: float
    undo: Callable[[], None]


@dataclass
class FaultInjector:
    supervisor: Supervisor
    blobs: BlobFault
    plan: FaultPlan
    seed: int
    clock: Callable[[], float] = time.time
    on_fault: Callable[[Fault], None] | None = None  # told of each fault (the soak prints it)
    faults: list[Fault] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    _active: list[_Active] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="fault-injector", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def _loop(self) -> None:
        rng = random.Random(self.seed)
        next_at = self.clock() + self._gap(rng)
        while not self._stop.wait(0.2):  # the tick at which pauses and broken folders end
            self._undo_due()
            if self.clock() >= next_at:
                self.inject(rng)
                next_at = self.clock() + self._gap(rng)

    def _gap(self, rng: random.Random) -> float:
        return max(0.5, self.plan.interval_s + rng.uniform(-self.plan.jitter_s, self.plan.jitter_s))

    def inject(self, rng: random.Random) -> Fault | None:
        with self._lock:
            choice = next_fault(rng, self.plan, {a.target for a in self._active})
            if choice is None:
                return None
            target, kind, duration = choice
            now = self.clock()
            try:
                fault = self._do(target, kind, duration, now)
            except OSError as exc:
                fault = Fault(now, target, "skipped", 0.0, f"{kind} failed: {exc}")
            self.faults.append(fault)
        if self.on_fault is not None:
            self.on_fault(fault)
        return fault

    def _do(self, target: str, kind: str, duration: float, now: float) -> Fault:
        if kind == "unwritable":
            detail = self.blobs.break_()
            self._active.append(_Active(target, now + duration, self.blobs.restore))
            return Fault(now, target, kind, duration, detail)
        pid = self.supervisor.pid(target)
        if pid is None:
            return Fault(now, target, "skipped", 0.0, f"{kind}: {target} is not running")
        if kind == "kill":
            os.kill(pid, signal.SIGKILL)
            return Fault(now, target, kind, 0.0, f"pid {pid}")
        pids = process_tree(pid)
        for p in pids:
            _signal(p, signal.SIGSTOP)

        def resume() -> None:
            for p in pids:
                _signal(p, signal.SIGCONT)

        self._active.append(_Active(target, now + duration, resume))
        return Fault(now, target, kind, duration, f"pids {pids}")

    def _undo_due(self) -> None:
        with self._lock:
            now = self.clock()
            due = [a for a in self._active if a.ends_at <= now]
            self._active = [a for a in self._active if a.ends_at > now]
        for a in due:
            self._undo(a)

    def _undo(self, a: _Active) -> None:
        try:
            a.undo()
        except OSError as exc:
            self.notes.append(f"could not undo the fault on {a.target}: {exc}")

    def heal(self) -> None:
        """Stop injecting and undo every pause and broken folder now."""
        self.stop()
        with self._lock:
            active, self._active = self._active, []
        for a in active:
            self._undo(a)


def _signal(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)

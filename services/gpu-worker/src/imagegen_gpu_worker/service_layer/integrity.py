"""The periodic integrity check of the worker's model files (ADR 0707).

A load checks a model's files by size and mtime against the trust record made when they last
hashed good (``registry.Integrity.verify``), so silent corruption that keeps both (bit rot, a
write that restored the mtime) is not seen there. Every ``interval_s`` (the first round one
interval after start; 0: never) :class:`IntegrityChecker` hashes every file of every folder
registered under ``models_dir`` (base models and LoRAs) whatever its record says
(``registry.Integrity.full_check``), one model at a time, in a thread and at no more than
``bytes_per_s`` (:class:`Pacer`), so jobs and loads go on meanwhile. For each file that does not
match its manifest:

1. ``ModelCorrupted`` is published (through the worker's residency reporter, in order with its
   other facts on ``imagegen.workers.models``);
2. the model (for a LoRA, each model holding it) is dropped from the device
   (``ModelEvicted(reason="corrupted")``) and from the RAM tier; one a run is using is dropped
   when that run ends (:meth:`IntegrityChecker.after_run`);
3. the file is copied again from the manifest's ``source`` and its sha256 checked before it
   replaces the bad one (``registry.Integrity.repair``); the model is loaded again on demand.
   Without a source (or a good copy there) the model stays corrupted and its trust record is
   dropped, so every load hashes the file, publishes ``ModelCorrupted`` and fails (a job with
   ``model_unavailable``, a LoadModel with ``corrupted``).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from ..adapters import registry
from ..domain.residency import Corrupted
from .residency import Cause, ResidencyReporter

log = logging.getLogger(__name__)

# Outcomes of one model's check.
OK = "ok"  # every file matches its manifest
REPAIRED = "repaired"  # some did not; they were copied again from the source and match now
UNAVAILABLE = "unavailable"  # some did not and could not be repaired (RepairFailed)
ERROR = "error"  # not checked to the end: unreadable manifest, unlisted file, read error


class CheckStopped(Exception):
    """The worker is stopping: the check in progress gives up between two blocks."""


class Pacer:
    """Keeps a reader under ``bytes_per_s`` on average since its first block: called with each
    block's size, it sleeps until the bytes read so far are due (raises :class:`CheckStopped`
    once ``stop`` is set)."""

    def __init__(
        self,
        bytes_per_s: float,
        stop: threading.Event | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], object] | None = None,
    ) -> None:
        if bytes_per_s <= 0:
            raise ValueError(f"bytes_per_s must be positive, got {bytes_per_s}")
        self.bytes_per_s = bytes_per_s
        self.stop = stop or threading.Event()
        self.clock = clock
        # Waiting on the stop event sleeps and wakes early when the worker stops.
        self.sleep = sleep or self.stop.wait
        self.start: float | None = None
        self.read = 0

    def __call__(self, nbytes: int) -> None:
        if self.stop.is_set():
            raise CheckStopped
        now = self.clock()
        if self.start is None:
            self.start = now
        self.read += nbytes
        due = self.start + self.read / self.bytes_per_s
        if due > now:
            self.sleep(due - now)
        if self.stop.is_set():
            raise CheckStopped


class ModelDropper(Protocol):
    """What the check needs of a runner (``DiffusersRunner``)."""

    def discard(self, model_id: str) -> set[str]: ...  # the models left (a run uses them)


@dataclass
class IntegrityChecker:
    models_dir: Path
    integrity: registry.Integrity  # the runner's own (one trust store)
    host: ModelDropper
    reporter: ResidencyReporter
    interval_s: float = 3600.0
    bytes_per_s: float = 100e6
    # Models found corrupted while a run used them: dropped when a run ends.
    pending: set[str] = field(default_factory=set)
    _stop: threading.Event = field(default_factory=threading.Event)

    async def check_all(self) -> dict[str, str]:
        """One round: every registered model checked (and repaired) in turn; model id ->
        outcome (:data:`OK`, :data:`REPAIRED`, :data:`UNAVAILABLE` or :data:`ERROR`)."""
        outcomes = {}
        for model_id in registry.registered(self.models_dir):
            cause = Cause()
            outcome, busy = await self.reporter.in_thread(self._check, model_id, cause=cause)
            self.pending |= busy
            outcomes[model_id] = outcome
            await cause.settled()  # its ModelCorrupted / ModelEvicted are published
        bad = {m: o for m, o in outcomes.items() if o != OK}
        log.info(
            "integrity check done",
            extra={"models": len(outcomes), "not_ok": bad},
        )
        return outcomes

    def _check(self, model_id: str) -> tuple[str, set[str]]:
        """(In a thread.) Check one model; repair it when it is corrupted (see the module)."""
        folder = self.models_dir / model_id
        t0 = time.perf_counter()
        try:
            self.integrity.full_check(folder, Pacer(self.bytes_per_s, self._stop))
        except registry.Corrupted as exc:
            bad = exc
        except CheckStopped:
            raise
        except Exception as exc:  # unlisted files, an unreadable manifest, a read error
            log.error(
                "integrity check failed", extra={"model_id": model_id, "error": repr(exc)[:500]}
            )
            return ERROR, set()
        else:
            log.debug(
                "model files intact",
                extra={"model_id": model_id, "ms": (time.perf_counter() - t0) * 1000},
            )
            return OK, set()
        for m in bad.mismatches:
            self.reporter.record(Corrupted(model_id, m.file, m.expected, m.actual))
        log.error(
            "model files corrupted (periodic check); dropping and repairing the model",
            extra={"model_id": model_id, "files": [m.file for m in bad.mismatches]},
        )
        busy = self.host.discard(model_id)
        try:
            self.integrity.repair(folder, bad)
        except registry.RepairFailed as exc:
            log.error(
                "model not repaired; it stays unavailable here",
                extra={"model_id": model_id, "error": str(exc)[:1000]},
            )
            return UNAVAILABLE, busy
        return REPAIRED, busy

    async def after_run(self) -> None:
        """Drop the models found corrupted while a run used them (the worker calls this when a
        run ends)."""
        for model_id in sorted(self.pending):
            busy = await self.reporter.in_thread(self.host.discard, model_id, cause=Cause())
            if model_id not in busy:
                self.pending.discard(model_id)

    async def run(self, stop: asyncio.Event) -> None:
        """The service task: a round every ``interval_s`` until ``stop`` (none when 0)."""
        if self.interval_s <= 0:
            log.info("periodic integrity check disabled (integrity_interval_s=0)")
            return
        watcher = asyncio.ensure_future(stop.wait())
        watcher.add_done_callback(lambda _: self._stop.set())
        try:
            while True:
                try:
                    await asyncio.wait_for(asyncio.shield(watcher), self.interval_s)
                    return
                except TimeoutError:
                    pass
                try:
                    await self.check_all()
                except CheckStopped:
                    return
                except Exception:  # a bug must not end the task: the next round tries again
                    log.exception("integrity check round failed")
        finally:
            watcher.cancel()

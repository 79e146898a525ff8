"""Residency facts: what the runner reports, published on ``imagegen.workers.models`` in order.

The runner (an adapter, free of Kafka) reports every load and unload, and the answers to pool
commands, as :mod:`~imagegen_gpu_worker.domain.residency` facts through one callback, in the
order they happen, from whichever thread caused them (a job's run, a pool command, the
warm-up). :class:`ResidencyReporter` turns each into ``ModelLoaded``, ``ModelEvicted`` or
``ModelCorrupted`` (ADR 0707) and publishes them one after the other in that order: the
scheduler and the pool-manager fold them per (worker, model), newest fact wins, so an eviction
must never overtake the load before it.

Who a fact is *for* is the :class:`Cause` the service layer set around the call
(:meth:`ResidencyReporter.in_thread`; a context variable, which ``asyncio.to_thread`` carries
into the thread):
- a pool command: every event gets an id derived from the command's event id (ADR 0005), so a
  redelivered command republishes the same ids; its answer carries ``command_id``;
- a job's assignment, or nothing (the warm-up): a fresh id per fact, with the assignment as
  causation. Each such fact happened once (a redelivered assignment that loads its model again
  made a new load), so every load and eviction is published exactly once, as it happened.

A publish that fails for a transient reason is retried with backoff, keeping its id, for as
long as it takes (the facts after it wait: order first). A command's handler awaits its own
facts (:meth:`Cause.settled`) before it returns, so the command is committed after them.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import uuid
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import TypeVar

from imagegen_runtime.faults import Backoff, is_transient
from imagegen_runtime.publishing import Publisher, derived_event_id
from imagegen_schemas import Envelope, Payload
from imagegen_schemas.workers import LoadedModel, ModelCorrupted, ModelEvicted, ModelLoaded

from ..domain.residency import (
    COMMAND,
    DISK,
    NOT_RESIDENT,
    RAM,
    Corrupted,
    Loaded,
    ResidencyChange,
)
from ..metrics import MODEL_LOAD_SECONDS

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass
class Cause:
    """What a runner call is for: a pool command, a job's assignment, or nothing (warm-up)."""

    envelope: Envelope | None = None  # the command or the assignment
    command: bool = False  # True: ids derived from the envelope's, answers carry command_id
    # The publishes of this cause's facts, in order (appended from the runner's thread).
    sent: list[concurrent.futures.Future[None]] = field(default_factory=list)

    async def settled(self) -> None:
        """Wait until every fact of this cause so far is published; raise if one was not."""
        for fut in list(self.sent):
            await asyncio.wrap_future(fut)


_CAUSE: ContextVar[Cause | None] = ContextVar("residency_cause", default=None)


class ResidencyReporter:
    """Publishes a worker's residency facts in the order they happened (see the module)."""

    def __init__(
        self, worker_id: str, publisher: Publisher, backoff: Backoff | None = None
    ) -> None:
        self.worker_id = worker_id
        self.publisher = publisher
        self.backoff = backoff or Backoff(initial_s=0.2, cap_s=5.0)
        self.loop: asyncio.AbstractEventLoop | None = None
        self._last: asyncio.Task[None] | None = None  # the latest publish; the next waits on it

    async def in_thread(self, fn: Callable[..., T], *args: object, cause: Cause | None) -> T:
        """``fn(*args)`` in a thread, its residency facts attributed to ``cause``."""
        self.loop = asyncio.get_running_loop()
        token = _CAUSE.set(cause)
        try:
            return await asyncio.to_thread(fn, *args)
        finally:
            _CAUSE.reset(token)

    def record(self, change: ResidencyChange) -> None:
        """The runner's ``on_change``: publish ``change`` after every fact before it. Called
        from any thread; returns at once."""
        cause = _CAUSE.get() or Cause()
        command_id = cause.envelope.event_id if cause.command and cause.envelope else None
        payload: Payload
        if isinstance(change, Corrupted):  # ADR 0707; one fact per bad file
            payload = ModelCorrupted(
                worker_id=self.worker_id,
                model_id=change.model_id,
                file=change.file,
                expected_sha256=change.expected,
                actual_sha256=change.actual,
            )
            self.submit(payload, cause, (change.model_id, change.file))
            return
        if isinstance(change, Loaded):
            if change.source in (DISK, RAM):  # a load; "resident" only answers a command
                MODEL_LOAD_SECONDS.labels(change.source).observe(max(0.0, change.load_ms) / 1000)
            payload = ModelLoaded(
                worker_id=self.worker_id,
                model=LoadedModel(model_id=change.model_id, kind=change.kind, bytes=change.bytes),
                load_ms=max(0.0, change.load_ms),
                # every read from disk checks every file first (registry.Integrity.verify:
                # hashed, or trusted by size and mtime since hashed, ADR 0707); a RAM reload
                # brings back weights that were checked when they were read
                sha256_verified=True,
                source=change.source,
                command_id=command_id,
            )
        else:
            payload = ModelEvicted(
                worker_id=self.worker_id,
                model_id=change.model_id,
                kind=change.kind,
                reason=change.reason,
                # An EvictModel's own answer; an eviction to make room for a LoadModel is not.
                command_id=command_id if change.reason in (COMMAND, NOT_RESIDENT) else None,
            )
        self.submit(payload, cause, (change.model_id,))

    def submit(self, payload: Payload, cause: Cause, parts: tuple[object, ...] = ()) -> None:
        """Publish ``payload`` for ``cause`` after every fact submitted before it (any thread).
        A command's events get ids derived from it (with ``parts``); others a fresh id."""
        env = cause.envelope
        if cause.command and env is not None:
            event_id = derived_event_id(env.event_id, payload.event_type, *parts)
        else:
            event_id = str(uuid.uuid4())
        fut: concurrent.futures.Future[None] = concurrent.futures.Future()
        cause.sent.append(fut)
        loop = self.loop
        if loop is None:  # nothing ran through in_thread yet: no loop to publish from
            log.error("residency fact not published: no event loop", extra={"event": repr(payload)})
            fut.set_exception(RuntimeError("no event loop to publish residency facts from"))
            return
        causation = None if env is None else env.event_id
        loop.call_soon_threadsafe(self._chain, payload, event_id, causation, fut)

    def _chain(
        self,
        payload: Payload,
        event_id: str,
        causation: str | None,
        fut: concurrent.futures.Future[None],
    ) -> None:
        """(On the loop, in submission order.) Publish after the previous fact is done."""
        self._last = asyncio.get_running_loop().create_task(
            self._publish(self._last, payload, event_id, causation, fut)
        )

    async def _publish(
        self,
        before: asyncio.Task[None] | None,
        payload: Payload,
        event_id: str,
        causation: str | None,
        fut: concurrent.futures.Future[None],
    ) -> None:
        if before is not None:
            await asyncio.wait({before})
        attempt = 0
        while True:
            try:
                await self.publisher.publish(
                    payload, key=self.worker_id, causation_id=causation, event_id=event_id
                )
            except Exception as exc:
                attempt += 1
                if is_transient(exc):
                    log.warning(
                        "residency fact not published yet; retrying",
                        extra={"event_id": event_id, "attempt": attempt, "error": repr(exc)},
                    )
                    await asyncio.sleep(self.backoff.delay(attempt))
                    continue
                log.error(
                    "residency fact not published",
                    extra={"event_id": event_id, "error": repr(exc)[:500]},
                )
                fut.set_exception(exc)
                return
            fut.set_result(None)
            return

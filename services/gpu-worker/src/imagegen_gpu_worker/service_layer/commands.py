"""The pool-manager's commands to this worker (``imagegen.pool.commands``, ADR 0702).

``LoadModel``, ``EvictModel`` and ``DefragmentMemory`` are handled idempotently and fenced by
command id (the command's envelope ``event_id``); what each publishes on
``imagegen.workers.models`` (every id derived from the command's, so a redelivered command
republishes the same ids):

- ``LoadModel``: loaded from disk (its files checked first, ADR 0707) -> ``ModelLoaded(source=
  "disk", load_ms, command_id)``, after a ``ModelEvicted(reason="make_room")`` for each model
  unloaded to make room; already resident -> ``ModelLoaded(source="resident", load_ms=0,
  command_id)``, nothing read. With ``pin`` the model is pinned once resident (ADR 0711): the
  worker's eviction passes it over while anything else can make room. Cannot be carried out ->
  ``ModelLoadFailed(command_id, reason)``: ``does_not_fit`` (larger than the memory budget),
  ``in_use`` (fits only with a model unloaded that the running job is using), ``corrupted`` (a
  file fails its sha256), ``load_error`` (anything else); nothing was unloaded for the first
  three. A model not registered on this worker is poison:
  ``ModelLoadFailed(reason="unknown_model")`` is published, then the handler raises
  :class:`UnknownModel`, which the consumer retries ``max_attempts`` times and dead-letters (ADR
  0008); nothing else changes.
- ``EvictModel``: resident and unused -> unloaded, ``ModelEvicted(reason="command",
  command_id)``; not resident -> ``ModelEvicted(reason="not_resident", command_id)``, nothing
  unloaded; in use by the running job -> nothing now: the eviction is carried out when that run
  ends, and its ``ModelEvicted(reason="command", command_id)`` published then (a newer command
  for that model cancels it). The model is unpinned whatever the outcome. With
  ``keep_resident`` only the pin goes (the pool releasing a pin, ADR 0714): resident ->
  ``ModelLoaded(source="resident", load_ms=0, command_id)``, nothing unloaded, whether a run
  uses it or not; not resident -> ``ModelEvicted(reason="not_resident", command_id)``; an
  eviction deferred for that model is cancelled. ``model_id`` may
  also be a loaded ControlNet's registry id (the id heartbeats list it by,
  ``kind="controlnet"``): answered the same way, "in use" meaning a running job uses the net.
  A LoRA's id (``kind="lora"`` in heartbeats) deletes its adapter from every resident model
  holding it (pre-merged deltas dropped, base weights restored), answered ``ModelEvicted(kind=
  "lora", reason="command")``; deferred the same way while a run uses one of those models; a
  LoRA no model holds answers ``not_resident`` (ADR 0704).
- ``DefragmentMemory``: the runner compacts the device's memory (CUDA: idle pipelines off the
  device, the allocator's cache emptied, the pipelines back side by side); nothing is published
  unless a model could not be moved back (``ModelEvicted(reason="oom")``). What was done is
  logged (``DefragmentMemory carried out``: models moved, skipped because a run uses them,
  unloaded; largest free block and fragmentation ratio before and after); on CPU it is logged
  as a no-op (``DefragmentMemory: nothing to compact``: only garbage collection ran). The next
  heartbeats' ``largest_free_block_bytes`` and ``fragmentation_ratio`` show the result
  (ADR 0709).

Duplicates and fencing: a command whose id was already handled in this process is a no-op
(nothing published again); a command for a model older (a lower offset in the same partition)
than the newest handled for that model is ignored (an old LoadModel redelivered after a newer
EvictModel does not load it again). Commands for another worker are skipped.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from imagegen_runtime.faults import is_transient
from imagegen_runtime.kafka import RecordMeta
from imagegen_schemas import Envelope, Payload
from imagegen_schemas.workers import DefragmentMemory, EvictModel, LoadModel, ModelLoadFailed

from ..domain.fragmentation import DefragOutcome
from ..domain.residency import ResidencyChange
from ..domain.run import (
    ModelBlockedByRun,
    ModelDoesNotFit,
    ModelNotRegistered,
    ModelUnavailable,
    NotABaseModel,
)
from .residency import Cause, ResidencyReporter

log = logging.getLogger(__name__)


class UnknownModel(Exception):
    """A LoadModel for a model not registered on this worker: poison (never transient)."""


class ModelHost(Protocol):
    """What pool commands need of a runner (``DiffusersRunner``)."""

    on_change: Callable[[ResidencyChange], None] | None

    def preload(self, model_id: str, pin: bool = False) -> None: ...

    # A model's, a loaded ControlNet's or a LoRA's id -> "evicted", "not_resident" or "in_use"
    def evict(self, model_id: str) -> str: ...

    # EvictModel(keep_resident): unpin only -> "resident" or "not_resident"
    def unpin(self, model_id: str) -> str: ...

    def defragment(self) -> DefragOutcome | None: ...


def load_failure_reason(exc: Exception) -> str:
    """``ModelLoadFailed.reason`` of a load that raised ``exc`` (not an unknown model)."""
    if isinstance(exc, NotABaseModel):  # a LoRA's or a ControlNet's id
        return "not_a_base_model"
    if isinstance(exc, ModelBlockedByRun):
        return "in_use"
    if isinstance(exc, ModelDoesNotFit):
        return "does_not_fit"
    if isinstance(exc, ModelUnavailable):  # registry.ChecksumError: a file fails its sha256
        return "corrupted"
    if "out of memory" in str(exc).lower():
        return "out_of_memory"
    return "load_error"


@dataclass
class PoolCommands:
    worker_id: str
    host: ModelHost
    residency: ResidencyReporter
    remember: int = 10_000  # command ids kept for duplicate detection
    handled: OrderedDict[str, None] = field(default_factory=OrderedDict)
    # Model id -> (partition, offset) of the newest command handled for it.
    newest: dict[str, tuple[int, int]] = field(default_factory=dict)
    # Model id -> the EvictModel deferred while the running job uses that model.
    deferred: dict[str, Envelope] = field(default_factory=dict)
    # One command (or deferred eviction) at a time, so a newer command never races an older one.
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    async def handle(self, env: Envelope, payload: Payload, meta: RecordMeta) -> None:
        """The consumer's handler for ``imagegen.pool.commands``."""
        if not isinstance(payload, LoadModel | EvictModel | DefragmentMemory):
            return
        if payload.worker_id != self.worker_id:
            return  # another worker's command (its key shares our partition)
        if env.event_id in self.handled:
            log.info("duplicate pool command ignored", extra={"command_id": env.event_id})
            return
        model_id = None if isinstance(payload, DefragmentMemory) else payload.model_id
        if model_id is not None and self._stale(model_id, meta):
            log.info(
                "pool command ignored: a newer command for this model was handled",
                extra={"command_id": env.event_id, "model_id": model_id, "offset": meta.offset},
            )
            return
        async with self.lock:
            if isinstance(payload, LoadModel):
                await self._load(env, payload)
            elif isinstance(payload, EvictModel):
                await self._evict(env, payload)
            else:
                await self._defragment(env)
        self.handled[env.event_id] = None
        while len(self.handled) > self.remember:
            self.handled.popitem(last=False)
        if model_id is not None:
            self.newest[model_id] = (meta.partition, meta.offset)

    def _stale(self, model_id: str, meta: RecordMeta) -> bool:
        seen = self.newest.get(model_id)
        return seen is not None and seen[0] == meta.partition and meta.offset < seen[1]

    async def _load(self, env: Envelope, msg: LoadModel) -> None:
        cause = Cause(env, command=True)
        if self.deferred.pop(msg.model_id, None) is not None:
            log.info(
                "deferred eviction cancelled by a newer LoadModel", extra={"model": msg.model_id}
            )
        try:
            await self.residency.in_thread(self.host.preload, msg.model_id, msg.pin, cause=cause)
        except ModelNotRegistered as exc:
            self._failed(cause, msg, "unknown_model", exc)
            await cause.settled()
            # Poison (ADR 0008): retried max_attempts times, then dead-lettered. Raised from
            # None: the registry's FileNotFoundError, an OSError, would make it look transient.
            raise UnknownModel(str(exc)) from None
        except Exception as exc:
            if is_transient(exc):
                await cause.settled()
                raise  # the fault model waits it out and handles the command again
            self._failed(cause, msg, load_failure_reason(exc), exc)
        await cause.settled()

    def _failed(self, cause: Cause, msg: LoadModel, reason: str, exc: Exception) -> None:
        log.warning(
            "LoadModel not carried out",
            extra={"model_id": msg.model_id, "reason": reason, "error": repr(exc)[:500]},
        )
        assert cause.envelope is not None
        failed = ModelLoadFailed(
            worker_id=self.worker_id,
            model_id=msg.model_id,
            reason=reason,
            message=str(exc)[:4000],
            command_id=cause.envelope.event_id,
        )
        self.residency.submit(failed, cause, (msg.model_id,))

    async def _evict(self, env: Envelope, msg: EvictModel) -> None:
        cause = Cause(env, command=True)
        if msg.keep_resident:  # unpin only (ADR 0714): never deferred, nothing unloaded
            if self.deferred.pop(msg.model_id, None) is not None:
                log.info(
                    "deferred eviction cancelled by a newer unpin", extra={"model": msg.model_id}
                )
            await self.residency.in_thread(self.host.unpin, msg.model_id, cause=cause)
            await cause.settled()
            return
        outcome = await self.residency.in_thread(self.host.evict, msg.model_id, cause=cause)
        if outcome == "in_use":
            self.deferred[msg.model_id] = env  # a newer EvictModel replaces an older one
            log.info(
                "EvictModel deferred: the running job uses the model",
                extra={"model_id": msg.model_id, "command_id": env.event_id},
            )
        else:
            self.deferred.pop(msg.model_id, None)
        await cause.settled()

    async def _defragment(self, env: Envelope) -> None:
        cause = Cause(env, command=True)
        outcome = await self.residency.in_thread(self.host.defragment, cause=cause)
        await cause.settled()
        summary = outcome.summary() if isinstance(outcome, DefragOutcome) else {}
        if isinstance(outcome, DefragOutcome) and not outcome.compacted:
            log.info(
                "DefragmentMemory: nothing to compact (no-op)",
                extra={"command_id": env.event_id, **summary},
            )
        else:
            log.info("DefragmentMemory carried out", extra={"command_id": env.event_id, **summary})

    async def after_run(self) -> None:
        """Carry out the evictions deferred while a run used their models (the worker calls
        this when a run ends). Their events are published in order, not awaited here."""
        if not self.deferred:
            return
        async with self.lock:
            for model_id, env in list(self.deferred.items()):
                try:
                    outcome = await self.residency.in_thread(
                        self.host.evict, model_id, cause=Cause(env, command=True)
                    )
                except Exception:
                    log.exception("deferred eviction failed", extra={"model_id": model_id})
                    continue
                if outcome != "in_use":
                    self.deferred.pop(model_id, None)

"""The worker loop for one assignment: plan (pure) -> run (adapter) -> record -> publish.

Idempotent: every event of a run has an id derived from the assignment's event id, so a
redelivered assignment republishes the same ids; a finished run's images are found in blob
storage and republished without running again.

Preemption (ADR 0111): a ``PreemptionRequested`` naming this worker, a job and the token of its
assignment makes that run stop at its next step boundary, save its state to the blob store and
publish ``GenerationPaused``; a request for another job or another token is ignored, and so is
one for a sampler that cannot resume exactly (logged: the job then runs to its end). An
assignment with ``resume`` loads the saved state (its sha256 checked) and runs only the steps
left; a missing or corrupted state falls back to a run from the start, which gives the same
image (same seed), only later.

Failures (issue 10): whatever stops an attempt (out of memory, a model that is not registered
or fails its sha256 check, a blob store that cannot take the images, any other error) is
published as ``GenerationFailed(terminal=False)`` with the reason :func:`failure_reason` gives,
and the handler returns, so the consumer commits and takes the next assignment: a job is never
left ``running`` by this worker, and the scheduler re-queues it (away from this worker) until
its attempts run out. A blob store that cannot take a write is first waited out for
``store_retry_s`` (30 s): the chaos soak showed 20 s outages spending all three attempts of
the jobs that met them.

Memory (ADR 0708): before each run ``memory`` (the budget admission, when the worker has one)
checks the job's need by the shared budget model against the worker's budget and makes room for
it; a job that does not fit raises ``OutOfMemory``. That, or an out-of-memory error while
running (``torch.cuda.OutOfMemoryError``), frees the cache (``free_cache``) and retries the run
once on this worker with the batch split in two (``domain/memory.split``: each part draws the
whole batch's noise and keeps its images, so the images are the unsplit run's); a batch of one,
or a sampler that draws noise at every step, is not split. If the retry runs out of memory too
(or there was none) the attempt fails as ``out_of_memory``, its message naming the need and the
budget, and the scheduler re-queues the job away from this worker. The parts of a split run do
not pause (a preemption request lets them run to their end); their progress counts the parts'
steps one after the other.

Residency (ADR 0702): a run's model loads and the evictions that made room for them are
published by :attr:`Worker.residency` (``ModelLoaded(command_id=None)``,
``ModelEvicted(reason="make_room")``), attributed to the assignment; when a run ends,
``after_run`` carries out the pool commands' evictions deferred while it used their model.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol

from imagegen_runtime.faults import Backoff
from imagegen_runtime.publishing import Publisher, publish_derived
from imagegen_schemas import Envelope, ImageRef, Payload
from imagegen_schemas import jobs as ev

from ..adapters.blobs import BlobStore, StorageUnavailable, read_verified
from ..domain.memory import OutOfMemory, is_out_of_memory, joined, split, why_not_split
from ..domain.plan import RunPlan, plan_run
from ..domain.run import (
    RESUMABLE,
    Cancelled,
    ModelDoesNotFit,
    ModelUnavailable,
    Paused,
    RunResult,
)
from .residency import Cause, ResidencyReporter

log = logging.getLogger(__name__)


def failure_reason(exc: Exception) -> ev.FailureReason:
    """Why an attempt failed, in the order checked: storage, model, memory, anything else."""
    if isinstance(exc, StorageUnavailable):
        return ev.FailureReason.STORAGE_UNAVAILABLE
    if isinstance(exc, ModelUnavailable):
        return ev.FailureReason.MODEL_UNAVAILABLE
    # ModelDoesNotFit: refused before loading, so nothing ran out of memory, but it is the same
    # verdict (this worker's memory cannot hold the job) with the sizes named.
    if (
        isinstance(exc, ModelDoesNotFit)
        or is_out_of_memory(exc)
        or "out of memory" in str(exc).lower()
    ):
        return ev.FailureReason.OUT_OF_MEMORY
    return ev.FailureReason.INTERNAL_ERROR


class Runner(Protocol):
    def run(
        self,
        plan: RunPlan,
        on_step: Callable[[int, int, str | None], None],
        cancelled: Callable[[], bool],
        pause: Callable[[], bool] | None = None,
        resume_state: bytes | None = None,
    ) -> RunResult: ...


class MemoryGuard(Protocol):
    """The worker's memory admission (``adapters/admission.BudgetAdmission``)."""

    def admit(self, plan: RunPlan) -> object:
        """Make room for ``plan``; raise OutOfMemory when it cannot fit the budget."""
        ...

    def free_cache(self) -> None:
        """Give back what a failed run left allocated."""
        ...


@dataclass
class WorkerState:
    worker_id: str
    running_plan: RunPlan | None = None  # the run in progress (its job, token and sampler)
    cancelled: set[str] = field(default_factory=set)  # job ids asked to stop
    pausing: dict[str, int] = field(default_factory=dict)  # job id -> token asked to pause
    done: dict[str, int] = field(default_factory=dict)  # job id -> token finished here

    @property
    def running_job(self) -> str | None:
        return None if self.running_plan is None else self.running_plan.job_id


@dataclass
class Worker:
    state: WorkerState
    runner: Runner
    blobs: BlobStore
    publisher: Publisher
    # A blob store that cannot take a write is transient (ADR 0008): the write is retried with
    # backoff for up to this long before the attempt fails with storage_unavailable, so a short
    # outage delays the job instead of spending one of its attempts.
    store_retry_s: float = 30.0
    store_backoff: Backoff = field(default_factory=lambda: Backoff(initial_s=0.5, cap_s=5.0))
    # Publishes the runner's residency facts (wire the runner's ``on_change`` to its
    # ``record``); made from ``publisher`` when not given.
    residency: ResidencyReporter | None = None
    # Called when a run ends (the pool commands' deferred evictions).
    after_run: Callable[[], Awaitable[None]] | None = None
    # Admits each run by the budget model and frees the cache after an out-of-memory error
    # (ADR 0708); None: no admission, and freeing is garbage collection only.
    memory: MemoryGuard | None = None

    def __post_init__(self) -> None:
        if self.residency is None:
            self.residency = ResidencyReporter(self.state.worker_id, self.publisher)

    @property
    def reporter(self) -> ResidencyReporter:
        assert self.residency is not None  # set in __post_init__
        return self.residency

    async def on_cancel(self, env: Envelope, msg: ev.CancellationRequested) -> None:
        self.state.cancelled.add(msg.job_id)

    async def on_preempt(self, env: Envelope, msg: ev.PreemptionRequested) -> None:
        """Ask the run of (job, token) to pause at its next step boundary. Remembered when the
        run has not started yet (the control loop may see the request first)."""
        if msg.worker_id != self.state.worker_id:
            return
        if self.state.done.get(msg.job_id, 0) >= msg.fencing_token:
            log.info(
                "preemption request ignored: that assignment already ended here",
                extra={"job_id": msg.job_id, "fencing_token": msg.fencing_token},
            )
            return
        running = self.state.running_plan
        if running is not None and running.job_id == msg.job_id:
            if running.fencing_token != msg.fencing_token:
                log.info(
                    "preemption request ignored: it names another assignment",
                    extra={
                        "job_id": msg.job_id,
                        "fencing_token": msg.fencing_token,
                        "running_token": running.fencing_token,
                    },
                )
                return
            if not self._can_pause(running):
                return
        self.state.pausing[msg.job_id] = msg.fencing_token

    def _can_pause(self, plan: RunPlan) -> bool:
        if plan.scheduler in RESUMABLE:
            return True
        log.warning(
            "pause refused: sampler %s cannot resume byte-identically; the job runs to its end",
            plan.scheduler,
            extra={"job_id": plan.job_id, "fencing_token": plan.fencing_token},
        )
        return False

    async def _resume_state(self, msg: ev.JobScheduled) -> bytes | None:
        """The saved state of a resumed assignment, or None (fresh start, also when the state
        is missing or corrupted: a full run gives the same image)."""
        if msg.resume is None:
            return None
        try:
            return await asyncio.to_thread(
                read_verified, self.blobs, msg.resume.state_uri, msg.resume.state_sha256
            )
        except Exception as exc:
            log.warning(
                "pause state unusable; running from the start",
                extra={"job_id": msg.job_id, "error": repr(exc)},
            )
            return None

    async def _put(self, job_id: str, name: str, data: bytes) -> tuple[str, str]:
        """``blobs.put``, retried while the store is away, for up to ``store_retry_s`` (and not
        for a cancelled job); then the last ``StorageUnavailable`` is raised."""
        give_up = time.monotonic() + self.store_retry_s
        attempt = 0
        while True:
            try:
                return await asyncio.to_thread(self.blobs.put, name, data)
            except StorageUnavailable as exc:
                attempt += 1
                left = give_up - time.monotonic()
                if left <= 0 or job_id in self.state.cancelled:
                    raise
                log.warning(
                    "blob store unavailable; retrying the write",
                    extra={"job_id": job_id, "attempt": attempt, "error": str(exc)[:300]},
                )
                await asyncio.sleep(min(self.store_backoff.delay(attempt), left))

    async def _store(self, plan: RunPlan, result: RunResult) -> list[ImageRef]:
        """Put the run's PNGs in the blob store; their references, in batch order."""
        images = []
        for i, png in enumerate(result.images_png):
            uri, sha = await self._put(
                plan.job_id, f"{plan.job_id}/{plan.fencing_token}-{i}.png", png
            )
            images.append(
                ImageRef(uri=uri, sha256=sha, width=plan.width, height=plan.height, index=i)
            )
        return images

    async def _attempt_failed(
        self, emit: Callable[..., Awaitable[None]], plan: RunPlan, exc: Exception
    ) -> None:
        """Publish this attempt's failure (never terminal: the scheduler counts attempts)."""
        reason = failure_reason(exc)
        log.error(
            "generation failed",
            exc_info=exc,
            extra={"job_id": plan.job_id, "reason": reason.value, "error": repr(exc)[:500]},
        )
        await emit(
            ev.GenerationFailed(
                job_id=plan.job_id,
                reason=reason,
                message=repr(exc)[:4000],
                attempt=plan.attempt,
                terminal=False,
                worker_id=self.state.worker_id,
                fencing_token=plan.fencing_token,
            )
        )

    async def _run_once(
        self,
        plan: RunPlan,
        on_step: Callable[[int, int, str | None], None],
        cancelled: Callable[[], bool],
        pause: Callable[[], bool] | None,
        resume_state: bytes | None,
        cause: Cause,
    ) -> RunResult:
        """One run of ``plan`` in a thread: admitted by ``memory`` first, when there is one."""
        memory = self.memory

        def admitted_run() -> RunResult:
            if memory is not None:
                memory.admit(plan)
            return self.runner.run(plan, on_step, cancelled, pause, resume_state)

        return await self.reporter.in_thread(admitted_run, cause=cause)

    async def _free_cache(self) -> None:
        await asyncio.to_thread(gc.collect if self.memory is None else self.memory.free_cache)

    async def _generate(
        self,
        plan: RunPlan,
        on_step: Callable[[int, int, str | None], None],
        cancelled: Callable[[], bool],
        pause: Callable[[], bool] | None,
        resume_state: bytes | None,
        cause: Cause,
    ) -> RunResult:
        """Run ``plan``; out of memory: free the cache and retry once with the batch split, then
        raise OutOfMemory naming both failures (see the module docstring)."""
        try:
            return await self._run_once(plan, on_step, cancelled, pause, resume_state, cause)
        except Exception as exc:
            if not is_out_of_memory(exc):
                raise
            first = str(exc) or repr(exc)
        # Out of the except block: the error and its traceback, which holds the failed run's
        # tensors, are released before the cache is freed.
        await self._free_cache()
        why = why_not_split(plan)
        if why is not None:
            raise OutOfMemory(f"{first} [not retried with the batch split: {why}]")
        parts = split(plan)
        log.warning(
            "out of memory; retrying with the batch split",
            extra={
                "job_id": plan.job_id,
                "num_images": plan.num_images,
                "parts": [p.num_images for p in parts],
                "error": first[:500],
            },
        )
        results: list[RunResult] = []
        again: str | None = None
        total = len(parts) * plan.steps
        for i, part in enumerate(parts):

            def part_step(
                step: int, _: int, preview: str | None, offset: int = i * plan.steps
            ) -> None:
                on_step(offset + step, total, preview)

            try:
                results.append(await self._run_once(part, part_step, cancelled, None, None, cause))
            except Exception as exc:
                if not is_out_of_memory(exc):
                    raise
                again = str(exc) or repr(exc)
            if again is not None:
                break
        if again is None:
            return joined(results)
        await self._free_cache()
        raise OutOfMemory(
            f"{again} [after the retry with the batch split into"
            f" {'+'.join(str(p.num_images) for p in parts)} images; first try: {first}]"
        )

    async def on_assignment(self, env: Envelope, msg: ev.JobScheduled) -> None:
        if msg.worker_id != self.state.worker_id:
            return
        if self.state.done.get(msg.job_id, 0) >= msg.fencing_token:
            return  # redelivered after we finished and published
        plan = plan_run(msg)
        key = msg.job_id

        async def emit(payload: Payload, *parts: object) -> None:
            await publish_derived(self.publisher, payload, key=key, cause=env, parts=parts)

        if msg.job_id in self.state.cancelled:
            await emit(ev.GenerationCancelled(job_id=key, at_step=None))
            return
        loop = asyncio.get_running_loop()
        await emit(
            ev.GenerationStarted(
                job_id=key, worker_id=self.state.worker_id, fencing_token=plan.fencing_token
            )
        )

        def on_step(step: int, total: int, preview: str | None) -> None:
            progress = ev.StepProgressed(
                job_id=key,
                worker_id=self.state.worker_id,
                fencing_token=plan.fencing_token,
                step=step,
                total_steps=total,
                preview_png_b64=preview,
            )
            asyncio.run_coroutine_threadsafe(emit(progress, step), loop).result()

        resume_state = await self._resume_state(msg)
        if self.state.pausing.get(key) == plan.fencing_token and not self._can_pause(plan):
            del self.state.pausing[key]

        def pause() -> bool:
            return self.state.pausing.get(key) == plan.fencing_token

        self.state.running_plan = plan
        try:
            result = await self._generate(
                plan, on_step, lambda: key in self.state.cancelled, pause, resume_state, Cause(env)
            )
        except Paused as paused:
            try:
                uri, sha = await self._put(
                    key, f"{key}/{plan.fencing_token}-paused-{paused.steps_done}.pt", paused.state
                )
            except Exception as exc:  # the state is lost: this attempt failed
                await self._attempt_failed(emit, plan, exc)
                return
            await emit(
                ev.GenerationPaused(
                    job_id=key,
                    worker_id=self.state.worker_id,
                    fencing_token=plan.fencing_token,
                    steps_done=paused.steps_done,
                    total_steps=paused.total_steps,
                    state_uri=uri,
                    state_sha256=sha,
                )
            )
            self.state.done[key] = plan.fencing_token
            log.info(
                "job paused",
                extra={
                    "job_id": key,
                    "fencing_token": plan.fencing_token,
                    "steps_done": paused.steps_done,
                },
            )
            return
        except Cancelled:
            await emit(ev.GenerationCancelled(job_id=key, at_step=None))
            return
        except Exception as exc:  # one attempt failed; the scheduler decides on a retry
            await self._attempt_failed(emit, plan, exc)
            return
        finally:
            self.state.running_plan = None
            self.state.pausing.pop(key, None)
            if self.after_run is not None:
                await self.after_run()
        try:
            images = await self._store(plan, result)
        except Exception as exc:  # e.g. StorageUnavailable: the images are lost with it
            await self._attempt_failed(emit, plan, exc)
            return
        await emit(
            ev.ImageGenerated(
                job_id=key,
                worker_id=self.state.worker_id,
                fencing_token=plan.fencing_token,
                images=tuple(images),
                timings_ms=result.timings_ms,
                webhook_url=msg.webhook_url,
            )
        )
        self.state.done[key] = plan.fencing_token

"""The worker loop for one assignment: plan (pure) -> run (adapter) -> record -> publish.

Idempotent: every event of a run has an id derived from the assignment's event id, so a
redelivered assignment republishes the same ids; a finished run's images are found in blob
storage and republished without running again.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from imagegen_runtime.publishing import Publisher, derived_event_id
from imagegen_schemas import Envelope, ImageRef
from imagegen_schemas import jobs as ev

from ..adapters.blobs import BlobStore
from ..adapters.diffusers_runner import Cancelled, ModelDoesNotFit, RunResult
from ..domain.plan import RunPlan, plan_run

log = logging.getLogger(__name__)


class Runner(Protocol):
    def run(self, plan: RunPlan, on_step: Callable[[int, int, str | None], None],
            cancelled: Callable[[], bool]) -> RunResult: ...


@dataclass
class WorkerState:
    worker_id: str
    running_job: str | None = None
    cancelled: set[str] = field(default_factory=set)  # job ids asked to stop
    done: dict[str, int] = field(default_factory=dict)  # job id -> token finished here


@dataclass
class Worker:
    state: WorkerState
    runner: Runner
    blobs: BlobStore
    publisher: Publisher

    async def on_cancel(self, env: Envelope, msg: ev.CancellationRequested) -> None:
        self.state.cancelled.add(msg.job_id)

    async def on_assignment(self, env: Envelope, msg: ev.JobScheduled) -> None:
        if msg.worker_id != self.state.worker_id:
            return
        if self.state.done.get(msg.job_id, 0) >= msg.fencing_token:
            return  # redelivered after we finished and published
        plan = plan_run(msg)
        key = msg.job_id

        async def emit(payload: ev.Payload, *parts: object) -> None:
            await self.publisher.publish(payload, key=key, causation_id=env.event_id,
                                         event_id=derived_event_id(env.event_id,
                                                                   payload.event_type, *parts))

        if msg.job_id in self.state.cancelled:
            await emit(ev.GenerationCancelled(job_id=key, at_step=None))
            return
        loop = asyncio.get_running_loop()
        await emit(ev.GenerationStarted(job_id=key, worker_id=self.state.worker_id,
                                        fencing_token=plan.fencing_token))

        def on_step(step: int, total: int, preview: str | None) -> None:
            progress = ev.StepProgressed(job_id=key, worker_id=self.state.worker_id,
                                         fencing_token=plan.fencing_token, step=step,
                                         total_steps=total, preview_png_b64=preview)
            asyncio.run_coroutine_threadsafe(emit(progress, step), loop).result()

        self.state.running_job = key
        try:
            result = await asyncio.to_thread(self.runner.run, plan, on_step,
                                             lambda: key in self.state.cancelled)
        except Cancelled:
            await emit(ev.GenerationCancelled(job_id=key, at_step=None))
            return
        except Exception as exc:  # one attempt failed; the scheduler decides on a retry
            # ModelDoesNotFit: refused before loading, so nothing ran out of memory, but it is
            # the same verdict (this worker's memory cannot hold the job) with the sizes named.
            oom = isinstance(exc, ModelDoesNotFit) or "out of memory" in str(exc).lower()
            reason = ev.FailureReason.OUT_OF_MEMORY if oom else ev.FailureReason.INTERNAL_ERROR
            log.exception("generation failed")
            await emit(ev.GenerationFailed(job_id=key, reason=reason, message=repr(exc)[:4000],
                                           attempt=plan.attempt, terminal=False,
                                           worker_id=self.state.worker_id))
            return
        finally:
            self.state.running_job = None
        images = []
        for i, png in enumerate(result.images_png):
            uri, sha = await asyncio.to_thread(
                self.blobs.put, f"{key}/{plan.fencing_token}-{i}.png", png)
            images.append(ImageRef(uri=uri, sha256=sha, width=plan.width, height=plan.height,
                                   index=i))
        await emit(ev.ImageGenerated(job_id=key, worker_id=self.state.worker_id,
                                     fencing_token=plan.fencing_token, images=tuple(images),
                                     timings_ms=result.timings_ms, webhook_url=msg.webhook_url))
        self.state.done[key] = plan.fencing_token

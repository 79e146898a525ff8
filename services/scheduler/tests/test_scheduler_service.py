"""The scheduler service layer: given log events, then these published events."""

from __future__ import annotations

import random
from datetime import UTC, datetime

import pytest

from imagegen_runtime.publishing import InMemoryPublisher
from imagegen_scheduler.domain import ModelCatalog, ModelSpec
from imagegen_scheduler.service_layer.scheduling import Scheduler
from imagegen_schemas import Envelope, GenerationParams, Plan, Tier
from imagegen_schemas import jobs as ev
from imagegen_schemas.workers import WorkerHeartbeat, WorkerStatus

pytestmark = pytest.mark.unit
CATALOG = ModelCatalog(
    models={"m": ModelSpec("m", "sd15", 0.01, (0.1, 0.2), 0.01, 0.05)}, adapters={}
)
PARAMS = GenerationParams(
    prompt="p", model="m", width=64, height=64, steps=2, guidance_scale=5, seed=3
)
NOW = 1_800_000_000.0


def env(payload: ev.Payload, at: float = NOW) -> Envelope:
    key = getattr(payload, "job_id", None) or getattr(payload, "worker_id", "x")
    return Envelope.wrap(
        payload, correlation_id=key, producer="t", occurred_at=datetime.fromtimestamp(at, UTC)
    )


def request(job: str, user: str = "u") -> ev.GenerationRequested:
    return ev.GenerationRequested(
        job_id=job,
        user_id=user,
        plan=Plan.PRO,
        tier=Tier.FAST,
        params=PARAMS,
        webhook_url="http://hook",
    )


def beat(wid: str = "w1") -> WorkerHeartbeat:
    return WorkerHeartbeat(
        worker_id=wid,
        status=WorkerStatus.IDLE,
        gpu_type="cpu",
        memory_total_bytes=16 * 10**9,
        memory_free_bytes=10**9,
        capabilities=("sd15",),
    )


async def live(s: Scheduler, *payloads: ev.Payload) -> None:
    if not s.live:
        s.rebuild()
        s.live = True
    for p in payloads:
        await s.on_event(env(p), p, None, True)
        await s.after_batch()


def assigned(pub: InMemoryPublisher) -> list[ev.JobScheduled]:
    return [ev.JobScheduled.model_validate(e.data) for e in pub.on("imagegen.jobs.scheduled")]


async def test_allowed_request_is_assigned_with_its_parameters() -> None:
    pub = InMemoryPublisher()
    s = Scheduler(pub, CATALOG, clock=lambda: NOW)
    await live(s, beat(), request("j1"))
    assert assigned(pub) == []  # not before the prompt is allowed
    await live(s, ev.PromptModerated(job_id="j1", verdict=ev.Verdict.ALLOWED))
    [a] = assigned(pub)
    assert (a.job_id, a.worker_id, a.fencing_token, a.attempt) == ("j1", "w1", 1, 1)
    assert a.params == PARAMS and a.webhook_url == "http://hook"


async def test_rejected_prompt_never_reaches_a_worker() -> None:
    pub = InMemoryPublisher()
    s = Scheduler(pub, CATALOG, clock=lambda: NOW)
    await live(
        s, beat(), request("j1"), ev.PromptModerated(job_id="j1", verdict=ev.Verdict.REJECTED)
    )
    assert assigned(pub) == []


async def test_restart_in_any_order_assigns_nothing_twice_and_keeps_the_queue() -> None:
    pub = InMemoryPublisher()
    s = Scheduler(pub, CATALOG, clock=lambda: NOW)
    await live(s, beat())
    for j in ("a", "b", "c"):
        await live(s, request(j), ev.PromptModerated(job_id=j, verdict=ev.Verdict.ALLOWED))
    first = assigned(pub)
    assert [a.job_id for a in first] == ["a"]  # one worker: one running, two queued
    log = [beat()] + [
        p
        for j in ("a", "b", "c")
        for p in (request(j), ev.PromptModerated(job_id=j, verdict=ev.Verdict.ALLOWED))
    ]
    log += first
    for seed in range(5):
        random.Random(seed).shuffle(log)
        pub2 = InMemoryPublisher()
        again = Scheduler(pub2, CATALOG, clock=lambda: NOW)
        for p in log:
            await again.on_event(env(p), p, None, False)  # catch-up: fold only
        await live(again)
        await again._decide()
        assert assigned(pub2) == [], "a restarted scheduler assigned again"
        assert len(again.state.queued) == 2 and "a" in again.state.running
        await live(again, ev.ImageGenerated(job_id="a", worker_id="w1", fencing_token=1, images=()))
        [nxt] = assigned(pub2)
        assert nxt.job_id in {"b", "c"} and nxt.fencing_token == 2


async def test_lost_worker_requeues_with_a_new_token_and_late_result_is_ignored() -> None:
    pub = InMemoryPublisher()
    s = Scheduler(pub, CATALOG, clock=lambda: NOW)
    await live(s, beat("w1"), request("j"), ev.PromptModerated(job_id="j", verdict="allowed"))
    await live(
        s,
        ev.GenerationFailed(
            job_id="j",
            reason=ev.FailureReason.WORKER_LOST,
            terminal=False,
            attempt=1,
            worker_id="w1",
        ),
        beat("w2"),
    )
    second = assigned(pub)[-1]
    assert (second.worker_id, second.fencing_token, second.attempt) == ("w2", 2, 2)
    await live(s, ev.ImageGenerated(job_id="j", worker_id="w1", fencing_token=1, images=()))
    assert "j" in s.state.running, "the revoked assignment's late result finished the job"


async def test_third_failed_attempt_ends_the_job_with_the_reason() -> None:
    pub = InMemoryPublisher()
    s = Scheduler(pub, CATALOG, clock=lambda: NOW, max_attempts=3)
    await live(s, beat(), request("j"), ev.PromptModerated(job_id="j", verdict="allowed"))
    for attempt in (1, 2, 3):
        await live(
            s,
            ev.GenerationFailed(
                job_id="j",
                reason=ev.FailureReason.OUT_OF_MEMORY,
                message="CUDA out of memory",
                terminal=False,
                attempt=attempt,
                worker_id="w1",
            ),
        )
    assert [a.attempt for a in assigned(pub)] == [1, 2, 3]
    [end] = [ev.GenerationFailed.model_validate(e.data) for e in pub.on("imagegen.jobs.ended")]
    assert end.terminal and end.reason == ev.FailureReason.RETRIES_EXHAUSTED
    assert "out_of_memory" in end.message


async def test_cancelling_a_queued_job_ends_it() -> None:
    pub = InMemoryPublisher()
    s = Scheduler(pub, CATALOG, clock=lambda: NOW)
    await live(
        s,
        request("j"),
        ev.PromptModerated(job_id="j", verdict="allowed"),
        ev.CancellationRequested(job_id="j", requested_by="u"),
        beat(),
    )
    assert assigned(pub) == []
    assert [e.type for e in pub.on("imagegen.jobs.ended")] == ["imagegen.generation.cancelled"]

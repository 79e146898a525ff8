"""Preemption in the scheduler service: Preempt decisions are published, pauses are folded.

One worker runs a long relax job (its 35 s cold load makes it end well past the turbo target);
a turbo job arrives and, past its 5 s affinity patience, would wait > 15 s: the scheduler asks
the worker to pause the relax job. The relax reserve is 0 here: with the default 20% a
one-worker fleet keeps its only worker for relax and nothing is ever preempted.
"""

from __future__ import annotations

import random
from datetime import UTC, datetime

import pytest

from imagegen_runtime.publishing import InMemoryPublisher, derived_event_id
from imagegen_scheduler.config import SchedulerSettings
from imagegen_scheduler.domain import ModelCatalog, ModelSpec, SchedulerConfig
from imagegen_scheduler.service_layer.scheduling import Scheduler
from imagegen_schemas import Envelope, GenerationParams, Plan, Tier
from imagegen_schemas import jobs as ev
from imagegen_schemas.workers import WorkerHeartbeat, WorkerStatus

pytestmark = pytest.mark.unit
CATALOG = ModelCatalog(
    models={"m": ModelSpec("m", "sd15", 0.01, (30.0, 40.0), 0.2, 0.05)}, adapters={}
)
CONFIG = SchedulerConfig(relax_reserve_fraction=0.0)
NOW = 1_800_000_000.0
SHA = "ab" * 32


def params(steps: int) -> GenerationParams:
    return GenerationParams(
        prompt="p", model="m", width=512, height=512, steps=steps, guidance_scale=5, seed=3
    )


def env(payload: ev.Payload, at: float) -> Envelope:
    key = getattr(payload, "job_id", None) or getattr(payload, "worker_id", "x")
    return Envelope.wrap(
        payload, correlation_id=key, producer="t", occurred_at=datetime.fromtimestamp(at, UTC)
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


def request(job: str, tier: Tier, steps: int = 30) -> list[ev.Payload]:
    plan = Plan.TURBO if tier is Tier.TURBO else Plan.FREE
    return [
        ev.GenerationRequested(
            job_id=job, user_id=f"u-{job}", plan=plan, tier=tier, params=params(steps)
        ),
        ev.PromptModerated(job_id=job, verdict=ev.Verdict.ALLOWED),
    ]


class Clocked:
    """A live scheduler on a clock the test moves; ``log`` is every event it saw, in order."""

    def __init__(self, config: SchedulerConfig = CONFIG) -> None:
        self.now = NOW
        self.pub = InMemoryPublisher()
        self.s = Scheduler(self.pub, CATALOG, clock=lambda: self.now, config=config)
        self.s.rebuild()
        self.s.live = True
        self.log: list[tuple[ev.Payload, float]] = []
        self.seen = 0

    async def feed(self, *payloads: ev.Payload) -> None:
        for p in payloads:
            self.log.append((p, self.now))
            await self.s.on_event(env(p, self.now), p, None, True)
            await self.s.after_batch()
        await self.read_back()

    async def read_back(self) -> None:
        """What the scheduler published comes back to it on its topics (as from Kafka)."""
        while self.seen < len(self.pub.records):
            record = self.pub.records[self.seen]
            self.seen += 1
            if record.envelope.type == ev.WaitEstimated.event_type:
                continue  # on the progress topic, which the scheduler does not read
            payload = (
                ev.JobScheduled
                if record.envelope.type == ev.JobScheduled.event_type
                else ev.PreemptionRequested
            ).model_validate(record.envelope.data)
            self.log.append((payload, self.now))
            await self.s.on_event(record.envelope, payload, None, True)

    async def at(self, t: float) -> None:
        self.now = NOW + t
        await self.s.after_batch()
        await self.read_back()

    def published(self, kind: type[ev.Payload]) -> list[tuple[str, ev.Payload]]:
        return [
            (r.envelope.event_id, kind.model_validate(r.envelope.data))
            for r in self.pub.records
            if r.envelope.type == kind.event_type
        ]


async def relax_running_turbo_waiting(steps: int = 30) -> Clocked:
    c = Clocked()
    await c.feed(beat(), *request("r", Tier.RELAX, steps))
    await c.at(1.0)
    await c.feed(*request("t", Tier.TURBO))
    await c.at(7.0)  # t waited 6 s > its patience; r ends ~40 s after it started: preempt
    return c


def paused(job: str = "r", token: int = 1, done: int = 12, total: int = 30) -> ev.GenerationPaused:
    return ev.GenerationPaused(
        job_id=job,
        worker_id="w1",
        fencing_token=token,
        steps_done=done,
        total_steps=total,
        state_uri=f"file:///b/{job}/{token}.pt",
        state_sha256=SHA,
    )


def scheduled(c: Clocked) -> list[tuple[str, int, ev.ResumeFrom | None, int]]:
    return [
        (s.job_id, s.fencing_token, s.resume, s.attempt) for _, s in c.published(ev.JobScheduled)
    ]  # type: ignore[attr-defined]


async def test_a_preempt_decision_is_published_once_with_a_derived_id() -> None:
    c = await relax_running_turbo_waiting()
    [(event_id, req)] = c.published(ev.PreemptionRequested)
    assert isinstance(req, ev.PreemptionRequested)
    assert (req.job_id, req.worker_id, req.fencing_token, req.for_job_id) == ("r", "w1", 1, "t")
    assert event_id == derived_event_id("r", ev.PreemptionRequested.event_type, 1)
    await c.at(8.0)
    assert len(c.published(ev.PreemptionRequested)) == 1, "asked twice"
    assert scheduled(c) == [("r", 1, None, 1)]  # nothing else yet: w1 is held for t


async def test_a_pause_requeues_the_job_with_its_steps_left_and_resumes_it_later() -> None:
    c = await relax_running_turbo_waiting()
    await c.feed(paused(done=12))
    assert scheduled(c)[-1][:2] == ("t", 2)  # the held worker goes to the turbo job
    assert c.s.state.queued["r"].remaining_steps == 30 - 12
    await c.at(20.0)
    await c.feed(ev.ImageGenerated(job_id="t", worker_id="w1", fencing_token=2, images=()))
    resume = ev.ResumeFrom(steps_done=12, state_uri="file:///b/r/1.pt", state_sha256=SHA)
    assert scheduled(c)[-1] == ("r", 3, resume, 1), "resumed run: same attempt, saved state"


async def test_a_late_pause_of_a_superseded_assignment_is_ignored() -> None:
    c = await relax_running_turbo_waiting()
    await c.feed(
        ev.GenerationFailed(
            job_id="r",
            reason=ev.FailureReason.WORKER_LOST,
            terminal=False,
            attempt=1,
            worker_id="w1",
        ),
        beat("w2"),
        beat("w3"),
    )
    running = c.s.state.running["r"]
    assert running.fencing_token > 1
    await c.feed(paused(token=1))
    assert c.s.state.running["r"] is running and "r" not in c.s.resume


async def test_a_worker_that_finishes_instead_of_pausing_wedges_nothing() -> None:
    c = await relax_running_turbo_waiting()
    await c.feed(ev.ImageGenerated(job_id="r", worker_id="w1", fencing_token=1, images=()))
    assert scheduled(c)[-1][:2] == ("t", 2)
    await c.feed(paused(token=1))  # cannot happen after a result; ignored if it did
    assert "r" not in c.s.state.queued and not c.s.resume


async def test_a_pause_in_sampler_steps_is_scaled_to_denoising_steps() -> None:
    """PNDM reports its own step count (11 for 5 steps): the steps left are scaled."""
    c = await relax_running_turbo_waiting(steps=5)
    await c.feed(paused(done=6, total=11))
    assert c.s.state.queued["r"].remaining_steps == 3  # ceil(5 * 5 / 11)


async def test_a_restart_rebuilds_pause_hold_and_resume_from_the_log_in_any_order() -> None:
    c = await relax_running_turbo_waiting()
    mid = list(c.log)  # relax running, preemption requested, not yet paused
    await c.feed(paused(done=12))
    done = list(c.log)  # + the pause and the turbo job's assignment
    for seed in range(4):
        for log, expect in ((mid, None), (done, "t")):
            shuffled = list(log)
            random.Random(seed).shuffle(shuffled)
            again = Clocked()
            again.s.live = False
            for p, at in shuffled:
                await again.s.on_event(env(p, at), p, None, False)
            again.now = c.now
            again.s.rebuild()
            again.s.live = True
            await again.at(8.0)
            assert again.published(ev.PreemptionRequested) == [], "asked again after restart"
            assert again.published(ev.JobScheduled) == [], "assigned again after restart"
            assert again.s.state.held.get("w1") == ("t" if expect is None else None)
            if expect is None:  # still waiting for the pause: w1 stays held for t
                await again.feed(paused(done=12))
                assert scheduled(again)[-1][:2] == ("t", 2)
            else:
                assert again.s.state.running_on["w1"] == "t"
            await again.feed(
                ev.ImageGenerated(job_id="t", worker_id="w1", fencing_token=2, images=())
            )
            [last] = scheduled(again)[-1:]
            assert last[0] == "r" and last[2] is not None and last[2].steps_done == 12


async def test_preemption_can_be_switched_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IMAGEGEN_SCHEDULER_PREEMPTION", "false")
    assert SchedulerSettings(kafka_bootstrap="127.0.0.1:9092").preemption is False
    monkeypatch.delenv("IMAGEGEN_SCHEDULER_PREEMPTION")
    assert SchedulerSettings(kafka_bootstrap="127.0.0.1:9092").preemption is True
    c = Clocked(SchedulerConfig(relax_reserve_fraction=0.0, preemption=False))
    await c.feed(beat(), *request("r", Tier.RELAX))
    await c.feed(*request("t", Tier.TURBO))
    await c.at(10.0)
    assert c.published(ev.PreemptionRequested) == []

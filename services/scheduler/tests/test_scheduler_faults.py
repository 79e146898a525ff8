"""Faults in the scheduler service: revoked assignments, failed attempts, replay equals live.

Each test reads "given these log events (in this order), then the scheduler publishes these".
``Recorder`` is a live scheduler whose own publications come back to it as from Kafka, and
which records every event it folded, so the same log can be replayed into a fresh scheduler.
"""

from __future__ import annotations

import asyncio
import random
from datetime import UTC, datetime
from typing import Any

import pytest

from imagegen_runtime.publishing import InMemoryPublisher
from imagegen_scheduler.domain import ModelCatalog, ModelSpec, SchedulerConfig
from imagegen_scheduler.domain import Tier as PolicyTier
from imagegen_scheduler.domain.faults import Deadlines
from imagegen_scheduler.service_layer.scheduling import Scheduler
from imagegen_schemas import Envelope, GenerationParams, Plan, Tier
from imagegen_schemas import jobs as ev
from imagegen_schemas.catalog import TOPICS
from imagegen_schemas.workers import LoadedModel, ModelLoaded, WorkerHeartbeat, WorkerStatus

pytestmark = pytest.mark.unit
CATALOG = ModelCatalog(
    models={
        "m": ModelSpec("m", "sd15", 0.01, (0.1, 0.2), 0.01, 0.05),
        "big": ModelSpec("big", "sdxl", 0.01, (0.1, 0.2), 0.01, 0.05),
        "slow": ModelSpec("slow", "sd15", 0.01, (0.1, 0.2), 2000.0, 0.05),  # ~32 s a job
    },
    adapters={},
)
NOW = 1_800_000_000.0
SHA = "ab" * 32
EVENT_TYPES = {e.event_type: e for t in TOPICS for e in t.events}


def env(payload: ev.Payload, at: float) -> Envelope:
    key = getattr(payload, "job_id", None) or getattr(payload, "worker_id", "x")
    return Envelope.wrap(
        payload, correlation_id=key, producer="t", occurred_at=datetime.fromtimestamp(at, UTC)
    )


def beat(wid: str, families: tuple[str, ...] = ("sd15",)) -> WorkerHeartbeat:
    return WorkerHeartbeat(
        worker_id=wid,
        status=WorkerStatus.IDLE,
        gpu_type="cpu",
        memory_total_bytes=16 * 10**9,
        memory_free_bytes=10**9,
        capabilities=families,
    )


def request(job: str, tier: Tier = Tier.FAST, model: str = "m") -> list[ev.Payload]:
    params = GenerationParams(
        prompt="p", model=model, width=64, height=64, steps=4, guidance_scale=5, seed=3
    )
    return [
        ev.GenerationRequested(
            job_id=job, user_id=f"u-{job}", plan=Plan.PRO, tier=tier, params=params
        ),
        ev.PromptModerated(job_id=job, verdict=ev.Verdict.ALLOWED),
    ]


def failed(
    job: str, worker: str, attempt: int, reason: ev.FailureReason = ev.FailureReason.OUT_OF_MEMORY
) -> ev.GenerationFailed:
    return ev.GenerationFailed(
        job_id=job, reason=reason, message="boom", terminal=False, attempt=attempt, worker_id=worker
    )


def image(job: str, worker: str, token: int) -> ev.ImageGenerated:
    return ev.ImageGenerated(job_id=job, worker_id=worker, fencing_token=token, images=())


class Recorder:
    def __init__(self, config: SchedulerConfig | None = None, **kwargs: Any) -> None:
        self.now = NOW
        self.config = config
        self.pub = InMemoryPublisher()
        self.s = Scheduler(self.pub, CATALOG, clock=lambda: self.now, config=config, **kwargs)
        self.s.live = True
        self.log: list[tuple[ev.Payload, float]] = []
        self.seen = 0

    async def feed(self, *payloads: ev.Payload) -> None:
        for p in payloads:
            await self._fold(p)
            await self.s.after_batch()
            await self.read_back()

    async def _fold(self, p: ev.Payload) -> None:
        self.log.append((p, self.now))
        await self.s.on_event(env(p, self.now), p, None, True)

    async def read_back(self) -> None:
        while self.seen < len(self.pub.records):
            record = self.pub.records[self.seen]
            self.seen += 1
            payload = EVENT_TYPES[record.envelope.type].model_validate(record.envelope.data)
            await self._fold(payload)

    async def at(self, t: float) -> None:
        self.now = NOW + t
        await self.s.after_batch()
        await self.read_back()

    def published(self, kind: type[ev.Payload]) -> list[ev.Payload]:
        return [
            kind.model_validate(r.envelope.data)
            for r in self.pub.records
            if r.envelope.type == kind.event_type
        ]

    def scheduled(self, job: str) -> list[tuple[str, int, int]]:
        return [
            (s.worker_id, s.fencing_token, s.attempt)
            for s in self.published(ev.JobScheduled)
            if isinstance(s, ev.JobScheduled) and s.job_id == job
        ]


async def replayed(log: list[tuple[ev.Payload, float]], now: float) -> Scheduler:
    """A fresh scheduler that folded ``log`` as a restart does (catch-up), then went live."""
    s = Scheduler(InMemoryPublisher(), CATALOG, clock=lambda: now)
    for p, at in log:
        await s.on_event(env(p, at), p, None, False)
    s.live = True
    return s


def snapshot(s: Scheduler) -> dict[str, object]:
    """What the policy decides from: queues, running assignments, holds, tokens, workers."""
    st = s.state
    return {
        "queued": sorted((j, q.remaining_steps, q.request.queued_at) for j, q in st.queued.items()),
        "running": sorted((j, r.worker_id, r.fencing_token) for j, r in st.running.items()),
        "held": dict(st.held),
        "preempting": dict(st.preempting),
        "last_token": st.last_token,
        "idle": sorted(st.idle),
        "workers": sorted(st.workers),
        "resume": {j: r.steps_done for j, r in s.resume.items()},
        "next_attempt": {j: f.next_attempt() for j, f in s.log.jobs.items() if not f.gone()},
    }


# ---- issue 10: broker restart; a revoked assignment's late result -------------------------------


@pytest.mark.parametrize("late_image_first", [False, True])
async def test_a_revoked_assignments_late_result_never_completes_the_job(
    late_image_first: bool,
) -> None:
    """The broker-restart defect: the gpu-worker crashed and restarted, the pool-manager revoked
    its assignment (``AssignmentRevoked`` then ``GenerationFailed(worker_lost)``), the old
    worker's image still arrived. Before the fix the late image ended the job in the scheduler
    (safety drops it as revoked), so the job was never re-queued and stayed ``queued``."""
    r = Recorder()
    await r.feed(beat("w1"), *request("j"))
    assert r.scheduled("j") == [("w1", 1, 1)]
    revoked = ev.AssignmentRevoked(job_id="j", worker_id="w1", fencing_token=1, reason="lost")
    lost = failed("j", "w1", 1, ev.FailureReason.WORKER_LOST)
    late = image("j", "w1", 1)
    order = [revoked, late, lost] if late_image_first else [revoked, lost, late]
    await r.feed(*order)
    await r.feed(beat("w1"))  # the restarted worker announces itself again
    assert r.scheduled("j") == [("w1", 1, 1), ("w1", 2, 2)], "the job was not re-queued"
    await r.feed(image("j", "w1", 1))  # a duplicate of the late result changes nothing
    assert "j" in r.s.state.running and r.published(ev.GenerationFailed) == []
    await r.feed(image("j", "w1", 2))
    assert "j" not in r.s.state.running and "j" not in r.s.state.queued


async def test_a_result_before_its_revocation_completes_the_job_once() -> None:
    """Result and revocation share a partition: a result that came first is valid for every
    consumer (safety delivers it), so the scheduler ends the job and does not run it again."""
    r = Recorder()
    await r.feed(beat("w1"), *request("j"))
    await r.feed(
        failed("j", "w1", 1, ev.FailureReason.WORKER_LOST),  # the ended topic overtook
        image("j", "w1", 1),
        ev.AssignmentRevoked(job_id="j", worker_id="w1", fencing_token=1),
        beat("w1"),
    )
    assert r.scheduled("j") == [("w1", 1, 1)], "ran again after its valid result"
    assert "j" not in r.s.state.queued


# ---- one fold: replay equals live ---------------------------------------------------------------


async def recorded_day() -> Recorder:
    """A log with every kind of fact: results, failures, loss, revocation, pause, cancel."""
    r = Recorder(SchedulerConfig(relax_reserve_fraction=0.0))
    await r.feed(beat("w1"), beat("w2"))
    for job in ("a", "b", "c", "d"):
        await r.feed(*request(job))
    await r.at(1.0)
    await r.feed(image("a", "w1", 1), failed("b", "w2", 1))  # b: attempt 1 failed on w2
    await r.at(2.0)
    await r.feed(*request("e", Tier.RELAX), ev.CancellationRequested(job_id="d", requested_by="u"))
    running = dict(r.s.state.running_on)
    lost_job = running["w1"]
    token = r.s.state.running[lost_job].fencing_token
    await r.feed(
        ev.AssignmentRevoked(job_id=lost_job, worker_id="w1", fencing_token=token),
        failed(
            lost_job, "w1", r.s.log.jobs[lost_job].assignment.attempt, ev.FailureReason.WORKER_LOST
        ),  # type: ignore[union-attr]
        beat("w1"),
        beat("w3"),
    )
    await r.at(3.0)
    for job, run in list(r.s.state.running.items()):
        if job != "e":
            await r.feed(image(job, run.worker_id, run.fencing_token))
    await r.at(4.0)
    return r


async def test_replaying_a_recorded_log_gives_the_state_of_applying_it_live() -> None:
    r = await recorded_day()
    again = await replayed(r.log, r.now)
    assert snapshot(again) == snapshot(r.s)
    assert snapshot(r.s)["running"], "the recorded day should end with work in flight"


async def test_replay_in_any_topic_interleaving_gives_the_same_queue_and_assignments() -> None:
    r = await recorded_day()
    live = snapshot(r.s)
    by_topic: dict[str, list[tuple[ev.Payload, float]]] = {}
    topic_of = {e.event_type: t.name for t in TOPICS for e in t.events}
    for p, at in r.log:
        by_topic.setdefault(topic_of[p.event_type], []).append((p, at))
    for seed in range(6):
        rng = random.Random(seed)
        streams = [list(v) for v in by_topic.values()]
        merged: list[tuple[ev.Payload, float]] = []
        while any(streams):  # each topic keeps its order; topics interleave at random
            merged.append(rng.choice([s for s in streams if s]).pop(0))
        again = await replayed(merged, r.now)
        got = snapshot(again)
        for key in ("queued", "running", "last_token", "resume", "next_attempt"):
            assert got[key] == live[key], (seed, key)


# ---- issue 10: attempt failures -----------------------------------------------------------------


async def test_a_failed_attempt_is_retried_away_from_the_worker_that_failed_it() -> None:
    r = Recorder()
    await r.feed(beat("w1"), *request("j"))
    await r.feed(beat("w2"))  # idle too, but w1 chooses first (smallest, then by id)
    await r.feed(failed("j", "w1", 1))
    assert r.scheduled("j") == [("w1", 1, 1), ("w2", 2, 2)]
    await r.feed(*request("k"))  # w1 still takes other work
    assert r.scheduled("k") == [("w1", 3, 1)]


async def test_a_lone_capable_worker_gets_the_retry_and_the_third_failure_is_terminal() -> None:
    r = Recorder()
    await r.feed(beat("w1"), beat("w9", ("sdxl",)), *request("j"))
    for attempt in (1, 2, 3):
        await r.feed(failed("j", "w1", attempt))
    assert r.scheduled("j") == [("w1", 1, 1), ("w1", 2, 2), ("w1", 3, 3)]
    [end] = r.published(ev.GenerationFailed)
    assert isinstance(end, ev.GenerationFailed)
    assert (end.terminal, end.reason, end.attempt) == (True, ev.FailureReason.RETRIES_EXHAUSTED, 3)
    assert "out_of_memory" in end.message
    assert "j" not in r.s.state.queued and "j" not in r.s.state.running


# ---- issue 10: admission live -------------------------------------------------------------------


def terminal(r: Recorder) -> dict[str, tuple[ev.FailureReason, str]]:
    return {
        e.job_id: (e.reason, e.message)
        for e in r.published(ev.GenerationFailed)
        if isinstance(e, ev.GenerationFailed) and e.terminal
    }


async def test_a_job_no_worker_can_run_ends_as_no_capable_worker_after_the_grace() -> None:
    r = Recorder(admission_grace_s=30.0)
    await r.feed(beat("w1"), beat("w2"), *request("x", model="big"), *request("ok"))
    await r.at(10.0)
    assert terminal(r) == {}, "rejected before the fleet had time to show itself"
    await r.at(31.0)
    assert terminal(r) == {
        "x": (ev.FailureReason.NO_CAPABLE_WORKER, "no worker in the fleet runs sdxl models")
    }
    assert "x" not in r.s.state.queued and r.scheduled("ok")


async def test_a_queued_job_is_judged_again_when_a_worker_measures_its_model_larger() -> None:
    """Admitted by the catalog's estimate, then a worker reports the model at 20 GB loaded: no
    worker's 12.8 GB (16 GB less the margin) holds it, so the job ends as no capable worker,
    naming both figures, instead of failing out of memory on every worker in turn."""
    r = Recorder(admission_grace_s=30.0)
    await r.feed(beat("w1"), *request("busy", model="slow"), *request("x"))
    await r.at(31.0)
    assert terminal(r) == {} and "x" in r.s.state.queued  # admitted, waiting for w1
    measured = LoadedModel(model_id="m", bytes=20 * 10**9)
    await r.feed(ModelLoaded(worker_id="w1", model=measured, load_ms=5.0))
    await r.at(32.0)
    assert terminal(r) == {
        "x": (
            ev.FailureReason.NO_CAPABLE_WORKER,
            "model 'm' takes 20.0 GB of GPU memory loaded, the largest sd15 worker has"
            " 12.8 GB; it needs a worker with more memory",
        )
    }


async def test_a_worker_gone_longer_than_the_fleet_window_no_longer_admits_jobs() -> None:
    """Seen restarting the local stack with fewer, smaller workers: the retained heartbeats of
    the workers of the run before kept every job for their class admitted, waiting until its
    queue deadline (30 minutes for fast) for a worker that was not coming back. A worker that
    heartbeated within the window still counts (it may be restarting); one gone longer not."""
    r = Recorder(admission_grace_s=30.0, admission_fleet_window_s=600.0)
    stopped = beat("w9", ("sdxl",)).model_copy(update={"status": WorkerStatus.STOPPED})
    await r.feed(beat("w1"), stopped)
    await r.at(300.0)
    await r.feed(beat("w1"), *request("x", model="big"))
    await r.at(400.0)
    assert terminal(r) == {}, "w9 stopped 400 s ago: it may be restarting"
    await r.feed(beat("w1"))  # the live worker keeps heartbeating
    await r.at(601.0)
    assert terminal(r) == {
        "x": (ev.FailureReason.NO_CAPABLE_WORKER, "no worker in the fleet runs sdxl models")
    }
    await r.feed(beat("w9", ("sdxl",)), *request("y", model="big"))  # back: admitted, runs
    assert r.scheduled("y") == [("w9", 1, 1)]


async def test_after_a_restart_an_empty_fleet_rejects_nothing() -> None:
    """Right after a restart no heartbeat may have arrived yet: nothing is rejected then, and
    a worker that can run the job takes it when it announces itself."""
    r = Recorder(admission_grace_s=30.0)
    await r.feed(*request("x", model="big"))
    await r.at(60.0)
    assert terminal(r) == {}
    await r.feed(beat("w9", ("sdxl",)))
    assert r.scheduled("x") == [("w9", 1, 1)]


# ---- issue 10: deadlines and the wait estimate --------------------------------------------------

DEADLINES = Deadlines(
    queue_s={PolicyTier.TURBO: 10.0, PolicyTier.FAST: 20.0, PolicyTier.RELAX: 40.0}, run_s=30.0
)


async def test_queue_and_run_deadlines_end_jobs_as_timeout() -> None:
    r = Recorder(deadlines=DEADLINES)
    await r.feed(beat("w1"), *request("a"), *request("b"))  # a runs on w1, b waits
    await r.at(19.0)
    assert terminal(r) == {}
    await r.at(21.0)
    assert list(terminal(r)) == ["b"] and terminal(r)["b"][0] is ev.FailureReason.TIMEOUT
    assert "queue deadline is 20 s" in terminal(r)["b"][1]
    await r.feed(*request("c"))
    await r.at(31.0)
    assert terminal(r)["a"][0] is ev.FailureReason.TIMEOUT, "a run past its deadline"
    [revoked] = r.published(ev.AssignmentRevoked)  # so safety drops a late result too
    assert isinstance(revoked, ev.AssignmentRevoked)
    assert (revoked.job_id, revoked.worker_id, revoked.fencing_token) == ("a", "w1", 1)
    assert r.scheduled("c") == [("w1", 2, 1)], "the timed-out run's worker takes the next job"


async def test_a_queued_job_gets_the_schedulers_wait_estimate() -> None:
    r = Recorder(eta_every_s=5.0)
    await r.feed(beat("w1"), *request("a", model="slow"), *request("b", model="slow"))
    await r.at(1.0)  # within a second of being queued
    [first] = [e for e in r.published(ev.WaitEstimated) if e.job_id == "b"]
    assert isinstance(first, ev.WaitEstimated)
    assert 25 < first.eta_s < 35 and first.queue_position == 0  # when a is expected to end
    await r.at(6.0)  # expected start unchanged: not published again
    assert len([e for e in r.published(ev.WaitEstimated) if e.job_id == "b"]) == 1


async def test_a_failure_naming_an_older_assignment_of_the_same_attempt_is_stale() -> None:
    """A paused run resumes as the same attempt, here on the same worker: the failure of the
    paused run (token 1) must not end the resumed one (token 2). Before failures named their
    token, it matched (attempt, worker) and re-queued a job still running (make chaos)."""
    r = Recorder()
    await r.feed(beat("w1"), *request("j"))
    paused = ev.GenerationPaused(
        job_id="j",
        worker_id="w1",
        fencing_token=1,
        steps_done=2,
        total_steps=4,
        state_uri="file:///s",
        state_sha256=SHA,
    )
    await r.feed(paused, beat("w1"))
    assert r.scheduled("j") == [("w1", 1, 1), ("w1", 2, 1)], "resumed as the same attempt"
    stale = failed("j", "w1", 1).model_copy(update={"fencing_token": 1})
    await r.feed(stale, beat("w1"))
    assert r.scheduled("j") == [("w1", 1, 1), ("w1", 2, 1)], "a stale failure re-queued it"
    assert r.s.state.running["j"].fencing_token == 2
    await r.feed(beat("w2"), failed("j", "w1", 1).model_copy(update={"fencing_token": 2}))
    assert r.scheduled("j")[-1] == ("w2", 3, 2), "the resumed run's own failure is an attempt"


async def test_the_decision_loop_stops_when_its_consumer_never_caught_up() -> None:
    """Regression (chaos soak): the scheduler's consumer crashed on a leader move before it
    caught up; ``tick_loop`` waited on ``caught_up`` alone, so the process never finished
    stopping and was never restarted. Failed before the fix: the wait timed out."""
    s = Scheduler(InMemoryPublisher(), CATALOG, clock=lambda: 0.0)
    stop = asyncio.Event()
    task = asyncio.create_task(s.tick_loop(asyncio.Event(), stop))
    await asyncio.sleep(0)
    stop.set()
    await asyncio.wait_for(task, 5)
    assert not s.live

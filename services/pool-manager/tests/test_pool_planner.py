"""The warm pool live: given the log, the pool-manager asks workers to load the right models,
never twice for one (worker, model), not even after a restart; and says how many workers each
pool should have."""

from __future__ import annotations

import time
from dataclasses import replace
from datetime import UTC, datetime

import pytest

from imagegen_pool_manager.domain.demand import RUN_SAMPLES, fold_demand, mean_run_s
from imagegen_pool_manager.domain.fleet import evolve
from imagegen_pool_manager.domain.policy import ModelInfo
from imagegen_pool_manager.service_layer.planner import DESIRED, Planner, PlannerConfig, pool_of
from imagegen_pool_manager.service_layer.pool import PoolManager
from imagegen_runtime.publishing import InMemoryPublisher
from imagegen_schemas import Envelope, GenerationParams, Plan, Tier, parse
from imagegen_schemas import jobs as ev
from imagegen_schemas.workers import (
    AutoscaleRecommended,
    DefragmentMemory,
    EvictModel,
    LoadedModel,
    LoadModel,
    ModelEvicted,
    ModelLoaded,
    WorkerHeartbeat,
    WorkerStatus,
)

pytestmark = pytest.mark.unit
MB = float(1 << 20)
NOW = float(int(time.time()))  # the in-memory publisher stamps events with the wall clock
MODELS = {
    "demo": ModelInfo("demo", "sd15", 14 * MB, tier=1),
    "sdxl": ModelInfo("sdxl", "sdxl", 3 * MB, tier=2),
    "flux": ModelInfo("flux", "flux", 3 * MB, tier=3),
}


def beat(
    wid: str,
    *loaded: str,
    status: WorkerStatus = WorkerStatus.IDLE,
    pinned: tuple[str, ...] = (),
    total_mb: int = 512,
    fragmentation: float | None = None,
    capabilities: tuple[str, ...] = ("sd15", "sdxl", "flux"),
    measured: dict[str, float] | None = None,
) -> WorkerHeartbeat:
    """``measured``: what a model takes loaded where it differs from its files (``MODELS``)."""
    sizes = {m: (measured or {}).get(m, MODELS[m].size) for m in loaded}
    return WorkerHeartbeat(
        worker_id=wid,
        status=status,
        gpu_type="cpu",
        memory_total_bytes=total_mb * (1 << 20),
        memory_free_bytes=total_mb * (1 << 19),
        fragmentation_ratio=fragmentation,
        capabilities=capabilities,
        loaded=tuple(LoadedModel(model_id=m, bytes=int(sizes[m])) for m in loaded),
        pinned=pinned,
        interval_s=2.0,
    )


def requested(job: str, model: str, size: int = 64, images: int = 1) -> ev.GenerationRequested:
    params = GenerationParams(
        prompt="p",
        model=model,
        width=size,
        height=size,
        steps=4,
        guidance_scale=5,
        seed=1,
        num_images=images,
    )
    return ev.GenerationRequested(
        job_id=job, user_id="u", plan=Plan.PRO, tier=Tier.FAST, params=params
    )


class World:
    """A pool-manager and its planner over an in-memory log; ``restart`` replays the log."""

    def __init__(
        self,
        log: list[Envelope] | None = None,
        step_s: float = 0.05,
        models: dict[str, ModelInfo] = MODELS,
    ) -> None:
        self.publisher = InMemoryPublisher(producer="pool-manager")
        self.log: list[Envelope] = []
        self.pool = PoolManager(self.publisher, timeout_s=600, clock=lambda: NOW)
        self.planner = Planner(
            self.publisher, self.pool.fleet, self.pool.demand, models, PlannerConfig(step_s=step_s)
        )
        for env in log or []:
            self._fold(env)

    def _fold(self, env: Envelope) -> None:
        self.log.append(env)
        payload = parse(env)
        at = env.occurred_at.timestamp()
        evolve(self.pool.fleet, payload, at, env.event_id)
        fold_demand(self.pool.demand, payload, at, env.event_id)

    def feed(self, payload: object, at: float) -> None:
        key = getattr(payload, "job_id", None) or getattr(payload, "worker_id", "x")
        self._fold(
            Envelope.wrap(
                payload,  # type: ignore[arg-type]
                correlation_id=key,
                producer="t",
                occurred_at=datetime.fromtimestamp(at, UTC),
            )
        )

    async def round(self, now: float = NOW) -> list[LoadModel]:
        return [p for p in await self.commands(now) if isinstance(p, LoadModel)]

    async def commands(self, now: float = NOW) -> list[object]:
        """One planning round: every pool command it published (read back through the log)."""
        before = len(self.publisher.records)
        await self.planner.run_once(now)
        new = self.publisher.records[before:]
        for rec in new:  # the commands come back through the log
            self._fold(rec.envelope)
        return [
            p
            for p in (parse(r.envelope) for r in new)
            if isinstance(p, LoadModel | EvictModel | DefragmentMemory)
        ]

    def restart(self) -> World:
        return World(self.log)


async def test_a_tier_1_model_is_pinned_on_a_worker_that_lacks_it() -> None:
    world = World()
    world.feed(beat("w1"), NOW - 1)
    loads = await world.round()
    assert [(c.worker_id, c.model_id, c.reason) for c in loads] == [("w1", "demo", "pin")]


async def test_only_a_pin_load_is_published_with_pin() -> None:
    quiet = World()  # w1 lacks the tier-1 model; sdxl was asked for in the last hour
    quiet.feed(beat("w1"), NOW - 1)
    for i in range(5):
        quiet.feed(requested(f"old{i}", "sdxl"), NOW - 600 + i)
        quiet.feed(ev.GenerationCancelled(job_id=f"old{i}"), NOW - 500 + i)
    loads = await quiet.round()
    assert [(c.model_id, c.reason, c.pin) for c in loads] == [
        ("demo", "pin", True),
        ("sdxl", "predictive", False),
    ]
    spike = World()  # a queue spike for a cold model while no worker holds the tier-1 model
    for w in ("w1", "w2", "w3", "w4"):
        spike.feed(beat(w), NOW - 1)
    for i in range(12):
        spike.feed(requested(f"j{i}", "flux"), NOW - 30)
    loads = await spike.round()
    assert {(c.reason, c.pin) for c in loads} == {("pin", True), ("storm", False)}


def answer_pin(world: World, at: float, model: str = "demo") -> str:
    """The worker answers the newest pin command: the model was resident (nothing read)."""
    [*_, command] = [e for e in world.log if e.type == LoadModel.event_type]
    assert command.data["pin"] is True
    loaded = ModelLoaded(
        worker_id=command.data["worker_id"],
        model=LoadedModel(model_id=model, bytes=int(MODELS[model].size)),
        load_ms=0.0,
        source="resident",
        command_id=command.event_id,
    )
    world.feed(loaded, at)
    return command.event_id


async def test_a_restarted_pool_manager_plans_only_on_workers_heard_from_lately() -> None:
    # The log still holds w0's heartbeat of an hour ago (a worker of an earlier run, not yet
    # declared lost: the pool-manager gives every worker a timeout from its own start). No
    # pin, preload or defragmentation goes to it; the pin goes to the worker beating now.
    world = World()
    world.feed(beat("w0", total_mb=1024, fragmentation=0.9), NOW - 3600)
    world.feed(beat("w1"), NOW - 1)
    assert not world.pool.fleet.workers["w0"].lost
    commands = await world.commands()
    assert [(c.worker_id, type(c).__name__) for c in commands] == [("w1", "LoadModel")]


async def test_a_pin_stays_on_the_worker_that_pins_it() -> None:
    """The worker whose heartbeat lists the pin keeps it (it lost the model to a job that could
    not fit beside it), though another worker holds the model: pins do not wander."""
    world = World()
    world.feed(beat("w1", "demo"), NOW - 1)
    world.feed(beat("w2", pinned=("demo",)), NOW - 1)
    loads = await world.round()
    assert [(c.worker_id, c.model_id, c.pin) for c in loads] == [("w2", "demo", True)]


async def test_a_pin_being_made_does_not_move_to_a_worker_that_joins_meanwhile() -> None:
    """Seen in a bench fleet run: the pool asked w2 to pin the tier-1 model; w1 (equal budget,
    an id that sorts first) joined before w2's heartbeat listed the pin, and the pin moved to
    it, so two workers pinned the model and one pin was released again. A pin asked for or
    answered counts as the worker's until its heartbeats list it."""
    world = World()
    world.feed(beat("w2"), NOW - 1)
    assert [(c.worker_id, c.pin) for c in await world.round()] == [("w2", True)]
    world.feed(beat("w1"), NOW + 1)  # joins while w2's pin loads
    assert await world.commands(NOW + 2) == []
    answer_pin(world, NOW + 3)
    world.feed(beat("w2", "demo"), NOW + 3.5)  # built before the pin: does not list it yet
    assert await world.commands(NOW + 4) == []
    world.feed(beat("w2", "demo", pinned=("demo",)), NOW + 5.5)
    assert await world.commands(NOW + 6) == []


async def test_a_worker_holding_the_tier_1_model_unpinned_is_asked_to_pin_it_once() -> None:
    world = World()
    world.feed(beat("w1", "demo"), NOW - 1)  # holds it; its heartbeat does not list it pinned
    loads = await world.round()
    assert [(c.worker_id, c.model_id, c.reason, c.pin) for c in loads] == [
        ("w1", "demo", "pin", True)
    ]
    assert await world.round(NOW + 1) == []  # under way: not asked again
    answer_pin(world, NOW + 2)
    assert world.pool.demand.pending == {}
    assert await world.round(NOW + 3) == []  # the newest heartbeat predates the answer
    world.feed(beat("w1", "demo"), NOW + 3.5)  # within one interval: built before the pin
    assert await world.round(NOW + 4) == []
    world.feed(beat("w1", "demo", pinned=("demo",)), NOW + 5.5)  # it lists the pin
    assert await world.round(NOW + 6) == []
    world.feed(beat("w1", "demo", pinned=("demo",)), NOW + 60)
    assert await world.round(NOW + 61) == []


async def test_a_pin_lost_with_a_worker_restart_is_asked_again() -> None:
    world = World()
    world.feed(beat("w1", "demo"), NOW - 1)
    [first] = await world.round()
    answer_pin(world, NOW + 2)
    world.feed(beat("w1", "demo", pinned=("demo",)), NOW + 3)
    assert await world.round(NOW + 4) == []
    world.feed(beat("w1", "demo"), NOW + 30)  # well after the answer, without the pin
    [again] = await world.round(NOW + 31)
    assert (again.worker_id, again.model_id, again.reason, again.pin) == ("w1", "demo", "pin", True)
    assert await world.round(NOW + 32) == []  # under way
    answer_pin(world, NOW + 33)
    assert await world.round(NOW + 34) == []  # answered after the heartbeat


async def test_a_restarted_pool_manager_asks_for_no_pin_it_already_has_answered() -> None:
    world = World()
    world.feed(beat("w1", "demo"), NOW - 1)
    assert len(await world.round()) == 1
    command_id = answer_pin(world, NOW + 2)
    world.feed(beat("w1", "demo"), NOW + 3.5)  # predates the pin (within one interval)
    assert await world.round(NOW + 4) == []
    assert await world.restart().round(NOW + 5) == []
    # the answer replayed before its command (another topic, read first) counts the same
    answer = [e for e in world.log if e.data.get("command_id") == command_id]
    rest = [e for e in world.log if e.data.get("command_id") != command_id]
    assert await World(answer + rest).round(NOW + 5) == []
    world.feed(beat("w1", "demo", pinned=("demo",)), NOW + 5.5)
    assert await world.restart().round(NOW + 6) == []
    world.feed(beat("w1", "demo"), NOW + 30)  # the worker restarted since: the pin is lost
    assert [(c.model_id, c.pin) for c in await world.restart().round(NOW + 31)] == [("demo", True)]


async def test_demand_in_a_quiet_period_preloads_onto_an_idle_worker() -> None:
    world = World()
    world.feed(beat("w1", "demo", pinned=("demo",)), NOW - 1)
    world.feed(beat("w2", "demo", status=WorkerStatus.BUSY), NOW - 1)
    for i in range(5):  # sdxl asked for (and served) in the last hour
        world.feed(requested(f"old{i}", "sdxl"), NOW - 600 + i)
        world.feed(ev.GenerationCancelled(job_id=f"old{i}"), NOW - 500 + i)
    loads = await world.round()
    assert [(c.worker_id, c.model_id) for c in loads] == [("w1", "sdxl")]
    assert loads[0].reason == "predictive"


async def test_the_pin_rule_weighs_a_model_as_a_worker_measured_it_loaded() -> None:
    # demo's files are 14 MB; loaded on CPU it takes 28 MB. A 64 MiB worker may pin a model of at
    # most a quarter of its memory (16.8 MB): by its files it could, as measured it cannot.
    world = World()
    world.feed(beat("w1", "demo", total_mb=64, measured={"demo": 28 * MB}), NOW - 1)
    assert await world.round() == []
    world.feed(beat("w1", total_mb=64), NOW)  # restarted, empty: the measurement stays
    assert await world.round() == []
    assert await world.restart().round() == []  # and comes back with the log
    files = World()  # the same worker reporting the files' size: pinned as before
    files.feed(beat("w1", "demo", total_mb=64), NOW - 1)
    assert [(c.model_id, c.reason) for c in await files.round()] == [("demo", "pin")]


async def test_a_preload_needs_room_for_the_model_as_a_worker_measured_it_loaded() -> None:
    # sdxl's files are 3 MB; w2 reports it at 60 MB loaded. w1 (64 MiB) may give a job 51.2 MiB:
    # room for sdxl by its files, none as measured, so the next job would unload the preload.
    def world(sdxl_bytes: float) -> World:
        w = World()
        w.feed(beat("w1", total_mb=64), NOW - 1)
        w.feed(
            beat(
                "w2",
                "demo",
                "sdxl",
                pinned=("demo",),
                status=WorkerStatus.BUSY,
                measured={"sdxl": sdxl_bytes},
            ),
            NOW - 1,
        )
        for i in range(5):  # sdxl asked for (and served) in the last hour
            w.feed(requested(f"old{i}", "sdxl"), NOW - 600 + i)
            w.feed(ev.GenerationCancelled(job_id=f"old{i}"), NOW - 500 + i)
        return w

    as_files = await world(3 * MB).round()
    assert [(c.worker_id, c.model_id, c.reason) for c in as_files] == [("w1", "sdxl", "predictive")]
    assert await world(60 * MB).round() == []


def made(job: str, total_ms: float, load_ms: float = 0.0) -> ev.ImageGenerated:
    timings = {"load": load_ms, "total": total_ms}
    return ev.ImageGenerated(
        job_id=job, worker_id="w2", fencing_token=1, images=(), timings_ms=timings
    )


async def test_a_model_warm_on_enough_workers_for_its_measured_work_gets_no_preload() -> None:
    """The share rule alone wants sdxl on every idle worker (it is all the demand); its measured
    run time says one holder serves that demand, as the simulator's policy knows (ADR 0701)."""

    def world(served: bool) -> World:
        w = World()
        w.feed(beat("w1", "demo", pinned=("demo",)), NOW - 1)
        w.feed(beat("w2", "sdxl"), NOW - 1)
        for i in range(5):  # sdxl asked for in the last hour, served on w2 or cancelled
            w.feed(requested(f"old{i}", "sdxl"), NOW - 600 + i)
            end = made(f"old{i}", 400.0, load_ms=100.0) if served else None
            w.feed(end or ev.GenerationCancelled(job_id=f"old{i}"), NOW - 500 + i)
        return w

    unmeasured = world(served=False)
    assert [(c.worker_id, c.model_id) for c in await unmeasured.round()] == [("w1", "sdxl")]
    measured = world(served=True)
    assert measured.planner.measured_models()["sdxl"].work_s == pytest.approx(0.3)
    assert measured.planner.measured_models()["flux"].work_s == 0  # no image yet: unknown
    assert await measured.round() == []
    assert await measured.restart().round() == []  # the run times come back with the log


def test_run_times_count_each_image_once_without_its_load_and_follow_the_recent_ones() -> None:
    world = World()
    world.feed(requested("a", "sdxl"), NOW - 10)
    world.feed(made("a", 900.0, load_ms=600.0), NOW - 9)
    world.feed(made("a", 5000.0), NOW - 8)  # redelivered, or a job this log never requested
    world.feed(made("never-requested", 5000.0), NOW - 8)
    assert mean_run_s(world.pool.demand, "sdxl") == pytest.approx(0.3)
    for i in range(RUN_SAMPLES):
        world.feed(requested(f"j{i}", "sdxl"), NOW - 7)
        world.feed(made(f"j{i}", 100.0), NOW - 6)
    assert mean_run_s(world.pool.demand, "sdxl") == pytest.approx(0.1)


def test_a_queued_job_weighs_what_its_model_measured_per_step_and_megapixel() -> None:
    """The storm's drain test and the autoscaling signal read each queued job's work: from the
    step estimate until its model has images, then from their measured seconds per step and
    megapixel, so a larger batch weighs what its steps and pixels say."""
    world = World()
    world.feed(beat("w1"), NOW - 1)
    world.feed(requested("q1", "sdxl"), NOW - 5)  # 4 steps of 64 px: 0.04 step-megapixels
    workers = world.planner.workers(NOW, set())
    [unmeasured] = world.planner.queue(NOW, workers)
    assert unmeasured.work_s == pytest.approx(4 * 0.01 * 0.05)  # the step estimate
    for i in range(3):  # 2 s each, load excluded
        world.feed(requested(f"done{i}", "sdxl"), NOW - 60)
        world.feed(made(f"done{i}", 2500.0, load_ms=500.0), NOW - 50)
    world.feed(requested("q2", "sdxl", size=128, images=4), NOW - 4)
    works = sorted(q.work_s for q in world.planner.queue(NOW, workers))
    per_step_mp = 2.0 / (4 * 0.01)  # the measured images: 64 px counts as 0.01 MP
    assert works == [pytest.approx(2.0), pytest.approx(per_step_mp * 4 * 128 * 128 * 4 / 1e6)]


async def test_a_load_under_way_is_not_asked_again_even_after_a_restart() -> None:
    world = World()
    world.feed(beat("w1"), NOW - 1)
    assert len(await world.round()) == 1
    assert await world.round(NOW + 5) == []  # asked, not answered yet
    restarted = world.restart()
    assert await restarted.round(NOW + 10) == []  # the replayed log says it is under way
    # The replayed command carries the time it was published (the wall clock, at or after NOW):
    # unanswered past the timeout from then, it is asked again.
    [asked_at] = [p.at for p in restarted.pool.demand.pending.values()]
    restarted.feed(beat("w1"), asked_at + 118)  # still beating, still without the model
    assert await restarted.round(asked_at + 119) == []
    restarted.feed(beat("w1"), asked_at + 120)
    assert await restarted.round(asked_at + 121) != []


async def test_an_answered_load_ends_and_the_worker_holding_it_needs_none() -> None:
    world = World()
    world.feed(beat("w1"), NOW - 1)
    [command] = await world.round()
    [command_id] = [e.event_id for e in world.log if e.type == LoadModel.event_type]
    loaded = ModelLoaded(
        worker_id="w1",
        model=LoadedModel(model_id="demo", bytes=int(14 * MB)),
        load_ms=80.0,
        command_id=command_id,
    )
    world.feed(loaded, NOW + 1)
    assert world.pool.demand.pending == {}
    assert await world.round(NOW + 5) == []


async def test_a_queue_spike_for_a_cold_model_gets_parallel_preloads() -> None:
    world = World()
    for w in ("w1", "w2", "w3", "w4"):
        world.feed(beat(w, "demo", pinned=("demo",)), NOW - 1)
    for i in range(12):
        world.feed(requested(f"j{i}", "flux"), NOW - 30)
    loads = await world.round()
    storm = [c for c in loads if c.reason == "storm"]
    assert len(storm) >= 2 and {c.model_id for c in storm} == {"flux"}
    assert len({c.worker_id for c in storm}) == len(storm)  # on different workers


async def test_storm_loads_take_their_workers_before_any_prediction() -> None:
    """Priority promotion, as the simulator runs it (``policy.pool_round``): in a quiet period
    on 24 workers a spike of 8 flux jobs is a storm; its loads are asked first, and predictive
    preloads go only to workers no storm load took (before, the same worker could get both).
    The quiet test counts the workers left (8 queued jobs, 16 workers), as in the simulator."""
    world = World()
    world.feed(beat("w01", "demo", pinned=("demo",)), NOW - 1)
    for i in range(2, 25):
        world.feed(beat(f"w{i:02}"), NOW - 1)
    for i in range(5):  # sdxl asked for (and served) in the last hour
        world.feed(requested(f"old{i}", "sdxl"), NOW - 600 + i)
        world.feed(ev.GenerationCancelled(job_id=f"old{i}"), NOW - 500 + i)
    for i in range(8):
        world.feed(requested(f"j{i}", "flux"), NOW - 30)
    loads = await world.round()
    reasons = [c.reason for c in loads]
    assert reasons.count("storm") == 8 and "predictive" in reasons
    assert reasons == sorted(reasons, key=lambda r: r != "storm")  # storms first
    workers = [c.worker_id for c in loads]
    assert len(workers) == len(set(workers))  # one load per worker
    assert world.planner.promoted == {"flux"}


async def test_the_autoscaling_signal_is_published_when_it_changes() -> None:
    world = World(step_s=50.0)  # 4 steps of a 64 px job: 10 s of work each
    world.feed(beat("w1", "demo", pinned=("demo",)), NOW - 1)
    await world.round()
    for i in range(40):
        world.feed(requested(f"j{i}", "sdxl"), NOW - 120)

    def signals() -> list[dict[str, object]]:
        return [
            r.envelope.data
            for r in world.publisher.records
            if r.envelope.type == AutoscaleRecommended.event_type
        ]

    await world.round(NOW + 5)  # the queue: more workers wanted; a storm load makes w1 busy
    await world.round(NOW + 5)  # busy while it loads: more again
    published = len(signals())
    await world.round(NOW + 5)  # nothing changed: nothing new
    assert len(signals()) == published
    first, *later = signals()
    assert first["desired_workers"] == 1 and first["queued_jobs"] == 0
    assert later and all(s["desired_workers"] > 1 for s in later)  # type: ignore[operator]
    desired = [s["desired_workers"] for s in signals()]
    assert all(a != b for a, b in zip(desired, desired[1:], strict=False))  # only on change
    assert later[-1]["pool"] == pool_of("cpu", 512 * (1 << 20)) == "cpu-0.5GiB"
    assert later[-1]["queued_jobs"] == 40


def signals(world: World) -> list[dict[str, object]]:
    return [
        r.envelope.data
        for r in world.publisher.records
        if r.envelope.type == AutoscaleRecommended.event_type
    ]


def gauge(pool: str) -> float | None:
    """``imagegen_pool_desired_workers{pool}`` as /metrics shows it; None: no such series."""
    for metric in DESIRED.collect():
        for sample in metric.samples:
            if sample.labels.get("pool") == pool:
                return sample.value
    return None


async def test_a_pool_whose_workers_are_all_lost_still_asks_for_workers_for_its_queue() -> None:
    # The only flux-capable pool (768 MiB) crashes; flux jobs wait. The signal must go on asking
    # for that pool (scale from zero), not freeze at its last value or drop the jobs.
    world = World(step_s=50.0)  # 4 steps of a 64 px job: 10 s of work each
    big, small = pool_of("cpu", 768 << 20), pool_of("cpu", 256 << 20)
    world.feed(beat("w1", total_mb=768), NOW - 700)  # silent past the 600 s timeout
    world.feed(beat("w2", total_mb=256, capabilities=("sd15", "sdxl")), NOW - 1)
    await world.pool.sweep()
    assert world.pool.fleet.workers["w1"].lost
    for i in range(40):
        world.feed(requested(f"j{i}", "flux"), NOW - 120)
    await world.round()
    last = {s["pool"]: s for s in signals(world)}
    assert last[big]["current_workers"] == 0
    assert last[big]["queued_jobs"] == 40
    assert last[big]["desired_workers"] > 1  # type: ignore[operator]
    assert gauge(big) == last[big]["desired_workers"]
    assert last[small]["queued_jobs"] == 0  # it cannot run flux
    assert "no live worker" in str(last[big]["reason"])


async def test_a_pool_losing_workers_is_signalled_even_when_the_desired_count_stays() -> None:
    # Analytics read the events: w2's loss changes the pool's live workers (2 -> 1) while 1
    # worker is still wanted; that is news, and is published.
    world = World()
    pool = pool_of("cpu", 320 << 20)
    world.feed(beat("w1", "demo", pinned=("demo",), total_mb=320), NOW - 1)
    world.feed(beat("w2", total_mb=320), NOW - 1)
    await world.round()
    before = [s for s in signals(world) if s["pool"] == pool]
    assert [(s["desired_workers"], s["current_workers"]) for s in before][-1:] == [(1, 2)]
    world.feed(beat("w1", "demo", pinned=("demo",), total_mb=320), NOW + 14)
    await world.round(NOW + 15)  # w2 silent for 16 s: no longer fresh, so not live
    after = [s for s in signals(world) if s["pool"] == pool]
    assert [(s["desired_workers"], s["current_workers"]) for s in after][-1] == (1, 1)
    await world.round(NOW + 16)
    assert len([s for s in signals(world) if s["pool"] == pool]) == len(after)  # no change


async def test_a_queued_job_asks_for_the_smallest_pool_whose_memory_holds_its_model() -> None:
    # 'big' takes 300 MB: a 256 MiB worker gives a job 205 MB (less the 20% margin), a 512 MiB
    # one 410 MB. Its queue must ask for 512 MiB workers, not for the smaller pool.
    models = {**MODELS, "big": ModelInfo("big", "sd15", 300e6, tier=3)}
    world = World(step_s=50.0, models=models)
    small, large = pool_of("cpu", 256 << 20), pool_of("cpu", 512 << 20)
    world.feed(beat("w1", total_mb=256), NOW - 1)
    world.feed(beat("w2", total_mb=512), NOW - 1)
    for i in range(40):
        world.feed(requested(f"j{i}", "big"), NOW - 120)
    await world.round()
    last = {s["pool"]: s for s in signals(world)}
    assert last[large]["queued_jobs"] == 40 and last[large]["desired_workers"] > 1  # type: ignore[operator]
    assert small not in last or last[small]["queued_jobs"] == 0


async def test_a_pool_no_worker_belongs_to_any_more_is_withdrawn() -> None:
    # A worker restarts with another memory size (or its class is scaled away): its old pool
    # must not stay in /metrics at its last value; the log says it is no longer wanted.
    world = World()
    old, new = pool_of("cpu", 384 << 20), pool_of("cpu", 640 << 20)
    world.feed(beat("w1", total_mb=384), NOW - 2)
    await world.round()
    assert gauge(old) == 1
    world.feed(beat("w1", total_mb=640), NOW - 1)
    await world.round()
    assert gauge(old) is None and gauge(new) is not None
    last = {s["pool"]: s for s in signals(world)}
    assert last[old]["desired_workers"] == 0 and last[old]["current_workers"] == 0
    assert "withdrawn" in str(last[old]["reason"])


async def test_a_pool_silent_past_the_window_is_withdrawn_and_one_within_it_is_kept() -> None:
    world = World()
    world.planner.config = replace(world.planner.config, autoscale_pool_window_s=900.0)
    gone, kept = pool_of("cpu", 896 << 20), pool_of("cpu", 1152 << 20)
    world.feed(beat("w1", total_mb=896), NOW - 800)
    world.feed(beat("w2", total_mb=1152), NOW - 800)
    await world.pool.sweep()  # both lost
    await world.round()
    assert gauge(gone) == 1 and gauge(kept) == 1  # lost, within the window: still asked for
    world.feed(beat("w2", total_mb=1152), NOW - 1)  # w2 comes back; w1 stays silent
    await world.round(NOW + 200)  # w1 last heard 1,000 s ago
    assert gauge(gone) is None and gauge(kept) is not None
    assert gone != kept


async def test_a_command_for_a_worker_the_fleet_never_heard_from_is_poison() -> None:
    from imagegen_pool_manager.service_layer.pool import UnknownWorker

    world = World()
    world.feed(beat("w1"), NOW - 1)
    command = LoadModel(worker_id="w9", model_id="demo", reason="operator")
    env = Envelope.wrap(command, correlation_id="w9", producer="ops")
    with pytest.raises(UnknownWorker, match="'w9'.*known: w1"):
        await world.pool.on_event(env, command, None, True)  # type: ignore[arg-type]
    assert world.pool.demand.pending == {}  # the fleet and the pool are unchanged
    await world.pool.on_event(env, command, None, False)  # replayed: folded, never refused


# --- upkeep: pins released, memory defragmented (ADR 0714) ------------------------------------


def brief(commands: list[object]) -> list[tuple[str, ...]]:
    out: list[tuple[str, ...]] = []
    for c in commands:
        if isinstance(c, LoadModel):
            out.append(("load", c.worker_id, c.model_id, c.reason))
        elif isinstance(c, EvictModel):
            out.append(("evict", c.worker_id, c.model_id, c.reason))
        elif isinstance(c, DefragmentMemory):
            out.append(("defrag", c.worker_id))
    return out


def answer_evict(world: World, at: float) -> None:
    """The worker answers the newest EvictModel as a worker does: an unpin (``keep_resident``)
    of a resident model with ``ModelLoaded(source="resident")``, an eviction with
    ``ModelEvicted``."""
    [*_, command] = [e for e in world.log if e.type == EvictModel.event_type]
    worker_id, model_id = command.data["worker_id"], command.data["model_id"]
    answer: ModelLoaded | ModelEvicted
    if command.data["keep_resident"]:
        model = LoadedModel(model_id=model_id, bytes=int(MODELS[model_id].size))
        answer = ModelLoaded(
            worker_id=worker_id,
            model=model,
            load_ms=0,
            source="resident",
            command_id=command.event_id,
        )
    else:
        answer = ModelEvicted(
            worker_id=worker_id, model_id=model_id, reason="command", command_id=command.event_id
        )
    world.feed(answer, at)


async def test_a_second_pin_of_a_model_is_released_once_and_never_asked_again() -> None:
    """w2 was declared lost and came back pinning the tier-1 model, which w1 pins now: the
    pool wants one pin (``tier1_min_workers=1``), so w2's is released with an EvictModel,
    once, also across a restart and while w2's heartbeats still show the pin."""
    world = World()
    world.feed(beat("w1", "demo", pinned=("demo",)), NOW - 1)
    world.feed(beat("w2", "demo", pinned=("demo",), status=WorkerStatus.BUSY), NOW - 1)
    assert brief(await world.commands()) == [("evict", "w2", "demo", "unpin")]
    assert await world.commands(NOW + 1) == []  # under way
    assert await world.restart().commands(NOW + 1) == []  # the replayed log says so too
    answer_evict(world, NOW + 2)
    assert world.pool.demand.evicting == {}
    world.feed(beat("w2", "demo", pinned=("demo",)), NOW + 3)  # built before it dropped the pin
    assert await world.commands(NOW + 4) == []
    assert await world.restart().commands(NOW + 4) == []
    # the answer replayed before its command (another topic, read first) counts the same
    [asked] = [e for e in world.log if e.type == EvictModel.event_type]
    assert asked.data["keep_resident"]  # only the pin goes: the warm model stays
    answer = [e for e in world.log if e.data.get("command_id") == asked.event_id]
    assert [e.type for e in answer] == [ModelLoaded.event_type]
    rest = [e for e in world.log if e not in answer]
    reordered = World(answer + rest)
    assert reordered.pool.demand.evicting == {}  # answered, not under way
    assert await reordered.commands(NOW + 4) == []
    world.feed(beat("w2"), NOW + 5)  # unpinned and unloaded
    assert await world.commands(NOW + 6) == []
    world.feed(beat("w1", "demo", pinned=("demo",)), NOW + 60)
    world.feed(beat("w2", "demo", pinned=("demo",)), NOW + 60)  # pinned again, well after
    assert brief(await world.commands(NOW + 61)) == [("evict", "w2", "demo", "unpin")]


async def test_an_unanswered_release_is_asked_again_after_the_timeout() -> None:
    world = World()
    world.feed(beat("w1", "demo", pinned=("demo",)), NOW - 1)
    world.feed(beat("w2", "demo", pinned=("demo",)), NOW - 1)
    assert len(await world.commands()) == 1
    [asked_at] = [p.at for p in world.pool.demand.evicting.values()]
    for at, expected in (
        (asked_at + 119, []),
        (asked_at + 121, [("evict", "w2", "demo", "unpin")]),
    ):
        world.feed(beat("w1", "demo", pinned=("demo",)), at - 1)  # both still beating, w2
        world.feed(beat("w2", "demo", pinned=("demo",)), at - 1)  # still pinning
        assert brief(await world.commands(at)) == expected


async def test_a_pin_is_kept_until_the_worker_taking_it_over_holds_it() -> None:
    """w2 (40 MB) can no longer hold the tier-1 model within a quarter of its memory; w1 gets
    the pin, and w2 keeps its own until w1's heartbeat lists the new one."""
    world = World()
    world.feed(beat("w1"), NOW - 1)
    world.feed(beat("w2", "demo", pinned=("demo",), total_mb=40), NOW - 1)
    assert brief(await world.commands()) == [("load", "w1", "demo", "pin")]
    answer_pin(world, NOW + 1)
    assert await world.commands(NOW + 2) == []  # w1's heartbeat does not list it yet
    world.feed(beat("w1", "demo", pinned=("demo",)), NOW + 3)
    assert brief(await world.commands(NOW + 4)) == [("evict", "w2", "demo", "unpin")]


async def test_pins_of_models_not_in_tier_1_are_released_at_once() -> None:
    """The registry moved sdxl to tier 2 and dropped ``retired`` (the pool-manager restarted
    on the new registry): the pins the workers still hold for them go."""
    world = World()
    world.feed(beat("w1", "demo", "sdxl", pinned=("demo", "retired", "sdxl")), NOW - 1)
    assert brief(await world.commands()) == [
        ("evict", "w1", "retired", "unpin"),
        ("evict", "w1", "sdxl", "unpin"),
    ]


async def test_an_idle_worker_with_fragmented_memory_is_defragmented_every_ten_minutes() -> None:
    world = World()
    world.feed(beat("w1", "demo", pinned=("demo",), fragmentation=0.45), NOW - 1)
    world.feed(beat("w2", fragmentation=0.29), NOW - 1)  # below 0.3: one block is most of it
    world.feed(beat("w3", status=WorkerStatus.BUSY, fragmentation=0.8), NOW - 1)  # running
    world.feed(beat("w4"), NOW - 1)  # a CPU worker measures nothing
    commands = await world.commands()
    assert brief(commands) == [("defrag", "w1")]
    assert isinstance(commands[0], DefragmentMemory)
    assert commands[0].reason == "fragmentation 0.45 >= 0.30"
    world.feed(beat("w1", "demo", pinned=("demo",), fragmentation=0.45), NOW + 30)
    assert await world.commands(NOW + 31) == []  # asked 31 s ago
    restarted = world.restart()
    # The replayed command carries the time it was published (the wall clock, at or after NOW)
    asked_at = restarted.pool.demand.defragmented["w1"]
    assert await restarted.commands(asked_at + 599) == []  # the log says when it was asked
    restarted.feed(beat("w1", "demo", pinned=("demo",), fragmentation=0.45), asked_at + 600)
    assert brief(await restarted.commands(asked_at + 601)) == [("defrag", "w1")]
    restarted.feed(beat("w1", "demo", pinned=("demo",), fragmentation=0.05), asked_at + 1300)
    assert await restarted.commands(asked_at + 1301) == []  # compact now


async def test_a_worker_given_a_load_is_not_defragmented_in_the_same_round() -> None:
    world = World()
    world.feed(beat("w1", fragmentation=0.6), NOW - 1)  # lacks the tier-1 model
    assert brief(await world.commands()) == [("load", "w1", "demo", "pin")]

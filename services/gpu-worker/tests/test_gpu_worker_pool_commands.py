"""Pool commands and residency facts on the worker (issue 13 item 3, ADR 0702).

The runner is the real ``DiffusersRunner`` (its cache, budget, LRU, in-use protection and
residency reports) with the ML stack stubbed out: models are folders with one small weight file
and a real ``model.json`` (so the registry's sha256 check and "not registered" are real), a
loaded pipeline is a stand-in whose size the test sets, and a run returns at once or when the
test lets it. Events are read from the in-memory publisher.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from imagegen_gpu_worker.adapters import diffusers_runner as dr
from imagegen_gpu_worker.adapters import registry
from imagegen_gpu_worker.adapters.blobs import InMemoryBlobStore
from imagegen_gpu_worker.adapters.memory import MemoryInfo, largest_free_block
from imagegen_gpu_worker.domain.plan import RunPlan
from imagegen_gpu_worker.domain.run import RunResult
from imagegen_gpu_worker.service_layer.commands import PoolCommands, UnknownModel
from imagegen_gpu_worker.service_layer.heartbeat import heartbeat
from imagegen_gpu_worker.service_layer.worker import Worker, WorkerState
from imagegen_runtime.faults import is_transient
from imagegen_runtime.kafka import RecordMeta
from imagegen_runtime.publishing import InMemoryPublisher, derived_event_id
from imagegen_schemas import Envelope, GenerationParams, Payload, Tier, parse
from imagegen_schemas import jobs as ev
from imagegen_schemas.workers import (
    DefragmentMemory,
    EvictModel,
    LoadModel,
    ModelCorrupted,
    ModelEvicted,
    ModelLoaded,
    ModelLoadFailed,
)

pytestmark = pytest.mark.unit

WORKER = "w1"
MODELS_TOPIC = "imagegen.workers.models"
MIB = 2**20
# Model id -> bytes once loaded (the estimate and the stand-in pipeline agree).
SIZES = {"a": 40 * MIB, "b": 40 * MIB, "c": 40 * MIB, "big": 200 * MIB}
BUDGET = 100 * MIB  # two of a, b, c fit; big never does


class Param:
    def __init__(self, nbytes: int) -> None:
        self.nbytes = nbytes

    def numel(self) -> int:
        return self.nbytes

    def element_size(self) -> int:
        return 1


class Module:  # stands in for torch.nn.Module
    def __init__(self, nbytes: int) -> None:
        self.nbytes = nbytes

    def parameters(self) -> list[Param]:
        return [Param(self.nbytes)]


class Pipe:
    """A loaded pipeline's stand-in; records where ``to`` moved it (in ``moves``)."""

    def __init__(self, model_id: str, nbytes: int, moves: list[tuple[str, str]]) -> None:
        self.model_id, self.moves = model_id, moves
        self.components = {"unet": Module(nbytes)}
        self.scheduler = SimpleNamespace(config={})

    def to(self, device: str) -> Pipe:
        self.moves.append((self.model_id, device))
        return self


class Cuda:
    def __init__(self, moves: list[tuple[str, str]]) -> None:
        self.moves = moves

    def empty_cache(self) -> None:
        self.moves.append(("*", "empty_cache"))


class LightRunner(dr.DiffusersRunner):
    """The real runner but for the denoising: a run returns one PNG, once ``gate`` is set."""

    gate: threading.Event | None = None
    running: threading.Event | None = None

    def _run(self, plan: RunPlan, *args: Any) -> RunResult:
        if self.running is not None:
            self.running.set()
        if self.gate is not None:
            assert self.gate.wait(30), "the test never let the run end"
        return RunResult([b"\x89PNG"], {"total": 1.0}, plan.steps)


@pytest.fixture
def moves() -> list[tuple[str, str]]:
    return []


@pytest.fixture
def models_dir(tmp_path: Path, moves: list[tuple[str, str]], monkeypatch: Any) -> Iterator[Path]:
    """Registered models a, b, c, big (one small weight file each, a real manifest) and
    ``corrupt`` (its file changed after the manifest was written); no torch or diffusers."""
    root = tmp_path / "models"
    for model_id in [*SIZES, "corrupt"]:
        folder = root / model_id / "unet"
        folder.mkdir(parents=True)
        (folder / "w.safetensors").write_bytes(model_id.encode())
        registry.write_manifest(root / model_id, id=model_id)
    (root / "corrupt" / "unet" / "w.safetensors").write_bytes(b"changed")
    fake_torch = SimpleNamespace(nn=SimpleNamespace(Module=Module), cuda=Cuda(moves))
    monkeypatch.setattr(dr, "torch_module", lambda: fake_torch)
    monkeypatch.setattr(dr, "estimate_bytes", lambda folder, upcast: SIZES.get(folder.name, MIB))
    monkeypatch.setattr(
        registry,
        "open_pipeline",
        lambda folder, entry, device, *dtype: Pipe(folder.name, SIZES.get(folder.name, MIB), moves),
    )
    yield root


@pytest.fixture
def runner(models_dir: Path) -> LightRunner:
    return LightRunner(models_dir, "cpu", memory_budget_bytes=BUDGET)


@pytest.fixture
def publisher() -> InMemoryPublisher:
    return InMemoryPublisher()


@pytest.fixture
def worker(runner: LightRunner, publisher: InMemoryPublisher) -> Worker:
    w = Worker(WorkerState(WORKER), runner, InMemoryBlobStore(), publisher)
    runner.on_change = w.reporter.record
    return w


@pytest.fixture
def commands(worker: Worker, runner: LightRunner) -> PoolCommands:
    c = PoolCommands(WORKER, runner, worker.reporter)
    worker.after_run = c.after_run
    return c


def command(payload: Payload) -> Envelope:
    return Envelope.wrap(payload, correlation_id=WORKER, producer="pool-manager")


_offsets = iter(range(1, 1_000_000))


def meta(offset: int | None = None, partition: int = 0) -> RecordMeta:
    return RecordMeta(
        "imagegen.pool.commands",
        partition,
        next(_offsets) if offset is None else offset,
        WORKER,
        {},
    )


async def send(commands: PoolCommands, payload: Payload, offset: int | None = None) -> Envelope:
    env = command(payload)
    await commands.handle(env, payload, meta(offset))
    return env


def facts(publisher: InMemoryPublisher) -> list[tuple[Envelope, Any]]:
    return [(env, parse(env)) for env in publisher.on(MODELS_TOPIC)]


def load(model_id: str, worker_id: str = WORKER) -> LoadModel:
    return LoadModel(worker_id=worker_id, model_id=model_id, reason="predicted_demand")


def evict(model_id: str) -> EvictModel:
    return EvictModel(worker_id=WORKER, model_id=model_id, reason="cold")


def assignment(job_id: str, model_id: str) -> tuple[Envelope, ev.JobScheduled]:
    msg = ev.JobScheduled(
        job_id=job_id,
        worker_id=WORKER,
        tier=Tier.FAST,
        fencing_token=1,
        attempt=1,
        params=GenerationParams(
            prompt="a red circle",
            model=model_id,
            width=64,
            height=64,
            steps=2,
            guidance_scale=5.0,
            seed=0,
        ),
    )
    return Envelope.wrap(msg, correlation_id=job_id, producer="scheduler"), msg


async def settle(publisher: InMemoryPublisher, n: int, timeout: float = 5.0) -> None:
    """Wait until ``n`` residency facts are published (the reporter publishes in the background
    for jobs)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while len(publisher.on(MODELS_TOPIC)) < n:
        assert loop.time() < deadline, facts(publisher)
        await asyncio.sleep(0.01)


# LoadModel


async def test_load_model_loads_from_disk_and_answers_with_an_id_derived_from_the_command(
    commands: PoolCommands, runner: LightRunner, publisher: InMemoryPublisher
) -> None:
    env = await send(commands, load("a"))
    [(fact, loaded)] = facts(publisher)
    assert isinstance(loaded, ModelLoaded)
    assert (loaded.worker_id, loaded.model.model_id, loaded.model.bytes) == (
        WORKER,
        "a",
        SIZES["a"],
    )
    assert (loaded.source, loaded.command_id, loaded.sha256_verified) == (
        "disk",
        env.event_id,
        True,
    )
    assert loaded.model.kind == "base" and loaded.load_ms >= 0
    assert fact.event_id == derived_event_id(env.event_id, ModelLoaded.event_type, "a")
    assert fact.causation_id == env.event_id and fact.correlation_id == WORKER
    assert [m for m, _ in runner.resident()] == ["a"]


async def test_load_model_of_a_resident_model_answers_resident_and_reads_nothing(
    commands: PoolCommands, runner: LightRunner, publisher: InMemoryPublisher, monkeypatch: Any
) -> None:
    runner.load("a")  # e.g. the warm-up's preload (no reporter yet: nothing published)

    def no_reads(*args: Any) -> Any:
        raise AssertionError("a resident model's files were read")

    monkeypatch.setattr(registry, "verify", no_reads)
    monkeypatch.setattr(registry.Integrity, "verify", no_reads)  # the runner's load check
    env = await send(commands, load("a"))
    [(_, loaded)] = facts(publisher)
    assert isinstance(loaded, ModelLoaded)
    assert (loaded.source, loaded.load_ms, loaded.command_id) == ("resident", 0.0, env.event_id)
    assert loaded.model.bytes == SIZES["a"]


async def test_a_duplicate_command_is_a_no_op_and_a_redelivery_republishes_the_same_ids(
    commands: PoolCommands, worker: Worker, models_dir: Path, publisher: InMemoryPublisher
) -> None:
    payload = load("a")
    env = command(payload)
    await commands.handle(env, payload, meta(7))
    await commands.handle(env, payload, meta(7))  # redelivered in this process: nothing
    assert len(facts(publisher)) == 1
    first = facts(publisher)[0][0].event_id

    # After a restart (a fresh process: new runner and memory of commands), the same command
    # republishes the same event id, which consumers drop as a duplicate.
    again = InMemoryPublisher()
    runner2 = LightRunner(models_dir, "cpu", memory_budget_bytes=BUDGET)
    worker2 = Worker(WorkerState(WORKER), runner2, InMemoryBlobStore(), again)
    runner2.on_change = worker2.reporter.record
    await PoolCommands(WORKER, runner2, worker2.reporter).handle(env, payload, meta(7))
    assert [e.event_id for e, _ in facts(again)] == [first]


async def test_loading_past_the_budget_evicts_the_least_recently_used_first(
    commands: PoolCommands, runner: LightRunner, publisher: InMemoryPublisher
) -> None:
    await send(commands, load("a"))
    await send(commands, load("b"))
    c = await send(commands, load("c"))
    names = [
        (type(p).__name__, getattr(p, "model_id", None) or p.model.model_id)
        for _, p in facts(publisher)
    ]
    assert names == [
        ("ModelLoaded", "a"),
        ("ModelLoaded", "b"),
        ("ModelEvicted", "a"),
        ("ModelLoaded", "c"),
    ]
    env, evicted = facts(publisher)[2]
    assert isinstance(evicted, ModelEvicted)
    assert (evicted.reason, evicted.command_id) == ("make_room", None)
    assert env.event_id == derived_event_id(c.event_id, ModelEvicted.event_type, "a")
    assert [m for m, _ in runner.resident()] == ["b", "c"]


async def test_a_model_larger_than_the_budget_answers_does_not_fit_and_unloads_nothing(
    commands: PoolCommands, runner: LightRunner, publisher: InMemoryPublisher
) -> None:
    await send(commands, load("a"))
    await send(commands, load("b"))
    env = await send(commands, load("big"))
    (_, failed) = facts(publisher)[-1]
    assert isinstance(failed, ModelLoadFailed)
    assert (failed.model_id, failed.reason, failed.command_id) == (
        "big",
        "does_not_fit",
        env.event_id,
    )
    assert "'big' needs about 200.0 MiB" in failed.message
    assert not any(isinstance(p, ModelEvicted) for _, p in facts(publisher))
    assert [m for m, _ in runner.resident()] == ["a", "b"]


async def test_a_corrupted_model_answers_corrupted_and_unloads_nothing(
    commands: PoolCommands, runner: LightRunner, publisher: InMemoryPublisher
) -> None:
    await send(commands, load("a"))
    await send(commands, load("b"))
    env = await send(commands, load("corrupt"))
    # ADR 0707: the bad file is published first (ModelCorrupted); without a repair source in
    # its manifest the load then fails.
    (_, bad), (_, failed) = facts(publisher)[-2:]
    assert isinstance(bad, ModelCorrupted)
    assert (bad.model_id, bad.file) == ("corrupt", "unet/w.safetensors")
    assert bad.actual_sha256 == registry.sha256_file(
        runner.models_dir / "corrupt" / "unet" / "w.safetensors"
    )
    assert isinstance(failed, ModelLoadFailed)
    assert (failed.reason, failed.command_id) == ("corrupted", env.event_id)
    assert "sha256" in failed.message and "records no 'source'" in failed.message
    assert len(facts(publisher)) == 4 and [m for m, _ in runner.resident()] == ["a", "b"]


async def test_an_unknown_model_is_poison_and_leaves_the_worker_unchanged(
    commands: PoolCommands, runner: LightRunner, publisher: InMemoryPublisher
) -> None:
    await send(commands, load("a"))
    payload = load("nope")
    env = command(payload)
    for _ in range(3):  # the consumer retries it max_attempts times, then dead-letters it
        with pytest.raises(UnknownModel, match="'nope' is not registered on this worker") as info:
            await commands.handle(env, payload, meta(9))
        # Not transient (the registry's FileNotFoundError is not its cause): it is poison.
        assert not is_transient(info.value)
    failures = [(e.event_id, p) for e, p in facts(publisher) if isinstance(p, ModelLoadFailed)]
    assert {i for i, _ in failures} == {
        derived_event_id(env.event_id, ModelLoadFailed.event_type, "nope")
    }
    assert failures[0][1].reason == "unknown_model"
    assert [m for m, _ in runner.resident()] == ["a"]
    assert env.event_id not in commands.handled and "nope" not in commands.newest


# EvictModel


async def test_evict_model_unloads_a_resident_model_and_answers(
    commands: PoolCommands, runner: LightRunner, publisher: InMemoryPublisher
) -> None:
    await send(commands, load("a"))
    env = await send(commands, evict("a"))
    (fact, evicted) = facts(publisher)[-1]
    assert isinstance(evicted, ModelEvicted)
    assert (evicted.model_id, evicted.reason, evicted.command_id) == ("a", "command", env.event_id)
    assert fact.event_id == derived_event_id(env.event_id, ModelEvicted.event_type, "a")
    assert runner.resident() == []


async def test_evicting_a_model_that_is_not_resident_answers_not_resident(
    commands: PoolCommands, runner: LightRunner, publisher: InMemoryPublisher
) -> None:
    await send(commands, load("a"))
    env = await send(commands, evict("b"))
    (_, evicted) = facts(publisher)[-1]
    assert isinstance(evicted, ModelEvicted)
    assert (evicted.model_id, evicted.reason, evicted.command_id) == (
        "b",
        "not_resident",
        env.event_id,
    )
    assert [m for m, _ in runner.resident()] == ["a"]


async def test_evicting_the_model_of_the_running_job_waits_for_the_run_to_end(
    commands: PoolCommands, worker: Worker, runner: LightRunner, publisher: InMemoryPublisher
) -> None:
    runner.gate, runner.running = threading.Event(), threading.Event()
    job_env, job = assignment("j1", "a")
    run = asyncio.create_task(worker.on_assignment(job_env, job))
    assert await asyncio.to_thread(runner.running.wait, 10)
    await settle(publisher, 1)  # the job's cold load of a

    env = await send(commands, evict("a"))
    assert len(facts(publisher)) == 1, "nothing is published while the run uses the model"
    assert [m for m, _ in runner.resident()] == ["a"] and commands.deferred == {"a": env}

    runner.gate.set()
    await asyncio.wait_for(run, 10)
    await settle(publisher, 2)
    (fact, evicted) = facts(publisher)[-1]
    assert isinstance(evicted, ModelEvicted)
    assert (evicted.model_id, evicted.reason, evicted.command_id) == ("a", "command", env.event_id)
    assert fact.event_id == derived_event_id(env.event_id, ModelEvicted.event_type, "a")
    assert runner.resident() == [] and commands.deferred == {}
    assert [r.envelope.type for r in publisher.records if r.key == b"j1"][-1] == (
        ev.ImageGenerated.event_type
    )


async def test_a_newer_load_model_cancels_an_eviction_deferred_by_a_run(
    commands: PoolCommands, worker: Worker, runner: LightRunner, publisher: InMemoryPublisher
) -> None:
    runner.gate, runner.running = threading.Event(), threading.Event()
    job_env, job = assignment("j1", "a")
    run = asyncio.create_task(worker.on_assignment(job_env, job))
    assert await asyncio.to_thread(runner.running.wait, 10)
    await send(commands, evict("a"))
    reload = await send(commands, load("a"))
    runner.gate.set()
    await asyncio.wait_for(run, 10)
    await settle(publisher, 2)
    (_, loaded) = facts(publisher)[-1]
    assert isinstance(loaded, ModelLoaded)
    assert (loaded.source, loaded.command_id) == ("resident", reload.event_id)
    assert [m for m, _ in runner.resident()] == ["a"]
    assert not any(isinstance(p, ModelEvicted) for _, p in facts(publisher))


async def test_a_load_that_would_unload_the_running_jobs_model_answers_in_use(
    commands: PoolCommands, worker: Worker, runner: LightRunner, publisher: InMemoryPublisher
) -> None:
    runner.memory_budget_bytes = 60 * MIB  # one model at a time
    runner.gate, runner.running = threading.Event(), threading.Event()
    job_env, job = assignment("j1", "a")
    run = asyncio.create_task(worker.on_assignment(job_env, job))
    assert await asyncio.to_thread(runner.running.wait, 10)
    env = await send(commands, load("b"))
    (_, failed) = facts(publisher)[-1]
    assert isinstance(failed, ModelLoadFailed)
    assert (failed.reason, failed.command_id) == ("in_use", env.event_id)
    assert "['a']" in failed.message and "running job" in failed.message
    assert [m for m, _ in runner.resident()] == ["a"]
    runner.gate.set()
    await asyncio.wait_for(run, 10)


# Fencing and routing


async def test_an_older_command_for_a_model_is_ignored_after_a_newer_one(
    commands: PoolCommands, runner: LightRunner, publisher: InMemoryPublisher
) -> None:
    old = load("a")
    old_env = command(old)
    await commands.handle(old_env, old, meta(10))
    await send(commands, evict("a"), offset=11)
    commands.handled.clear()  # even with the duplicate memory gone, the offset fences it
    await commands.handle(old_env, old, meta(10))
    assert runner.resident() == []
    assert [type(p).__name__ for _, p in facts(publisher)] == ["ModelLoaded", "ModelEvicted"]
    # Another model's commands are not fenced by it.
    await send(commands, load("b"), offset=3)
    assert [m for m, _ in runner.resident()] == ["b"]


async def test_commands_for_another_worker_are_skipped(
    commands: PoolCommands, runner: LightRunner, publisher: InMemoryPublisher
) -> None:
    await send(commands, load("a", worker_id="w2"))
    await send(commands, DefragmentMemory(worker_id="w2"))
    assert runner.resident() == [] and publisher.records == []


# DefragmentMemory


async def test_defragment_on_cpu_publishes_nothing_and_keeps_every_model(
    commands: PoolCommands, runner: LightRunner, publisher: InMemoryPublisher, moves: list[Any]
) -> None:
    await send(commands, load("a"))
    await send(commands, load("b"))
    moves.clear()
    await send(commands, DefragmentMemory(worker_id=WORKER, reason="fragmented"))
    assert len(facts(publisher)) == 2 and moves == []
    assert [m for m, _ in runner.resident()] == ["a", "b"]


async def test_defragment_on_cuda_moves_idle_pipelines_out_and_back_in_lru_order(
    models_dir: Path, moves: list[tuple[str, str]]
) -> None:
    runner = LightRunner(models_dir, "cuda", memory_budget_bytes=BUDGET)
    runner.load("a")
    runner.load("b")
    runner.load("a")  # a is now the most recently used
    runner._in_use["c"] += 1  # a run's model (here not resident) is never touched
    moves.clear()
    runner.defragment()
    assert moves == [
        ("b", "cpu"),
        ("a", "cpu"),
        ("*", "empty_cache"),
        ("b", "cuda"),
        ("a", "cuda"),
    ]
    assert [m for m, _ in runner.resident()] == ["b", "a"]


def test_largest_free_block_is_the_larger_of_the_drivers_free_memory_and_a_cached_block() -> None:
    def torch_with(segments: list[dict[str, Any]]) -> Any:
        return SimpleNamespace(cuda=SimpleNamespace(memory_snapshot=lambda: segments))

    segments = [
        {
            "blocks": [
                {"size": 512, "state": "active_allocated"},
                {"size": 300, "state": "inactive"},
            ]
        },
        {"blocks": [{"size": 700, "state": "inactive"}]},
    ]
    assert largest_free_block(100, torch_with(segments)) == 700
    assert largest_free_block(1000, torch_with(segments)) == 1000
    assert largest_free_block(100, torch_with([])) == 100
    beat = heartbeat(WORKER, MemoryInfo(2000, 1000, "H200", 700), 2.0)
    assert beat.largest_free_block_bytes == 700
    assert heartbeat(WORKER, MemoryInfo(2000, 1000, "cpu"), 2.0).largest_free_block_bytes is None


# Job-driven residency facts


async def test_a_jobs_cold_load_and_the_evictions_it_needs_are_published(
    worker: Worker, runner: LightRunner, publisher: InMemoryPublisher
) -> None:
    runner.memory_budget_bytes = 60 * MIB  # one model at a time
    first_env, first = assignment("j1", "a")
    await worker.on_assignment(first_env, first)
    await settle(publisher, 1)
    (fact, loaded) = facts(publisher)[0]
    assert isinstance(loaded, ModelLoaded)
    assert (loaded.model.model_id, loaded.source, loaded.command_id) == ("a", "disk", None)
    assert fact.causation_id == first_env.event_id

    warm_env, warm = assignment("j2", "a")
    await worker.on_assignment(warm_env, warm)  # warm: no residency change, nothing published
    second_env, second = assignment("j3", "b")
    await worker.on_assignment(second_env, second)
    await settle(publisher, 3)
    got = [(type(p).__name__, e.causation_id) for e, p in facts(publisher)]
    assert got == [
        ("ModelLoaded", first_env.event_id),
        ("ModelEvicted", second_env.event_id),
        ("ModelLoaded", second_env.event_id),
    ]
    evicted = facts(publisher)[1][1]
    assert (evicted.model_id, evicted.reason, evicted.command_id) == ("a", "make_room", None)
    assert len({e.event_id for e, _ in facts(publisher)}) == 3


async def test_facts_are_published_in_the_order_they_happened_when_the_broker_stalls(
    worker: Worker, runner: LightRunner
) -> None:
    """A transient publish failure holds the facts after it back (same id on the retry)."""
    from imagegen_runtime.faults import Backoff

    class Flaky(InMemoryPublisher):
        failures = 2

        async def publish(self, payload: Payload, **kw: Any) -> Envelope:
            if isinstance(payload, ModelLoaded) and self.failures:
                self.failures -= 1
                raise ConnectionError("broker away")
            return await super().publish(payload, **kw)

    flaky = Flaky()
    worker.reporter.publisher = flaky
    worker.reporter.backoff = Backoff(initial_s=0.001, cap_s=0.01)
    runner.memory_budget_bytes = 60 * MIB
    for job, model in (("j1", "a"), ("j2", "b")):
        env, msg = assignment(job, model)
        await worker.on_assignment(env, msg)
    await settle(flaky, 3)
    got = [
        (type(p).__name__, getattr(p, "model_id", None) or p.model.model_id)
        for _, p in facts(flaky)
    ]
    assert got == [("ModelLoaded", "a"), ("ModelEvicted", "a"), ("ModelLoaded", "b")]


def test_the_runner_reports_every_load_and_unload_in_order(runner: LightRunner) -> None:
    seen: list[Any] = []
    runner.on_change = seen.append
    runner.memory_budget_bytes = 60 * MIB
    runner.load("a")
    runner.load("a")  # a hit: nothing happened
    runner.load("b")
    assert runner.evict("a") == "not_resident"
    assert runner.evict("b") == "evicted"
    assert [(type(c).__name__, c.model_id, getattr(c, "reason", None)) for c in seen] == [
        ("Loaded", "a", None),
        ("Unloaded", "a", "make_room"),
        ("Loaded", "b", None),
        ("Unloaded", "a", "not_resident"),
        ("Unloaded", "b", "command"),
    ]


# Pins (ADR 0711): LoadModel(pin=True) keeps a tier-1 model while anything else can make room


def pin(model_id: str) -> LoadModel:
    return LoadModel(worker_id=WORKER, model_id=model_id, reason="pin", pin=True)


def overrides() -> float:
    from prometheus_client import REGISTRY

    return REGISTRY.get_sample_value("imagegen_gpu_worker_pin_overrides_total") or 0.0


async def test_a_pinned_model_is_passed_over_by_the_eviction_that_makes_room(
    commands: PoolCommands, runner: LightRunner, publisher: InMemoryPublisher
) -> None:
    await send(commands, pin("a"))  # the least recently used from here on
    await send(commands, load("b"))
    await send(commands, load("c"))
    evicted = [p.model_id for _, p in facts(publisher) if isinstance(p, ModelEvicted)]
    assert evicted == ["b"]  # without the pin, "a" (least recently used) would have gone
    assert [m for m, _ in runner.resident()] == ["a", "c"]
    assert runner.pins() == ["a"]
    mem = MemoryInfo(BUDGET, BUDGET // 2, "cpu")
    assert heartbeat(WORKER, mem, 2.0, pinned=tuple(runner.pins())).pinned == ("a",)


async def test_pinning_a_resident_model_answers_resident_and_protects_it(
    commands: PoolCommands, runner: LightRunner, publisher: InMemoryPublisher
) -> None:
    runner.load("a")
    runner.load("b")
    env = await send(commands, pin("a"))
    [(_, answer)] = facts(publisher)
    assert isinstance(answer, ModelLoaded)
    assert (answer.source, answer.command_id) == ("resident", env.event_id)
    runner.load("b")  # "a" is the least recently used again
    runner.load("c")  # a job's load (no command): the worker's own eviction honours the pin
    assert [m for m, _ in runner.resident()] == ["a", "c"]


async def test_a_job_that_cannot_fit_beside_the_pins_unloads_one_and_the_pin_outlives_it(
    commands: PoolCommands, runner: LightRunner, publisher: InMemoryPublisher
) -> None:
    await send(commands, pin("a"))
    await send(commands, pin("b"))
    before = overrides()
    await send(commands, load("c"))  # 120 MiB with both pins: one must go, the older first
    assert [m for m, _ in runner.resident()] == ["b", "c"]
    assert overrides() == before + 1
    assert runner.pins() == ["a", "b"]  # "a" is still pinned, though not resident
    runner.load("a")  # loaded again (a job): protected again, so the unpinned "c" makes room
    assert [m for m, _ in runner.resident()] == ["b", "a"]
    assert overrides() == before + 1


async def test_evict_model_unpins_and_a_failed_pin_pins_nothing(
    commands: PoolCommands, runner: LightRunner, publisher: InMemoryPublisher
) -> None:
    await send(commands, pin("a"))
    await send(commands, evict("a"))
    assert runner.pins() == [] and runner.resident() == []
    await send(commands, pin("big"))  # does not fit: answered does_not_fit, nothing pinned
    (_, failed) = facts(publisher)[-1]
    assert isinstance(failed, ModelLoadFailed) and failed.reason == "does_not_fit"
    assert runner.pins() == []


def test_the_wired_heartbeat_lists_the_runners_pins(tmp_path: Path, monkeypatch: Any) -> None:
    from gpu_worker_testkit import wired_heartbeat

    monkeypatch.setattr(dr.DiffusersRunner, "pins", lambda self: ["m1", "m2"])
    assert wired_heartbeat(tmp_path).pinned == ("m1", "m2")


def unpin(model_id: str) -> EvictModel:
    return EvictModel(worker_id=WORKER, model_id=model_id, reason="unpin", keep_resident=True)


async def test_an_unpin_keeps_the_model_loaded_and_answers_resident(
    commands: PoolCommands, runner: LightRunner, publisher: InMemoryPublisher
) -> None:
    # The pool releasing a pin (a model out of tier 1, a worker back after being declared
    # lost) must not unload a warm model: on a fleet pinning a popular model on 20 workers that
    # would be 20 cold loads waiting to happen.
    await send(commands, pin("a"))
    await send(commands, load("b"))
    env = await send(commands, unpin("a"))
    (fact, answer) = facts(publisher)[-1]
    assert isinstance(answer, ModelLoaded)
    assert (answer.model.model_id, answer.source, answer.command_id) == (
        "a",
        "resident",
        env.event_id,
    )
    assert fact.event_id == derived_event_id(env.event_id, ModelLoaded.event_type, "a")
    assert runner.pins() == [] and [m for m, _ in runner.resident()] == ["a", "b"]
    await send(commands, load("c"))  # no longer protected: the least recently used goes
    assert [m for m, _ in runner.resident()] == ["b", "c"]
    env = await send(commands, unpin("a"))  # not loaded: answered not_resident
    (_, answer) = facts(publisher)[-1]
    assert isinstance(answer, ModelEvicted)
    assert (answer.reason, answer.command_id) == ("not_resident", env.event_id)


async def test_an_unpin_is_not_deferred_by_a_run_and_cancels_a_deferred_eviction(
    commands: PoolCommands, worker: Worker, runner: LightRunner, publisher: InMemoryPublisher
) -> None:
    runner.gate, runner.running = threading.Event(), threading.Event()
    job_env, job = assignment("j1", "a")
    run = asyncio.create_task(worker.on_assignment(job_env, job))
    assert await asyncio.to_thread(runner.running.wait, 10)
    await settle(publisher, 1)  # the job's cold load of a
    await send(commands, evict("a"))  # deferred while the run uses it
    env = await send(commands, unpin("a"))
    (_, answer) = facts(publisher)[-1]
    assert isinstance(answer, ModelLoaded) and answer.command_id == env.event_id
    assert commands.deferred == {}
    runner.gate.set()
    await asyncio.wait_for(run, 10)
    await commands.after_run()
    assert [m for m, _ in runner.resident()] == ["a"]  # still loaded after the run

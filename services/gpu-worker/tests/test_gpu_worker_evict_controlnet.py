"""EvictModel naming a ControlNet (issues 12/13; ADR 0702, 0706), with the zoo's tiny sd15
canny net on CPU.

A loaded net is listed in heartbeats and published (``ModelLoaded(kind="controlnet")``) under its
registry id; an ``EvictModel`` with that id is answered as for a base model: evicted
(``ModelEvicted(reason="command", command_id)``, the id derived from the command's), deferred
while a running job uses the net, ``not_resident`` when it is not loaded; a duplicate is a
no-op and an older command for it is fenced. The runner is the real one; commands go through
:class:`PoolCommands` and the residency reporter to an in-memory publisher.
"""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

import pytest
from gpu_worker_testkit import tiny_plan
from test_gpu_worker_controlnets import Files, shapes, with_nets

from imagegen_gpu_worker.adapters.diffusers_runner import DiffusersRunner
from imagegen_gpu_worker.domain.plan import ControlNetUse, RunPlan
from imagegen_gpu_worker.service_layer.commands import PoolCommands
from imagegen_gpu_worker.service_layer.residency import Cause, ResidencyReporter
from imagegen_runtime.kafka import RecordMeta
from imagegen_runtime.publishing import InMemoryPublisher, derived_event_id
from imagegen_schemas import Envelope, parse
from imagegen_schemas.workers import (
    EvictModel,
    LoadModel,
    ModelEvicted,
    ModelLoaded,
    ModelLoadFailed,
)

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.unit

WORKER = "w1"
MODELS_TOPIC = "imagegen.workers.models"
CANNY = "tiny-sd15-controlnet-canny"


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Files:
    return Files(tmp_path_factory.mktemp("files"))


@pytest.fixture
def publisher() -> InMemoryPublisher:
    return InMemoryPublisher()


@pytest.fixture
def reporter(publisher: InMemoryPublisher) -> ResidencyReporter:
    return ResidencyReporter(WORKER, publisher)


@pytest.fixture
def runner(zoo: Path, files: Files, reporter: ResidencyReporter) -> DiffusersRunner:
    torch.set_num_threads(2)
    return DiffusersRunner(zoo, files_dir=files.root, on_change=reporter.record)


@pytest.fixture
def commands(runner: DiffusersRunner, reporter: ResidencyReporter) -> PoolCommands:
    return PoolCommands(WORKER, runner, reporter)


def canny_plan(files: Files) -> RunPlan:
    return with_nets(tiny_plan("tiny-sd15"), ControlNetUse("canny", files.put(shapes(1))))


async def job(
    reporter: ResidencyReporter, runner: DiffusersRunner, plan: RunPlan, on_step: Any = None
) -> None:
    """Run ``plan`` as the worker does (in a thread, its facts attributed to a job) and wait
    until its residency facts are published."""
    cause = Cause()
    step = on_step or (lambda *_: None)
    await reporter.in_thread(runner.run, plan, step, lambda: False, cause=cause)
    await cause.settled()


async def send(commands: PoolCommands, payload: EvictModel | LoadModel, offset: int) -> Envelope:
    env = Envelope.wrap(payload, correlation_id=WORKER, producer="pool-manager")
    meta = RecordMeta("imagegen.pool.commands", 0, offset, WORKER, {})
    await commands.handle(env, payload, meta)
    return env


def evict(model_id: str) -> EvictModel:
    return EvictModel(worker_id=WORKER, model_id=model_id, reason="cold")


def facts(publisher: InMemoryPublisher) -> list[tuple[Envelope, Any]]:
    return [(env, parse(env)) for env in publisher.on(MODELS_TOPIC)]


async def settle(publisher: InMemoryPublisher, n: int, timeout: float = 10.0) -> None:
    """Wait until ``n`` residency facts are published (a deferred eviction's are not awaited
    by ``after_run``)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while len(publisher.on(MODELS_TOPIC)) < n:
        assert loop.time() < deadline, facts(publisher)
        await asyncio.sleep(0.01)


def assert_net_evicted_by(publisher: InMemoryPublisher, env: Envelope) -> None:
    """The latest fact answers ``env``: the canny net unloaded, under an id derived from it."""
    (fact, evicted) = facts(publisher)[-1]
    assert isinstance(evicted, ModelEvicted)
    assert (evicted.model_id, evicted.kind, evicted.reason, evicted.command_id) == (
        CANNY,
        "controlnet",  # the scheduler removes it as cn/<id>, as it was loaded
        "command",
        env.event_id,
    )
    assert fact.event_id == derived_event_id(env.event_id, ModelEvicted.event_type, CANNY)


def nets(runner: DiffusersRunner) -> list[str]:
    return [net_id for net_id, _ in runner.resident_controlnets()]


async def test_evict_model_of_a_loaded_controlnet_unloads_it_and_answers_once(
    commands: PoolCommands,
    runner: DiffusersRunner,
    reporter: ResidencyReporter,
    publisher: InMemoryPublisher,
    files: Files,
) -> None:
    await job(reporter, runner, canny_plan(files))
    loaded = [p.model for _, p in facts(publisher) if isinstance(p, ModelLoaded)]
    assert [(m.model_id, m.kind) for m in loaded] == [
        ("tiny-sd15", "base"),
        (CANNY, "controlnet"),
    ]
    assert nets(runner) == [CANNY]

    env = await send(commands, evict(CANNY), offset=10)
    assert_net_evicted_by(publisher, env)
    # The net is gone from the budget and the heartbeat's list; its model stays.
    assert nets(runner) == [] and [name for name, _ in runner.held()] == ["tiny-sd15"]
    count = len(facts(publisher))

    # Idempotent: the same command again publishes nothing; an older one is fenced.
    await commands.handle(env, parse(env), RecordMeta("imagegen.pool.commands", 0, 10, WORKER, {}))
    await send(commands, evict(CANNY), offset=9)
    assert len(facts(publisher)) == count

    # A newer command for the net, now not loaded: not_resident, as for a base model.
    again = await send(commands, evict(CANNY), offset=11)
    (_, answer) = facts(publisher)[-1]
    assert isinstance(answer, ModelEvicted)
    assert (answer.model_id, answer.reason, answer.command_id) == (
        CANNY,
        "not_resident",
        again.event_id,
    )
    assert list(runner.loaded) == ["tiny-sd15"]


async def test_evict_model_of_a_registered_controlnet_never_loaded_answers_not_resident(
    commands: PoolCommands, runner: DiffusersRunner, publisher: InMemoryPublisher
) -> None:
    env = await send(commands, evict(CANNY), offset=1)
    [(_, answer)] = facts(publisher)
    assert isinstance(answer, ModelEvicted)
    assert (answer.model_id, answer.reason, answer.command_id) == (
        CANNY,
        "not_resident",
        env.event_id,
    )


async def test_evicting_the_controlnet_of_the_running_job_waits_for_the_run_to_end(
    commands: PoolCommands,
    runner: DiffusersRunner,
    reporter: ResidencyReporter,
    publisher: InMemoryPublisher,
    files: Files,
) -> None:
    running, gate = threading.Event(), threading.Event()

    def hold_the_first_step(done: int, total: int, preview: str | None) -> None:
        if done == 1:
            running.set()
            assert gate.wait(60), "the test never let the run go on"

    run = asyncio.create_task(job(reporter, runner, canny_plan(files), hold_the_first_step))
    assert await asyncio.to_thread(running.wait, 60)
    env = await send(commands, evict(CANNY), offset=5)
    assert not any(isinstance(p, ModelEvicted) for _, p in facts(publisher))
    assert nets(runner) == [CANNY] and commands.deferred == {CANNY: env}

    count = len(facts(publisher))
    gate.set()
    await asyncio.wait_for(run, 60)
    await commands.after_run()  # what the worker calls when a run ends
    await settle(publisher, count + 1)
    assert_net_evicted_by(publisher, env)
    assert nets(runner) == [] and list(runner.loaded) == ["tiny-sd15"]
    assert commands.deferred == {}


@pytest.mark.parametrize("model_id", [CANNY, "tiny-sd15-lora-ink"])
async def test_load_model_of_a_controlnet_or_lora_id_fails_and_unloads_nothing(
    commands: PoolCommands, runner: DiffusersRunner, publisher: InMemoryPublisher, model_id: str
) -> None:
    """A net or a LoRA loads with the model a job runs, never alone: a LoadModel for its id is
    answered ``not_a_base_model`` before anything is unloaded for it (before, it went on to
    make room and then failed opening the folder as a pipeline)."""
    runner.load("tiny-sd15")
    runner.memory_budget_bytes = sum(b for _, b in runner.held())  # any room made would evict
    before = len(facts(publisher))
    env = await send(commands, LoadModel(worker_id=WORKER, model_id=model_id), offset=3)
    [(_, answer)] = facts(publisher)[before:]
    assert isinstance(answer, ModelLoadFailed)
    assert (answer.model_id, answer.reason, answer.command_id) == (
        model_id,
        "not_a_base_model",
        env.event_id,
    )
    assert list(runner.loaded) == ["tiny-sd15"] and nets(runner) == []

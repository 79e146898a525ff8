"""ControlNets in the worker's memory budget (ADR 0706, 0708), with the zoo's tiny nets on CPU.

A loaded net's measured bytes hold the budget like a model's; making room unloads nets (least
recently used first) before base models; a net goes with its family's last resident model;
a net a run is using is never unloaded. Budgets are set from the runner's own measured sizes
(:meth:`DiffusersRunner.held`) and the nets' file estimates, so that exactly one thing must go.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from gpu_worker_testkit import tiny_plan
from test_gpu_worker_controlnets import Files, shapes, with_nets

from imagegen_gpu_worker.adapters.admission import BudgetAdmission
from imagegen_gpu_worker.adapters.diffusers_runner import (
    DiffusersRunner,
    estimate_bytes,
    net_name,
)
from imagegen_gpu_worker.domain.plan import ControlNetUse, RunPlan
from imagegen_gpu_worker.domain.residency import (
    COMMAND,
    MAKE_ROOM,
    Loaded,
    ResidencyChange,
    Unloaded,
)
from imagegen_gpu_worker.domain.run import ModelBlockedByRun
from imagegen_gpu_worker.service_layer.heartbeat import loaded_models
from imagegen_runtime import budget

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.unit
MIB = budget.MIB
CANNY, TILE, SCRIBBLE = (f"tiny-sd15-controlnet-{t}" for t in ("canny", "tile", "scribble"))
SDXL_CANNY = "tiny-sdxl-controlnet-canny"
F32 = str(torch.float32)  # the dtype of every tiny model on CPU


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Files:
    return Files(tmp_path_factory.mktemp("files"))


@pytest.fixture
def facts() -> list[ResidencyChange]:
    return []


@pytest.fixture
def runner(zoo: Path, files: Files, facts: list[ResidencyChange]) -> DiffusersRunner:
    torch.set_num_threads(2)
    return DiffusersRunner(zoo, files_dir=files.root, on_change=facts.append)


def plan(files: Files, control_type: str, model_id: str = "tiny-sd15", **use: float) -> RunPlan:
    return with_nets(tiny_plan(model_id), ControlNetUse(control_type, files.put(shapes(1)), **use))


def run(runner: DiffusersRunner, p: RunPlan) -> None:
    runner.run(p, lambda *_: None, lambda: False)


def nets(runner: DiffusersRunner) -> list[str]:
    return [net_id for net_id, _ in runner.resident_controlnets()]


def file_estimate(zoo: Path, net_id: str) -> int:
    return estimate_bytes(zoo / net_id, lambda _: True)  # float32 on CPU


def test_a_controlnets_bytes_hold_the_budget_after_a_job_that_used_it(
    runner: DiffusersRunner, zoo: Path, files: Files, facts: list[ResidencyChange]
) -> None:
    admission = BudgetAdmission(runner)
    p = plan(files, "canny")
    estimate = file_estimate(zoo, CANNY)
    # Before it is loaded: its files' estimate, not the family's 1400 MiB default reserve.
    assert admission.need(p).controlnets_mb == pytest.approx(estimate / MIB)
    run(runner, p)
    [(net_id, size)] = runner.resident_controlnets()
    assert net_id == CANNY and abs(size - estimate) <= 0.02 * size
    held = dict(runner.held())
    assert held == {net_name((CANNY, F32)): size, "tiny-sd15": runner.loaded["tiny-sd15"].bytes}
    assert Loaded(CANNY, "controlnet", size, facts[-1].load_ms) in facts  # type: ignore[union-attr]
    # After: its measured bytes, once however many uses name it, none for an empty window.
    assert admission.need(p).controlnets_mb == size / MIB
    use = p.controlnets[0]
    assert admission.need(with_nets(p, use, use)).controlnets_mb == size / MIB
    empty = ControlNetUse("canny", use.image, 1.0, 0.5, 0.5)
    assert admission.need(with_nets(p, empty)).controlnets_mb == 0
    # The heartbeat lists it (its kind and bytes) beside the model.
    beat = loaded_models(runner.resident(), runner.resident_loras(), runner.resident_controlnets())
    assert [(m.model_id, m.kind, m.bytes) for m in beat] == [
        ("tiny-sd15", "base", held["tiny-sd15"]),
        (CANNY, "controlnet", size),
    ]


def test_a_budget_too_small_for_base_and_nets_evicts_the_lru_net_first(
    runner: DiffusersRunner, zoo: Path, files: Files, facts: list[ResidencyChange]
) -> None:
    runner.load("tiny-sdxl")  # the oldest: plain LRU over models would unload it first
    run(runner, plan(files, "canny"))
    run(runner, plan(files, "tile"))  # canny is now the least recently used net
    assert [name for name, _ in runner.held()] == [
        net_name((CANNY, F32)),
        net_name((TILE, F32)),
        "tiny-sdxl",
        "tiny-sd15",
    ]
    # Room for the scribble net's estimate, less one byte: one thing must go.
    runner.memory_budget_bytes = sum(b for _, b in runner.held()) + file_estimate(zoo, SCRIBBLE) - 1
    facts.clear()
    run(runner, plan(files, "scribble"))
    assert nets(runner) == [SCRIBBLE, TILE]
    assert list(runner.loaded) == ["tiny-sdxl", "tiny-sd15"]
    assert [f for f in facts if isinstance(f, Unloaded)] == [
        Unloaded(CANNY, MAKE_ROOM, net_name((SCRIBBLE, F32)), kind="controlnet")
    ]

    # Through the worker's admission (margin included): a job using the tile net keeps it and
    # its model; the least recently used other net goes first, not the older sdxl model.
    admission = BudgetAdmission(runner)
    p = plan(files, "tile")
    need = admission.need(p).total_mb * MIB
    sizes = dict(runner.held())
    room = sizes["tiny-sdxl"] + sizes[net_name((SCRIBBLE, F32))] // 2  # what may stay
    runner.memory_budget_bytes = int((need + room) / budget.USABLE_FRACTION)
    facts.clear()
    admission.admit(p)
    assert nets(runner) == [TILE]
    assert list(runner.loaded) == ["tiny-sdxl", "tiny-sd15"]
    assert [f for f in facts if isinstance(f, Unloaded)] == [
        Unloaded(SCRIBBLE, MAKE_ROOM, "tiny-sd15", kind="controlnet")
    ]


def test_an_unused_net_goes_with_its_familys_last_model(
    runner: DiffusersRunner, zoo: Path, files: Files, facts: list[ResidencyChange]
) -> None:
    run(runner, plan(files, "canny"))
    run(runner, plan(files, "canny", "tiny-sdxl"))
    assert nets(runner) == [CANNY, SDXL_CANNY]
    facts.clear()
    assert runner.evict("tiny-sd15") == "evicted"  # an EvictModel command
    assert nets(runner) == [SDXL_CANNY]  # the sdxl net stays with its model
    assert [f for f in facts if isinstance(f, Unloaded)] == [
        Unloaded("tiny-sd15", COMMAND),
        Unloaded(CANNY, COMMAND, kind="controlnet"),
    ]
    # Made room for: loading sd15 into a budget that holds sdxl and its net unloads both.
    runner.memory_budget_bytes = sum(b for _, b in runner.held())
    facts.clear()
    runner.load("tiny-sd15")
    assert list(runner.loaded) == ["tiny-sd15"] and nets(runner) == []
    assert {f.model_id for f in facts if isinstance(f, Unloaded)} == {"tiny-sdxl", SDXL_CANNY}


def test_a_net_in_use_is_not_evicted(runner: DiffusersRunner, files: Files) -> None:
    seen: dict[str, object] = {}
    name = net_name((CANNY, F32))

    def during_the_run(done: int, total: int, preview: str | None) -> None:
        if done != 1:
            return
        sizes = dict(runner.held())
        runner.memory_budget_bytes = sum(sizes.values())  # full: room only by unloading
        try:  # room for the net's size: only the net or its model could give it
            runner.make_room("tiny-sdxl", sizes[name])
        except ModelBlockedByRun as exc:
            seen["blocked"] = exc
        seen["nets"] = nets(runner)
        seen["evict"] = runner.evict("tiny-sd15")

    p = plan(files, "canny")
    runner.run(p, during_the_run, lambda: False)
    assert isinstance(seen["blocked"], ModelBlockedByRun)
    assert seen["nets"] == [CANNY] and seen["evict"] == "in_use"
    assert runner.busy() == set()
    # Once the run is over the same request unloads the net, and only the net.
    runner.make_room("tiny-sdxl", dict(runner.held())[name])
    assert nets(runner) == [] and list(runner.loaded) == ["tiny-sd15"]

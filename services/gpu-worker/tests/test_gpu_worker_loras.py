"""LoRAs on the worker (ADR 0704), with the zoo's tiny random LoRAs on its tiny models (CPU).

``tiny-sd15-lora-ink``, ``tiny-sd15-lora-glow`` and ``tiny-sdxl-lora-ink`` (built by the
model-zoo tool into the session's temporary zoo) are loaded into the runner's pipelines with
``load_lora_weights`` and switched per job with ``set_adapters``/``disable_lora``. Every
comparison is of PNG bytes; the reference for "no LoRA" is a fresh runner that never loaded one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from gpu_worker_testkit import tiny_plan

from imagegen_gpu_worker.adapters import registry
from imagegen_gpu_worker.adapters.diffusers_runner import DiffusersRunner, load_state
from imagegen_gpu_worker.domain.plan import RunPlan, plan_run
from imagegen_gpu_worker.domain.run import LoraMismatch, ModelNotRegistered, Paused
from imagegen_gpu_worker.service_layer.worker import failure_reason
from imagegen_schemas import jobs as ev
from imagegen_schemas.common import GenerationParams, LoraSpec, Tier

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.unit

INK, GLOW, XL_INK = "tiny-sd15-lora-ink", "tiny-sd15-lora-glow", "tiny-sdxl-lora-ink"


def plan(model_id: str = "tiny-sd15", *loras: tuple[str, float], seed: int = 7) -> RunPlan:
    return tiny_plan(model_id, loras, seed)


def png(runner: DiffusersRunner, p: RunPlan) -> bytes:
    return runner.run(p, lambda *_: None, lambda: False).images_png[0]


@pytest.fixture(scope="module")
def base(zoo: Path) -> dict[str, bytes]:
    """Each model's image on a runner that never loaded a LoRA (the reference)."""
    torch.set_num_threads(2)
    fresh = DiffusersRunner(zoo)
    return {model_id: png(fresh, plan(model_id)) for model_id in ("tiny-sd15", "tiny-sdxl")}


@pytest.fixture()
def runner(zoo: Path) -> DiffusersRunner:
    return DiffusersRunner(zoo)


class LoadCounter:
    """Counts ``load_lora_weights`` calls on a loaded pipeline (wrapping the bound method)."""

    def __init__(self, pipe: Any) -> None:
        self.calls: list[str] = []
        original = pipe.load_lora_weights

        def counted(*args: Any, **kwargs: Any) -> Any:
            self.calls.append(str(args[0]))
            return original(*args, **kwargs)

        pipe.load_lora_weights = counted


def test_the_zoo_registers_its_loras_as_adapters_not_models(zoo: Path) -> None:
    for lora_id, family in ((INK, "sd15"), (GLOW, "sd15"), (XL_INK, "sdxl")):
        entry = registry.verify(zoo / lora_id)
        assert (entry.kind, entry.family) == ("lora", family)
        assert list(entry.files) == ["pytorch_lora_weights.safetensors"]
    assert registry.families(zoo) == ("flux", "sd15", "sd3", "sdxl")  # LoRAs are no family


def test_weight_zero_is_the_base_model_and_weight_one_is_not(
    runner: DiffusersRunner, base: dict[str, bytes]
) -> None:
    assert png(runner, plan("tiny-sd15", (INK, 0.0))) == base["tiny-sd15"]
    ink = png(runner, plan("tiny-sd15", (INK, 1.0)))
    assert ink != base["tiny-sd15"]
    assert png(runner, plan("tiny-sd15", (INK, 1.0))) == ink  # reproducible with a LoRA too
    assert png(runner, plan("tiny-sd15", (INK, 0.5))) not in (ink, base["tiny-sd15"])


def test_an_sdxl_lora_applies_to_the_sdxl_model(
    runner: DiffusersRunner, base: dict[str, bytes]
) -> None:
    assert png(runner, plan("tiny-sdxl", (XL_INK, 0.0))) == base["tiny-sdxl"]
    assert png(runner, plan("tiny-sdxl", (XL_INK, 1.0))) != base["tiny-sdxl"]
    assert png(runner, plan("tiny-sdxl")) == base["tiny-sdxl"]


def test_two_loras_compose_each_with_its_weight(
    runner: DiffusersRunner, base: dict[str, bytes], zoo: Path
) -> None:
    ink = png(runner, plan("tiny-sd15", (INK, 1.0)))
    glow = png(runner, plan("tiny-sd15", (GLOW, 1.0)))
    both = png(runner, plan("tiny-sd15", (INK, 1.0), (GLOW, 1.0)))
    assert len({ink, glow, both, base["tiny-sd15"]}) == 4
    # each weight counts: glow at 0 beside ink is ink alone
    assert png(runner, plan("tiny-sd15", (INK, 1.0), (GLOW, 0.0))) == ink
    # ... and the set is the job's own: ink alone after both is ink alone on a fresh runner
    assert png(runner, plan("tiny-sd15", (INK, 1.0))) == ink
    assert png(DiffusersRunner(zoo), plan("tiny-sd15", (INK, 1.0))) == ink


def test_adapters_do_not_leak_into_a_job_without_loras(
    runner: DiffusersRunner, base: dict[str, bytes]
) -> None:
    png(runner, plan("tiny-sd15", (INK, 1.0), (GLOW, -0.7)))
    assert png(runner, plan("tiny-sd15")) == base["tiny-sd15"]
    png(runner, plan("tiny-sd15", (GLOW, 1.5)))
    assert png(runner, plan("tiny-sd15", seed=7)) == base["tiny-sd15"]


def test_a_lora_is_loaded_once_per_model(runner: DiffusersRunner) -> None:
    counter = LoadCounter(runner.load("tiny-sd15").pipe)
    first = runner.run(plan("tiny-sd15", (INK, 1.0)), lambda *_: None, lambda: False)
    assert len(counter.calls) == 1 and first.timings_ms["load"] > 0
    second = runner.run(plan("tiny-sd15", (INK, 0.3)), lambda *_: None, lambda: False)
    runner.run(plan("tiny-sd15"), lambda *_: None, lambda: False)
    runner.run(plan("tiny-sd15", (INK, 1.0), (GLOW, 1.0)), lambda *_: None, lambda: False)
    assert counter.calls == [str(runner.models_dir / INK), str(runner.models_dir / GLOW)]
    assert second.timings_ms["load"] == 0.0  # model warm, LoRA cached
    held = runner.resident_loras()
    assert [(m, lora) for m, lora, _ in held] == [("tiny-sd15", INK), ("tiny-sd15", GLOW)]
    assert all(0 < size < 2**20 for _, _, size in held)
    # unloading the model drops its LoRAs; the next job loads them again
    assert runner.evict("tiny-sd15") == "evicted"
    assert runner.resident_loras() == []
    counter = LoadCounter(runner.load("tiny-sd15").pipe)
    runner.run(plan("tiny-sd15", (INK, 1.0)), lambda *_: None, lambda: False)
    assert len(counter.calls) == 1


def test_the_same_lora_twice_adds_its_weights(runner: DiffusersRunner) -> None:
    twice = png(runner, plan("tiny-sd15", (INK, 0.5), (INK, 0.25)))
    assert twice == png(runner, plan("tiny-sd15", (INK, 0.75)))


def test_a_lora_that_cannot_apply_fails_the_job_clearly(
    runner: DiffusersRunner, base: dict[str, bytes]
) -> None:
    with pytest.raises(ModelNotRegistered, match="tiny-sd15-lora-nope"):
        png(runner, plan("tiny-sd15", ("tiny-sd15-lora-nope", 1.0)))
    with pytest.raises(LoraMismatch, match="'sdxl' models; 'tiny-sd15' is 'sd15'") as other:
        png(runner, plan("tiny-sd15", (INK, 1.0), (XL_INK, 1.0)))
    with pytest.raises(LoraMismatch, match="registered as a 'base', not a LoRA"):
        png(runner, plan("tiny-sd15", ("tiny-sdxl", 1.0)))
    assert failure_reason(other.value) == ev.FailureReason.MODEL_UNAVAILABLE
    assert runner.in_use() == set()  # the model was released
    assert png(runner, plan("tiny-sd15")) == base["tiny-sd15"]


def test_the_loras_reach_the_plan_and_a_pause_state(runner: DiffusersRunner) -> None:
    params = GenerationParams(
        model="tiny-sd15",
        prompt="a red circle",
        width=64,
        height=64,
        steps=3,
        guidance_scale=4.0,
        scheduler="ddim",
        seed=7,
        loras=(LoraSpec(name=INK, weight=0.8), LoraSpec(name=GLOW)),
    )
    assignment = ev.JobScheduled(
        job_id="j", worker_id="w1", fencing_token=1, tier=Tier.RELAX, params=params
    )
    p = plan_run(assignment)
    assert p.loras == ((INK, 0.8), (GLOW, 1.0))
    # a paused run with LoRAs resumes only with the same LoRAs
    with pytest.raises(Paused) as paused:
        runner.run(p, lambda *_: None, lambda: False, pause=lambda: True)
    load_state(paused.value.state, p)
    with pytest.raises(ValueError, match="does not match"):
        load_state(paused.value.state, RunPlan(**{**p.__dict__, "loras": ((INK, 0.8),)}))


# EvictModel with a LoRA's id (ADR 0704): its adapter leaves every model holding it


def test_evicting_a_lora_deletes_its_adapter_and_the_next_job_loads_it_again(
    runner: DiffusersRunner, base: dict[str, bytes], zoo: Path
) -> None:
    from imagegen_gpu_worker.domain.residency import Unloaded

    changes: list[Any] = []
    runner.on_change = changes.append
    png(runner, plan("tiny-sd15", (INK, 1.0), (GLOW, 0.5)))
    counter = LoadCounter(runner.loaded["tiny-sd15"].pipe)
    assert runner.evict(INK) == "evicted"
    assert changes[-1] == Unloaded(INK, "command", kind="lora")
    assert [lora for _, lora, _ in runner.resident_loras()] == [GLOW]
    assert png(runner, plan("tiny-sd15")) == base["tiny-sd15"]  # nothing of ink is left
    fresh = DiffusersRunner(zoo)  # the references: a runner that never evicted anything
    assert png(runner, plan("tiny-sd15", (GLOW, 0.5))) == png(fresh, plan("tiny-sd15", (GLOW, 0.5)))
    both = plan("tiny-sd15", (INK, 1.0), (GLOW, 0.5))
    assert png(runner, both) == png(fresh, both)  # ink loaded again, under a new adapter name
    assert counter.calls == [str(runner.models_dir / INK)]
    adapters = {lora.adapter for lora in runner.loaded["tiny-sd15"].loras.values()}
    assert len(adapters) == 2  # never a name already in use
    assert runner.evict(INK) == "evicted" and runner.evict(GLOW) == "evicted"
    assert runner.resident_loras() == []
    assert png(runner, plan("tiny-sd15")) == base["tiny-sd15"]
    assert runner.evict(INK) == "not_resident"  # held by no model now


def test_a_lora_whose_model_is_running_is_evicted_after_the_run(runner: DiffusersRunner) -> None:
    import threading

    png(runner, plan("tiny-sd15", (INK, 1.0)))
    running, release = threading.Event(), threading.Event()

    def step(*_: Any) -> None:
        running.set()
        assert release.wait(30)

    job = threading.Thread(
        target=runner.run, args=(plan("tiny-sd15"), step, lambda: False), daemon=True
    )
    job.start()
    assert running.wait(30)
    try:
        assert runner.evict(INK) == "in_use"  # its model's pipeline is in use: not now
        assert [lora for _, lora, _ in runner.resident_loras()] == [INK]
    finally:
        release.set()
        job.join(30)
    assert runner.evict(INK) == "evicted"  # what the worker's deferred eviction does then

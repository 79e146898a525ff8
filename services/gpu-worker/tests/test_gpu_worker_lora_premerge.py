"""Pre-merged LoRAs of tier-1 models (issue 12 item 4; ADR 0704, "Pre-merging the top 5").

The session zoo's tiny models are tier 2, so a module-scoped copy of ``tiny-sd15`` registered as
tier 1 (its manifest's ``tier`` only: same files, same sha256) sits in a folder with the zoo's
sd15 LoRAs and four more LoRA ids (copies of ``ink``'s folder under other ids) for the top-5
test. "Fused" is checked by what runs: forward calls into the peft LoRA matrices (``lora_A`` /
``lora_B``) are counted, and are 0 for a fused run. The reference images come from runners with
pre-merging off (today's adapter path), and "no LoRA" from one that never loaded a LoRA.
"""

from __future__ import annotations

import io
import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from gpu_worker_testkit import tiny_plan, wired_heartbeat

from imagegen_gpu_worker.adapters.admission import BudgetAdmission
from imagegen_gpu_worker.adapters.diffusers_runner import DiffusersRunner
from imagegen_gpu_worker.adapters.memory import MemoryInfo
from imagegen_gpu_worker.config import GpuWorkerSettings
from imagegen_gpu_worker.domain.lora_usage import LoraUsage, PremergeSettings, fused_choice
from imagegen_gpu_worker.service_layer.heartbeat import heartbeat, loaded_models, premerged_loras
from imagegen_schemas.workers import WorkerHeartbeat

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.unit

SD15 = "tiny-sd15"
INK, GLOW = "tiny-sd15-lora-ink", "tiny-sd15-lora-glow"
COPIES = tuple(f"tiny-sd15-lora-ink-copy{i}" for i in range(4))
OFF = PremergeSettings(enabled=False)


@pytest.fixture(scope="module")
def tier1(zoo: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A models folder: tiny-sd15 as a tier-1 model, its two LoRAs and four copies of ink."""
    root = tmp_path_factory.mktemp("tier1")
    for name in (SD15, INK, GLOW):
        shutil.copytree(zoo / name, root / name)
    manifest = root / SD15 / "model.json"
    doc = json.loads(manifest.read_text())
    assert doc["tier"] == 2
    manifest.write_text(json.dumps({**doc, "tier": 1}))
    for copy in COPIES:
        shutil.copytree(zoo / INK, root / copy)
        lora = root / copy / "model.json"
        lora.write_text(json.dumps({**json.loads(lora.read_text()), "id": copy}))
    return root


def png(runner: DiffusersRunner, *loras: tuple[str, float]) -> bytes:
    return runner.run(tiny_plan(SD15, loras, 7), lambda *_: None, lambda: False).images_png[0]


@pytest.fixture(scope="module")
def ref(tier1: Path) -> dict[Any, bytes]:
    """Images on runners without pre-merging: no LoRA (never loaded one), and ink / glow on
    the adapter path at the weights the tests use."""
    torch.set_num_threads(2)
    refs: dict[Any, bytes] = {None: png(DiffusersRunner(tier1, premerge=OFF))}
    adapters = DiffusersRunner(tier1, premerge=OFF)
    for lora, weight in ((INK, 1.0), (INK, 0.5), (GLOW, 1.0)):
        refs[(lora, weight)] = png(adapters, (lora, weight))
    return refs


def lora_calls(runner: DiffusersRunner, job: Callable[[], Any]) -> int:
    """Forward calls into the LoRA matrices of the (loaded) model's UNet during ``job``."""
    unet = runner.loaded[SD15].pipe.unet
    calls = [0]

    def count(*_: Any) -> None:
        calls[0] += 1

    hooks = [
        module.register_forward_hook(count)
        for name, module in unet.named_modules()
        if ".lora_A." in name or ".lora_B." in name
    ]
    assert hooks, "no LoRA layer loaded"
    try:
        job()
    finally:
        for hook in hooks:
            hook.remove()
    return calls[0]


def pixels(data: bytes) -> Any:
    import numpy as np
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(data))).astype("float64")


def test_a_fused_run_applies_the_lora_without_lora_compute(
    tier1: Path, ref: dict[Any, bytes]
) -> None:
    runner = DiffusersRunner(tier1)
    fused = png(runner, (INK, 1.0))  # loads ink, computes its deltas, fuses
    model = runner.loaded[SD15]
    assert model.premerged is not None and model.premerged.fused == (INK, 1.0)
    assert [lora for _, lora, _ in runner.premerged()] == [INK]
    # consecutive jobs with the same (LoRA, weight) reuse the fused state: no LoRA matrix runs
    again: list[bytes] = []
    assert lora_calls(runner, lambda: again.append(png(runner, (INK, 1.0)))) == 0
    assert again == [fused]  # deterministic
    assert fused != ref[None]  # the LoRA is applied
    # close to the adapter path's image (measured: identical bytes at 64 px, 3 steps)
    for weight in (1.0, 0.5):
        image = fused if weight == 1.0 else png(runner, (INK, weight))
        assert model.premerged.fused == (INK, weight)
        diff = abs(pixels(image) - pixels(ref[(INK, weight)]))
        assert diff.mean() <= 0.5 and diff.max() <= 8
    # the adapter path does run the LoRA matrices (what the count above would have seen)
    assert lora_calls(runner, lambda: png(runner, (INK, 1.0), (GLOW, 1.0))) > 0


def test_after_a_fused_run_the_base_weights_are_restored_exactly(
    tier1: Path, ref: dict[Any, bytes]
) -> None:
    runner = DiffusersRunner(tier1)
    png(runner, (INK, 1.0))
    state = runner.loaded[SD15].premerged
    assert state is not None
    path = next(iter(state.pristine))
    assert not torch.equal(state.targets[path], state.pristine[path])  # fused now
    assert png(runner) == ref[None]  # a job without LoRAs: the fresh runner's bytes
    assert state.fused is None
    assert all(torch.equal(state.targets[p], w) for p, w in state.pristine.items())
    png(runner, (INK, 0.5))
    assert png(runner, (INK, 0.0)) == ref[None]  # weight 0 on a pre-merged LoRA: no LoRA
    assert state.fused is None
    assert png(runner, (INK, 0.5), (INK, -0.5)) == ref[None]  # named twice, weights add to 0


def test_unloading_the_model_drops_its_deltas_and_they_count_in_the_budget(
    tier1: Path, ref: dict[Any, bytes]
) -> None:
    runner = DiffusersRunner(tier1, ram_cache_bytes=2**30)  # kept in the RAM tier on evict
    fused = png(runner, (INK, 1.0))
    model = runner.loaded[SD15]
    extra = runner.premerged_bytes(SD15)
    # ink targets the UNet's attention projections: its deltas, and as much again in copies
    assert extra == 2 * runner.premerged()[0][2] > 0
    assert dict(runner.held())[SD15] == model.bytes + extra
    assert BudgetAdmission(runner).need(tiny_plan(SD15, (), 7)).weights_mb * 2**20 == (
        pytest.approx(model.bytes + extra)
    )
    assert runner.evict(SD15) == "evicted"
    assert runner.premerged() == [] and model.premerged is None
    assert png(runner) == ref[None]  # back from the RAM tier with its loaded weights
    assert png(runner, (INK, 1.0)) == fused  # and fused again
    assert runner.premerged_bytes(SD15) == extra


def test_only_the_top_loras_of_a_tier1_model_are_premerged(
    tier1: Path, ref: dict[Any, bytes]
) -> None:
    runner = DiffusersRunner(tier1)  # the default: top 5
    five = (INK, GLOW, *COPIES[:3])
    for _ in range(3):  # each of five LoRAs used 3 times (several LoRAs: the adapter path)
        png(runner, *((lora, 0.2) for lora in five))
    assert runner.premerged() == []
    sixth = COPIES[3]  # used twice below: 6th by use
    image: list[bytes] = []
    png(runner, (sixth, 1.0))  # loads it (hooks need its layers)
    assert lora_calls(runner, lambda: image.append(png(runner, (sixth, 1.0)))) > 0
    assert runner.premerged() == [] and runner.loaded[SD15].premerged is None
    assert image == [ref[(INK, 1.0)]]  # a copy of ink on the adapter path: ink's bytes
    # one of the top five alone is fused, from its first job (deltas need no forward pass)
    assert lora_calls(runner, lambda: image.append(png(runner, (GLOW, 1.0)))) == 0
    assert [lora for _, lora, _ in runner.premerged()] == [GLOW]
    assert image[-1] != ref[None]


def test_a_lora_that_leaves_the_top_is_dropped_and_restored(
    tier1: Path, ref: dict[Any, bytes]
) -> None:
    runner = DiffusersRunner(tier1, premerge=PremergeSettings(top=1))
    png(runner, (INK, 1.0))
    assert [lora for _, lora, _ in runner.premerged()] == [INK]
    assert png(runner, (GLOW, 1.0)) == ref[(GLOW, 1.0)]  # tie, most recent wins: glow fused
    assert [lora for _, lora, _ in runner.premerged()] == [GLOW]
    assert png(runner) == ref[None]


def test_a_tier2_model_never_premerges(zoo: Path, ref: dict[Any, bytes]) -> None:
    runner = DiffusersRunner(zoo)  # the session zoo's tiny-sd15 is tier 2
    png(runner, (INK, 1.0))
    assert runner.loaded[SD15].tier == 2
    assert lora_calls(runner, lambda: png(runner, (INK, 1.0))) > 0
    assert runner.premerged() == []


def test_premerging_off_is_todays_adapter_path(
    tier1: Path, ref: dict[Any, bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("", "_TOP", "_WINDOW_S", "_WINDOW_JOBS"):
        monkeypatch.delenv(f"IMAGEGEN_GPU_WORKER_LORA_PREMERGE{name}", raising=False)
    assert GpuWorkerSettings(kafka_bootstrap="k:9092").premerge_settings() == PremergeSettings()
    monkeypatch.setenv("IMAGEGEN_GPU_WORKER_LORA_PREMERGE", "false")
    monkeypatch.setenv("IMAGEGEN_GPU_WORKER_LORA_PREMERGE_TOP", "3")
    monkeypatch.setenv("IMAGEGEN_GPU_WORKER_LORA_PREMERGE_WINDOW_S", "600")
    monkeypatch.setenv("IMAGEGEN_GPU_WORKER_LORA_PREMERGE_WINDOW_JOBS", "50")
    settings = GpuWorkerSettings(kafka_bootstrap="k:9092")
    assert settings.premerge_settings() == PremergeSettings(False, 3, 600.0, 50)
    runner = DiffusersRunner(tier1, premerge=settings.premerge_settings())
    assert png(runner, (INK, 1.0)) == ref[(INK, 1.0)]
    assert lora_calls(runner, lambda: png(runner, (INK, 1.0))) > 0
    assert runner.premerged() == [] and runner.loaded[SD15].premerged is None
    assert png(runner) == ref[None]


def test_the_usage_window_and_the_fused_choice() -> None:
    usage = LoraUsage(PremergeSettings(top=2, window_s=100.0, window_jobs=3))
    usage.record("m", (("a", 1.0), ("b", 1.0)), now=0.0)
    usage.record("m", (("a", 1.0),), now=10.0)
    usage.record("m", (("c", 1.0),), now=20.0)
    assert usage.top("m", now=20.0) == ["a", "c"]  # a twice; c and b once, c more recent
    usage.record("m", (("c", 1.0),), now=30.0)  # the first job leaves the last 3
    assert usage.counts("m", now=30.0) == {"a": 1, "c": 2}
    assert usage.top("m", now=115.0) == ["c"]  # a's use at 10 is out of the 100 s window
    assert usage.top("other", now=0.0) == []
    assert fused_choice((("a", 0.7),)) == ("a", 0.7)
    assert fused_choice((("a", 0.5), ("a", 0.25))) == ("a", 0.75)
    assert fused_choice((("a", 0.0),)) is None
    assert fused_choice((("a", 1.0), ("b", 1.0))) is None
    assert fused_choice(()) is None


def beat(runner: DiffusersRunner) -> WorkerHeartbeat:
    """The heartbeat ``bootstrap`` builds from ``runner``, as a consumer reads it (JSON)."""
    hb = heartbeat(
        "w1",
        MemoryInfo(1, 1, "cpu"),
        2.0,
        None,
        loaded_models(runner.resident(), runner.resident_loras(), runner.resident_controlnets()),
        premerged=premerged_loras(runner.premerged()),
    )
    return WorkerHeartbeat.model_validate_json(hb.model_dump_json())


def test_heartbeats_report_which_loras_are_premerged_into_which_model(tier1: Path) -> None:
    runner = DiffusersRunner(tier1, premerge=PremergeSettings(top=1))
    png(runner, (INK, 1.0), (GLOW, 1.0))  # both loaded as adapters; two LoRAs: none fused
    hb = beat(runner)
    assert [(m.model_id, m.kind) for m in hb.loaded] == [
        (SD15, "base"),
        (GLOW, "lora"),
        (INK, "lora"),
    ]
    assert hb.premerged_loras == ()
    png(runner, (INK, 1.0))  # ink: the most used (2 jobs), fused
    hb = beat(runner)
    [merged] = hb.premerged_loras
    assert (merged.model_id, merged.lora_id) == (SD15, INK)
    # its deltas; the pristine copies (as much again for one LoRA) are the model's
    assert merged.bytes > 0 and 2 * merged.bytes == runner.premerged_bytes(SD15)
    assert {m.model_id for m in hb.loaded if m.kind == "lora"} == {INK, GLOW}  # still adapters
    png(runner, (GLOW, 1.0))  # a tie, the most recent wins: glow fused, ink's deltas dropped
    assert [(p.model_id, p.lora_id) for p in beat(runner).premerged_loras] == [(SD15, GLOW)]
    assert runner.evict(SD15) == "evicted"  # its pre-merged LoRAs go with it
    assert beat(runner).premerged_loras == () and beat(runner).loaded == ()


def test_the_wired_heartbeat_carries_the_runners_premerged_loras(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from imagegen_gpu_worker.adapters.diffusers_runner import DiffusersRunner as Runner

    # What the runner answers (its own listing is tested above), in order of computation.
    held = [("m2", "a", 3), ("m1", "b", 5), ("m1", "a", 4)]
    monkeypatch.setattr(Runner, "premerged", lambda self: list(held))
    hb = wired_heartbeat(tmp_path)
    assert [(p.model_id, p.lora_id, p.bytes) for p in hb.premerged_loras] == [
        ("m1", "a", 4),
        ("m1", "b", 5),
        ("m2", "a", 3),
    ]


def test_evicting_a_premerged_lora_restores_the_base_weights_and_drops_its_deltas(
    tier1: Path, ref: dict[Any, bytes]
) -> None:
    runner = DiffusersRunner(tier1)
    png(runner, (INK, 1.0))  # fused: the base weights hold ink
    assert [lora for _, lora, _ in runner.premerged()] == [INK]
    assert runner.evict(INK) == "evicted"
    assert runner.premerged() == [] and runner.premerged_bytes(SD15) == 0
    assert runner.resident_loras() == []
    assert png(runner) == ref[None]  # the pristine weights are back
    assert png(runner, (INK, 1.0)) == png(DiffusersRunner(tier1), (INK, 1.0))

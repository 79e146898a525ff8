"""The RAM tier (issue 12, ADR 0705): models evicted from the device are kept in host RAM.

With the zoo's tiny models on CPU and a device budget that holds one of them at a time
(``ONE_MODEL``: each tiny model's float32 weights are 0.6-0.85 MB, two never fit), an evicted
model goes to the runner's RAM tier; loading it again moves it back (reported
``Loaded(source="ram")``) without reading the disk: the registry's ``verify`` and
``open_pipeline`` are not called. Images after a RAM reload are compared byte for byte with a
fresh runner's. The CUDA path (``pipe.to("cpu")`` on eviction, ``pipe.to(device)`` on reload)
is checked with a stand-in pipeline that records its moves.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from gpu_worker_testkit import tiny_plan

from imagegen_gpu_worker.adapters import diffusers_runner as dr
from imagegen_gpu_worker.adapters import registry
from imagegen_gpu_worker.adapters.diffusers_runner import DiffusersRunner
from imagegen_gpu_worker.config import GpuWorkerSettings
from imagegen_gpu_worker.domain.plan import RunPlan
from imagegen_gpu_worker.domain.residency import (
    COMMAND,
    DISK,
    MAKE_ROOM,
    Loaded,
    ResidencyChange,
    Unloaded,
)

pytestmark = pytest.mark.unit

ONE_MODEL = 1_000_000  # bytes: any one tiny model fits the device budget, no two do
RAM_TWO = 1_600_000  # a RAM tier for two of the smaller tiny models, not three
RAM_ALL = 64 * 2**20
SD15, SDXL, SD3, FLUX = "tiny-sd15", "tiny-sdxl", "tiny-sd3", "tiny-flux"
INK = "tiny-sd15-lora-ink"


def plan(model_id: str = SD15, *loras: tuple[str, float]) -> RunPlan:
    return tiny_plan(model_id, loras, seed=11)


def png(runner: DiffusersRunner, p: RunPlan) -> bytes:
    return runner.run(p, lambda *_: None, lambda: False).images_png[0]


class DiskReads:
    """Counts the registry's disk reads (``Integrity.verify``: the files' check, ADR 0707;
    ``open_pipeline``)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.verified: list[str] = []
        self.opened: list[str] = []
        verify, open_pipeline = registry.Integrity.verify, registry.open_pipeline

        def counted_verify(integrity: registry.Integrity, folder: Path) -> Any:
            self.verified.append(folder.name)
            return verify(integrity, folder)

        def counted_open(folder: Path, *args: Any) -> Any:
            self.opened.append(folder.name)
            return open_pipeline(folder, *args)

        monkeypatch.setattr(registry.Integrity, "verify", counted_verify)
        monkeypatch.setattr(registry, "open_pipeline", counted_open)

    def clear(self) -> None:
        self.verified.clear()
        self.opened.clear()


@pytest.fixture(scope="module")
def torch_threads() -> None:
    torch = pytest.importorskip("torch")
    torch.set_num_threads(2)


def make(zoo: Path, ram: int, facts: list[ResidencyChange] | None = None) -> DiffusersRunner:
    runner = DiffusersRunner(zoo, "cpu", memory_budget_bytes=ONE_MODEL, ram_cache_bytes=ram)
    if facts is not None:
        runner.on_change = facts.append
    return runner


def test_an_evicted_model_goes_to_ram_and_comes_back_without_reading_the_disk(
    zoo: Path, torch_threads: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    facts: list[ResidencyChange] = []
    runner = make(zoo, RAM_ALL, facts)
    first = runner.load(SD15)
    runner.load(SDXL)
    # Evicted from the device (the heartbeat's list), kept in RAM.
    assert [m for m, _ in runner.resident()] == [SDXL]
    assert runner.in_ram() == [(SD15, first.bytes)]
    assert facts[1] == Unloaded(SD15, MAKE_ROOM, SDXL)

    reads = DiskReads(monkeypatch)
    facts.clear()
    again = runner.load(SD15)
    assert again is first and again.pipe is first.pipe  # on CPU the same built pipeline
    assert reads.verified == [] and reads.opened == []  # no sha256 check, no construction
    assert facts == [
        Unloaded(SDXL, MAKE_ROOM, SD15),
        Loaded(SD15, "base", first.bytes, again.load_ms, "ram"),
    ]
    assert [m for m, _ in runner.resident()] == [SD15]
    assert [m for m, _ in runner.in_ram()] == [SDXL]


def test_an_evict_command_keeps_the_model_in_ram_and_a_load_command_brings_it_back(
    zoo: Path, torch_threads: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    facts: list[ResidencyChange] = []
    runner = make(zoo, RAM_ALL, facts)
    runner.load(SD15)
    assert runner.evict(SD15) == "evicted"
    assert runner.resident() == [] and [m for m, _ in runner.in_ram()] == [SD15]
    assert facts[-1] == Unloaded(SD15, COMMAND)
    assert runner.evict(SD15) == "not_resident"  # not on the device; it stays in RAM
    assert [m for m, _ in runner.in_ram()] == [SD15]

    reads = DiskReads(monkeypatch)
    runner.preload(SD15)
    last = facts[-1]
    assert isinstance(last, Loaded) and (last.model_id, last.source) == (SD15, "ram")
    assert reads.verified == [] and runner.in_ram() == []


def test_a_reload_from_ram_gives_the_same_bytes_as_a_fresh_load(
    zoo: Path, torch_threads: None
) -> None:
    fresh = {m: png(DiffusersRunner(zoo), plan(m)) for m in (SD15, SDXL)}
    runner = make(zoo, RAM_ALL)
    assert png(runner, plan(SD15)) == fresh[SD15]
    assert png(runner, plan(SDXL)) == fresh[SDXL]  # SD15 to RAM
    assert [m for m, _ in runner.in_ram()] == [SD15]
    assert png(runner, plan(SD15)) == fresh[SD15]  # back from RAM, SDXL to RAM
    assert png(runner, plan(SDXL)) == fresh[SDXL]  # back from RAM


def test_a_lora_stays_in_the_pipeline_in_ram_and_gives_the_same_bytes(
    zoo: Path, torch_threads: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    base = png(DiffusersRunner(zoo), plan(SD15))
    inked = png(DiffusersRunner(zoo), plan(SD15, (INK, 1.0)))
    runner = make(zoo, RAM_ALL)
    assert png(runner, plan(SD15, (INK, 1.0))) == inked
    png(runner, plan(SDXL))  # SD15, with its LoRA, to RAM
    assert runner.resident_loras() == []  # the heartbeat lists device-resident ones only

    reads = DiskReads(monkeypatch)
    assert png(runner, plan(SD15, (INK, 1.0))) == inked
    assert reads.verified == [] and reads.opened == []  # neither SD15 nor its LoRA read
    assert png(runner, plan(SD15)) == base  # the LoRA switched off, as before the eviction


def test_the_ram_tier_drops_its_least_recently_used_model_first(
    zoo: Path, torch_threads: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    runner = make(zoo, RAM_TWO)
    for model_id in (SD15, FLUX, SDXL):
        runner.load(model_id)
    assert [m for m, _ in runner.in_ram()] == [SD15, FLUX]
    runner.load(SD15)  # from RAM: now the most recently used; SDXL goes to RAM
    assert [m for m, _ in runner.in_ram()] == [FLUX, SDXL]
    runner.load(SD3)  # SD15 to RAM: the tier is over its budget, FLUX (least recent) leaves
    assert [m for m, _ in runner.in_ram()] == [SDXL, SD15]
    assert sum(b for _, b in runner.in_ram()) <= RAM_TWO

    reads = DiskReads(monkeypatch)
    runner.load(FLUX)  # dropped from RAM: read from disk again
    assert reads.verified == [FLUX] and reads.opened == [FLUX]


def test_a_zero_ram_budget_frees_evicted_models_as_before(
    zoo: Path, torch_threads: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    facts: list[ResidencyChange] = []
    runner = make(zoo, 0, facts)
    runner.load(SD15)
    runner.load(SDXL)
    assert runner.in_ram() == [] and [m for m, _ in runner.resident()] == [SDXL]
    reads = DiskReads(monkeypatch)
    runner.load(SD15)
    assert reads.verified == [SD15] and reads.opened == [SD15]
    last = facts[-1]
    assert isinstance(last, Loaded) and last.source == DISK
    assert DiffusersRunner(zoo).ram_cache_bytes == 0  # the runner's own default: no tier


def test_the_setting_default_and_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("IMAGEGEN_GPU_WORKER_RAM_CACHE_MB", raising=False)
    assert GpuWorkerSettings(kafka_bootstrap="localhost:9092").ram_cache_mb == 2048
    monkeypatch.setenv("IMAGEGEN_GPU_WORKER_RAM_CACHE_MB", "0")
    assert GpuWorkerSettings(kafka_bootstrap="localhost:9092").ram_cache_mb == 0


# --- the CUDA path, with a stand-in pipeline (no GPU needed) ---------------------------------


class _Param:
    def __init__(self, nbytes: int) -> None:
        self.nbytes = nbytes

    def numel(self) -> int:
        return self.nbytes

    def element_size(self) -> int:
        return 1


class _Module:
    def __init__(self, nbytes: int) -> None:
        self.nbytes = nbytes

    def parameters(self) -> list[_Param]:
        return [_Param(self.nbytes)]


class _Pipe:
    def __init__(self, model_id: str, moves: list[tuple[str, str]]) -> None:
        self.model_id, self.moves = model_id, moves
        self.components = {"unet": _Module(40)}
        self.scheduler = SimpleNamespace(config={})

    def to(self, device: str) -> _Pipe:
        self.moves.append((self.model_id, device))
        return self


def test_on_cuda_an_evicted_pipeline_moves_to_the_cpu_and_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for model_id in ("a", "b"):
        (tmp_path / model_id / "unet").mkdir(parents=True)
        (tmp_path / model_id / "unet" / "w.safetensors").write_bytes(model_id.encode())
        registry.write_manifest(tmp_path / model_id, id=model_id)
    moves: list[tuple[str, str]] = []
    fake_torch = SimpleNamespace(
        nn=SimpleNamespace(Module=_Module), cuda=SimpleNamespace(empty_cache=lambda: None)
    )
    monkeypatch.setattr(dr, "torch_module", lambda: fake_torch)
    monkeypatch.setattr(dr, "estimate_bytes", lambda folder, upcast: 40)
    monkeypatch.setattr(registry, "open_pipeline", lambda f, e, d, *dtype: _Pipe(f.name, moves))
    runner = DiffusersRunner(tmp_path, "cuda", memory_budget_bytes=60, ram_cache_bytes=100)
    facts: list[ResidencyChange] = []
    runner.on_change = facts.append
    runner.load("a")
    runner.load("b")
    assert moves == [("a", "cpu")]
    reads = DiskReads(monkeypatch)
    runner.load("a")
    assert moves == [("a", "cpu"), ("b", "cpu"), ("a", "cuda")]
    assert reads.verified == [] and reads.opened == []
    last = facts[-1]
    assert isinstance(last, Loaded) and (last.model_id, last.source) == ("a", "ram")

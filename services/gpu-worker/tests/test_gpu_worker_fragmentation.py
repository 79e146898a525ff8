"""Fragmentation in heartbeats and the DefragmentMemory command (issue 12 item 6, ADR 0709).

- the ratio's definition (``domain/fragmentation.py``) and its reading on CUDA
  (``adapters/cuda_memory.read``, with a stand-in ``torch.cuda``);
- heartbeats carry ``largest_free_block_bytes`` and ``fragmentation_ratio`` (None on CPU), also
  under a model budget;
- ``DefragmentMemory``: on CUDA (stand-in pipelines and allocator) idle models go out and back,
  and the outcome carries the memory before and after; on CPU it is reported as a no-op in the
  handler's log, and nothing is published.
"""

from __future__ import annotations

import logging
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from imagegen_gpu_worker.adapters import cuda_memory, registry
from imagegen_gpu_worker.adapters import diffusers_runner as dr
from imagegen_gpu_worker.adapters.memory import MemoryInfo, within_budget
from imagegen_gpu_worker.domain.fragmentation import (
    DefragOutcome,
    MemoryState,
    fragmentation_ratio,
)
from imagegen_gpu_worker.service_layer.commands import PoolCommands
from imagegen_gpu_worker.service_layer.heartbeat import heartbeat
from imagegen_gpu_worker.service_layer.residency import ResidencyReporter
from imagegen_runtime.kafka import RecordMeta
from imagegen_runtime.publishing import InMemoryPublisher
from imagegen_schemas import Envelope
from imagegen_schemas.workers import DefragmentMemory, WorkerHeartbeat

pytestmark = pytest.mark.unit
MIB = 2**20


def test_the_ratio_is_one_minus_the_largest_block_over_all_free_memory() -> None:
    assert fragmentation_ratio(100, 100) == 0.0
    assert fragmentation_ratio(25, 100) == 0.75
    assert fragmentation_ratio(0, 0) == 0.0  # nothing free: nothing fragmented
    assert fragmentation_ratio(150, 100) == 0.0  # clamped
    with pytest.raises(ValueError, match="largest_free_block=-1"):
        fragmentation_ratio(-1, 10)


def test_reserved_but_unallocated_memory_counts_as_free() -> None:
    state = MemoryState(
        total=1000, driver_free=100, reserved=600, allocated=300, largest_free_block=100
    )
    assert (state.reserved_free, state.free_total) == (300, 400)
    assert state.fragmentation_ratio == 0.75


class FakeAllocator:
    """``torch.cuda`` as far as cuda_memory and defragment use it: a driver with ``free``
    bytes, an allocator holding ``reserved`` (``allocated`` of it in tensors) whose free
    blocks are ``blocks``; ``empty_cache`` gives the free blocks back to the driver."""

    def __init__(self, moves: list[tuple[str, str]] | None = None) -> None:
        self.total, self.free, self.reserved, self.allocated = 1000, 100, 600, 300
        self.blocks = [120, 80, 100]  # 300 free bytes inside reserved segments
        self.moves = moves if moves is not None else []

    def mem_get_info(self, device: Any = None) -> tuple[int, int]:
        return self.free, self.total

    def memory_stats(self, device: Any = None) -> dict[str, int]:
        return {
            "reserved_bytes.all.current": self.reserved,
            "allocated_bytes.all.current": self.allocated,
        }

    def memory_snapshot(self) -> list[dict[str, Any]]:
        blocks = [{"size": self.allocated, "state": "active_allocated"}]
        blocks += [{"size": b, "state": "inactive"} for b in self.blocks]
        return [{"blocks": blocks}]

    def empty_cache(self) -> None:
        self.moves.append(("*", "empty_cache"))
        self.free += self.reserved - self.allocated
        self.reserved, self.blocks = self.allocated, []


def fake_torch(cuda: FakeAllocator) -> Any:
    return SimpleNamespace(cuda=cuda, device=lambda name: name, nn=SimpleNamespace(Module=_Module))


def test_a_cuda_reading_takes_the_larger_of_the_driver_and_the_largest_cached_block() -> None:
    cuda = FakeAllocator()
    state = cuda_memory.read(fake_torch(cuda))
    assert state == MemoryState(1000, 100, 600, 300, 120)
    assert state.fragmentation_ratio == pytest.approx(1 - 120 / 400)
    cuda.empty_cache()
    after = cuda_memory.read(fake_torch(cuda))
    assert (after.driver_free, after.reserved_free, after.largest_free_block) == (400, 0, 400)
    assert after.fragmentation_ratio == 0.0


def test_heartbeats_carry_the_ratio_on_cuda_and_none_on_cpu() -> None:
    mem = MemoryInfo(80 * MIB, 30 * MIB, "NVIDIA H100", 20 * MIB, 0.25)
    beat = heartbeat("w1", mem, 2.0)
    assert (beat.largest_free_block_bytes, beat.fragmentation_ratio) == (20 * MIB, 0.25)
    budgeted = within_budget(mem, 40 * MIB, 30 * MIB)
    assert (budgeted.total_bytes, budgeted.fragmentation_ratio) == (40 * MIB, 0.25)
    wire = WorkerHeartbeat.model_validate_json(heartbeat("w1", budgeted, 2.0).model_dump_json())
    assert wire.fragmentation_ratio == 0.25
    cpu = heartbeat("w1", MemoryInfo(80 * MIB, 30 * MIB, "cpu"), 2.0)
    assert cpu.largest_free_block_bytes is None and cpu.fragmentation_ratio is None


def test_a_ratio_outside_zero_to_one_is_refused_by_the_contract() -> None:
    with pytest.raises(ValueError, match="fragmentation_ratio"):
        heartbeat("w1", MemoryInfo(10, 5, "H100", 5, 1.5), 2.0)


# -- DefragmentMemory ---------------------------------------------------------------------------


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


def models(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cuda: FakeAllocator) -> Path:
    for model_id in ("a", "b"):
        (tmp_path / model_id / "unet").mkdir(parents=True)
        (tmp_path / model_id / "unet" / "w.safetensors").write_bytes(model_id.encode())
        registry.write_manifest(tmp_path / model_id, id=model_id)
    monkeypatch.setattr(dr, "torch_module", lambda: fake_torch(cuda))
    monkeypatch.setattr(dr, "estimate_bytes", lambda folder, upcast: 40)
    monkeypatch.setattr(
        registry, "open_pipeline", lambda f, e, d, *dtype: _Pipe(f.name, cuda.moves)
    )
    return tmp_path


def test_defragment_on_cuda_moves_idle_models_and_reports_memory_before_and_after(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cuda = FakeAllocator()
    runner = dr.DiffusersRunner(
        models(tmp_path, monkeypatch, cuda), "cuda", memory_budget_bytes=1000
    )
    runner.load("a")
    runner.load("b")
    runner._in_use["b"] += 1  # a run is using b: left where it is
    cuda.moves.clear()
    outcome = runner.defragment()
    assert cuda.moves == [("a", "cpu"), ("*", "empty_cache"), ("a", "cuda")]
    assert (outcome.device, outcome.compacted) == ("cuda", True)
    assert (outcome.moved, outcome.skipped_in_use, outcome.unloaded) == (("a",), ("b",), ())
    assert outcome.before is not None and outcome.after is not None
    assert outcome.before.fragmentation_ratio == pytest.approx(0.7)
    assert outcome.after.fragmentation_ratio == 0.0
    assert outcome.after.reserved_free == 0
    summary = outcome.summary()
    assert summary["before_fragmentation_ratio"] == 0.7
    assert summary["after_largest_free_block_bytes"] == 400


async def test_defragment_on_cpu_is_reported_as_a_no_op_and_publishes_nothing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    runner = dr.DiffusersRunner(tmp_path, "cpu")
    outcome = runner.defragment()
    assert isinstance(outcome, DefragOutcome)
    assert (outcome.device, outcome.compacted, outcome.moved, outcome.before) == (
        "cpu",
        False,
        (),
        None,
    )
    publisher = InMemoryPublisher()
    commands = PoolCommands("w1", runner, ResidencyReporter("w1", publisher))
    payload = DefragmentMemory(worker_id="w1", reason="test")
    env = Envelope.wrap(payload, correlation_id="w1", producer="pool-manager")
    meta = RecordMeta("imagegen.pool.commands", 0, 1, "w1", {})
    with caplog.at_level(logging.INFO, logger="imagegen_gpu_worker.service_layer.commands"):
        await commands.handle(env, payload, meta)
    lines = [r for r in caplog.records if "DefragmentMemory" in r.getMessage()]
    assert [r.getMessage() for r in lines] == ["DefragmentMemory: nothing to compact (no-op)"]
    assert lines[0].__dict__["device"] == "cpu" and lines[0].__dict__["compacted"] is False
    assert publisher.records == []

"""A worker with a model budget reports the budget as its memory: a local fleet's workers then
read as GPU classes of those sizes."""

from __future__ import annotations

import pytest

from imagegen_gpu_worker.adapters.memory import MemoryInfo, within_budget

pytestmark = pytest.mark.unit
MIB = 1 << 20
HOST = MemoryInfo(24_000 * MIB, 20_000 * MIB, "cpu")


def test_without_a_budget_the_device_as_it_is() -> None:
    assert within_budget(HOST, None, 100 * MIB) == HOST


def test_a_budget_is_the_total_and_what_models_leave_of_it_is_free() -> None:
    mem = within_budget(HOST, 512 * MIB, 30 * MIB)
    assert (mem.total_bytes, mem.free_bytes, mem.device_name) == (512 * MIB, 482 * MIB, "cpu")


def test_free_is_never_more_than_the_device_has_nor_below_zero() -> None:
    tight = MemoryInfo(24_000 * MIB, 100 * MIB, "cpu")
    assert within_budget(tight, 512 * MIB, 30 * MIB).free_bytes == 100 * MIB
    assert within_budget(HOST, 512 * MIB, 600 * MIB).free_bytes == 0


def test_a_heartbeat_lists_models_then_each_lora_once() -> None:
    from imagegen_gpu_worker.service_layer.heartbeat import loaded_models

    loaded = loaded_models(
        [("tiny-sd15", 700), ("tiny-sdxl", 900)],
        [("tiny-sd15", "ink", 30), ("tiny-sdxl", "ink", 40), ("tiny-sd15", "glow", 30)],
    )
    assert [(m.model_id, m.kind, m.bytes) for m in loaded] == [
        ("tiny-sd15", "base", 700),
        ("tiny-sdxl", "base", 900),
        ("glow", "lora", 30),
        ("ink", "lora", 40),
    ]

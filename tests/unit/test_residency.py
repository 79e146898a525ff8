"""The shared eviction rule (``imagegen_runtime.residency.evictions``): LRU, only what must go."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from imagegen_runtime.residency import evictions

pytestmark = pytest.mark.unit


def test_nothing_goes_while_the_job_fits() -> None:
    assert evictions([("sdxl", 13.5), ("lora/a", 0.3)], {"sdxl"}, 15.6, 20.0) == []


def test_small_items_met_first_stay_when_a_larger_one_must_go_anyway() -> None:
    # A10G, 20 GB: SDXL + two LoRAs (least recent) + a canny ControlNet; the job needs a depth
    # ControlNet. Plain LRU would unload both LoRAs and then the ControlNet; only the ControlNet
    # has to go.
    resident = [("lora/a", 0.3), ("lora/b", 0.3), ("cn/canny", 2.5), ("sdxl", 13.5)]
    need = 13.5 + 2.5 + 2.1  # sdxl + cn/depth + activations
    assert evictions(resident, {"sdxl", "cn/depth"}, need, 20.0) == ["cn/canny"]


def test_least_recently_used_goes_first_among_equals() -> None:
    resident = [("old", 1.0), ("mid", 1.0), ("new", 1.0)]
    assert evictions(resident, set(), 18.0, 20.0) == ["old"]
    assert evictions(resident, set(), 19.0, 20.0) == ["old", "mid"]


def test_what_the_job_uses_is_never_unloaded_and_a_job_too_big_is_refused() -> None:
    resident = [("sdxl", 13.5), ("lora/a", 0.3)]
    assert evictions(resident, {"sdxl"}, 13.5 + 6.5, 20.0) == ["lora/a"]
    assert evictions(resident, {"sdxl"}, 20.5, 20.0) is None


items = st.lists(
    st.tuples(st.sampled_from([f"w{i}" for i in range(12)]), st.floats(0.1, 16.0)),
    max_size=12,
    unique_by=lambda t: t[0],
)


@given(
    items,
    st.sets(st.sampled_from([f"w{i}" for i in range(12)])),
    st.floats(0.0, 24.0),
    st.floats(1.0, 24.0),
)
def test_fits_after_and_no_victim_could_stay(
    resident: list[tuple[str, float]], keep: set[str], extra: float, budget: float
) -> None:
    sizes = dict(resident)
    need = sum(sizes[k] for k in keep if k in sizes) + extra
    out = evictions(resident, keep, need, budget)
    if need > budget:
        assert out is None
        return
    assert out is not None
    assert not set(out) & keep
    assert len(out) == len(set(out)) and set(out) <= set(sizes)
    stays = sum(s for k, s in resident if k not in keep and k not in out)
    assert need + stays <= budget + 1e-9
    for victim in out:  # minimal: putting any one victim back breaks the budget
        assert need + stays + sizes[victim] > budget - 1e-9
    order = [k for k, _ in resident]
    assert out == sorted(out, key=order.index)  # reported least recently used first

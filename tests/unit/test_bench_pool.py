"""``python -m bench pool`` (issue 13, ADR 0701): the pool-on-vs-off table from the simulator."""

from __future__ import annotations

import argparse

import pytest

pytestmark = pytest.mark.unit


def test_a_small_pool_table_has_every_arm_its_targets_and_the_noise() -> None:
    from bench import pool

    report = pool.run([1, 2], hours=0.05, gpus=10, noise=1, day_shift_runs=False)
    assert set(report["rows"]) == {"none", "guard", "ours", "score"}
    none, ours = report["rows"]["none"], report["rows"]["ours"]
    assert set(none) == set(ours) == {"1", "2"}
    fewer = sum(ours[s]["cold_loads_per_hour"] < none[s]["cold_loads_per_hour"] for s in "12")
    assert report["targets"]["fewer_cold_loads_seeds"] == fewer
    assert report["targets"]["goals_met_seeds"] == sum(ours[s]["goals_met"] for s in "12")
    # the noise runs: the none run first, then one re-draw of times per seed
    assert [len(v) for v in report["none_cold_loads_noise"].values()] == [2, 2]
    assert report["none_cold_loads_noise"]["1"][0] == none["1"]["cold_loads_per_hour"]
    assert report["ours_cold_loads_noise"]["2"][0] == ours["2"]["cold_loads_per_hour"]
    fewer_mean = sum(
        sum(report["ours_cold_loads_noise"][s]) < sum(report["none_cold_loads_noise"][s])
        for s in "12"
    )
    assert report["targets"]["fewer_cold_loads_seeds_mean_of_draws"] == fewer_mean
    text = pool.table(report)
    assert text.count("| 1 | ") == 5 and text.count("| 2 | ") == 5  # 4 arms and the draws
    assert "fewer cold loads than none on" in text and report["day_shift"] == {}


def test_seed_ranges_are_parsed_and_bad_ones_name_the_option() -> None:
    from bench.pool import _seeds

    assert _seeds("1-3,7") == [1, 2, 3, 7]
    with pytest.raises(argparse.ArgumentTypeError, match="--seeds"):
        _seeds("one")


def test_python_m_bench_lists_the_pool_table() -> None:
    from bench.__main__ import BENCHES
    from bench.pool import main

    assert BENCHES["pool"] is main

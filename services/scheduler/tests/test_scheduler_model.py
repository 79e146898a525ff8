"""Footprints, fit, warm levels, admission and configuration."""

from __future__ import annotations

from dataclasses import replace

import pytest
from scheduler_testkit import CATALOG, job, large, small

from imagegen_scheduler.domain import (
    Admitted,
    FleetCapabilities,
    Refused,
    SchedulerConfig,
    Tier,
    WarmLevel,
    admit,
    fits,
    footprint_gb,
    warm_level,
)

pytestmark = pytest.mark.unit
FLEET = FleetCapabilities.of([small("a10g-1"), small("a10g-2"), large("a100-1")])


def test_footprint_adds_model_adapters_and_activations_for_resolution_and_batch() -> None:
    plain = footprint_gb(job("j"), CATALOG)
    assert plain == pytest.approx(13.5 + 2.0 * 1.048576)
    composed = footprint_gb(job("j", adapters=("lora-a", "cn-canny"), batch=2), CATALOG)
    assert composed == pytest.approx(13.5 + 0.2 + 2.5 + 2.0 * 1.048576 * 2)


def test_seed_vram_scenarios_b_fits_an_a10g_and_c_needs_an_a100() -> None:
    b = job("b", adapters=("lora-a", "lora-b", "cn-canny"))
    c = job("c", adapters=("lora-a", "lora-b", "cn-canny", "cn-depth"))
    for request, on_small in ((b, True), (c, False)):
        need = footprint_gb(request, CATALOG)
        assert fits("sdxl", need, small("w")) is on_small
        assert fits("sdxl", need, large("w"))


def test_a_worker_without_the_family_never_fits() -> None:
    assert not fits("flux", 1.0, small("w"))
    assert fits("flux", 40.0, large("w"))


def test_warm_level_counts_model_then_adapters() -> None:
    request = job("j", adapters=("lora-a",))
    assert warm_level(request, small("w")) == WarmLevel.COLD
    assert warm_level(request, small("w", "sdxl")) == WarmLevel.BASE
    assert warm_level(request, small("w", "sdxl", "lora-a")) == WarmLevel.FULL


def test_admit_routes_a_complex_request_to_the_large_class() -> None:
    verdict = admit(job("c", adapters=("cn-canny", "cn-depth")), FLEET, CATALOG)
    assert isinstance(verdict, Admitted)
    assert verdict.gpu_types == ("A100-80GB",)


@pytest.mark.parametrize(
    ("request_kwargs", "reason"),
    [
        ({"model": "sd9"}, "unknown model 'sd9'"),
        ({"adapters": ("lora-z",)}, "unknown adapter 'lora-z'"),
        ({"adapters": ("flux-lora",)}, "adapter 'flux-lora' is for flux"),
        ({"batch": 0}, "batch and steps must be at least 1"),
        ({"model": "flux", "size": 2048, "batch": 4}, "needs 91.7 GB of GPU memory"),
    ],
)
def test_admit_refuses_what_no_worker_can_ever_serve(request_kwargs: dict, reason: str) -> None:
    verdict = admit(job("j", **request_kwargs), FLEET, CATALOG)
    assert isinstance(verdict, Refused)
    assert reason in verdict.reason


def test_admit_refuses_a_family_the_fleet_does_not_run() -> None:
    verdict = admit(job("j", model="flux"), FleetCapabilities.of([small("a")]), CATALOG)
    assert verdict == Refused("no worker in the fleet runs flux models")


def test_admit_names_megabytes_below_a_gigabyte() -> None:
    """A local fleet's tiny models need megabytes: "needs 0.0 GB" would say nothing."""
    tiny = replace(small("w"), budget_gb=0.0256)
    verdict = admit(job("j"), FleetCapabilities.of([tiny]), CATALOG)
    assert isinstance(verdict, Refused)
    assert verdict.reason == (
        "model 'sdxl' takes 13.5 GB of GPU memory loaded, the largest sdxl worker has 25.6 MB;"
        " it needs a worker with more memory"
    )
    roomy = replace(small("w"), budget_gb=14.0)  # holds the model, not a job's activations
    verdict = admit(job("j"), FleetCapabilities.of([roomy]), CATALOG)
    assert isinstance(verdict, Refused)
    assert verdict.reason.startswith("needs 15.6 GB of GPU memory, the largest sdxl worker has")


def test_promotion_point_a_relax_job_waiting_promote_after_equals_a_fresh_turbo_job() -> None:
    config = SchedulerConfig()
    assert config.aging_scale_s == pytest.approx(300 / 9)
    assert config.urgency(Tier.RELAX, 300.0) == pytest.approx(config.urgency(Tier.TURBO, 0.0))
    assert config.urgency(Tier.RELAX, 299.0) < config.urgency(Tier.TURBO, 0.0)
    assert config.urgency(Tier.FAST, 0.0) < config.urgency(Tier.TURBO, 0.0)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"tier_weights": {Tier.TURBO: 1, Tier.FAST: 1, Tier.RELAX: 1}}, "turbo must weigh more"),
        ({"tier_weights": {Tier.TURBO: 10}}, "positive weight for each"),
        ({"promote_after_s": 0}, "promote_after_s must be > 0"),
        ({"relax_reserve_fraction": 1.0}, "relax_reserve_fraction"),
        ({"user_share": 0}, "user_share"),
        ({"lookahead": 0}, "lookahead"),
    ],
)
def test_config_rejects_nonsense_with_a_message_that_says_how_to_fix_it(
    kwargs: dict, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        SchedulerConfig(**kwargs)

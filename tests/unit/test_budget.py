"""The shared memory budget model (``imagegen_runtime.budget``, ADR 0708): the seed's SDXL
layout, monotone in resolution and batch, the margin, and bad input named."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from imagegen_runtime import budget

pytestmark = pytest.mark.unit
GIB = 1024.0  # MiB; the seed's GB are read as GiB


def test_sdxl_at_1024_matches_the_seeds_a100_layout() -> None:
    # Seed, "A100 80GB Layout": base model 10 GB + text encoders 4 GB + VAE 2 GB, LoRA
    # workspace 2 GB, ControlNet reserve 4 GB, latent tensors (batch=4) 8 GB, margin 10 GB of
    # the 50 GB allocated (safety models 4 GB and CUDA overhead 6 GB are not per job).
    components = {
        "unet": int(10 * GIB * budget.MIB),
        "text_encoder": int(1 * GIB * budget.MIB),
        "text_encoder_2": int(3 * GIB * budget.MIB),
        "vae": int(2 * GIB * budget.MIB),
        "tokenizer": 2_000_000,  # not on the device
        "scheduler": 500,
    }
    assert budget.weights_mb(components) == 16 * GIB
    assert budget.denoiser_mb(components) == 10 * GIB
    assert budget.activation_mb("sdxl", 1024, 1024, 4) == 8 * GIB
    # the seed's own denoiser size is the reference: scaling by it changes nothing
    assert budget.activation_mb("sdxl", 1024, 1024, 4, denoiser_mb=10 * GIB) == 8 * GIB
    assert budget.lora_workspace_mb("sdxl", [None] * 10) == pytest.approx(2 * GIB)
    assert budget.controlnet_reserve_mb("sdxl", [4 * GIB]) == 4 * GIB
    assert budget.margin_mb(50 * GIB) == pytest.approx(10 * GIB)
    need = budget.job_need_mb(
        budget.weights_mb(components),
        "sdxl",
        1024,
        1024,
        4,
        loras_mb=[None] * 10,
        controlnets_mb=[4 * GIB],
    )
    assert need.total_mb == pytest.approx(30 * GIB)  # 16 + 2 + 4 + 8
    # 50 GB allocated less safety models and CUDA overhead: 40 GB for jobs, 20% kept free
    assert budget.fits(40 * GIB, need)
    # two more images (4 GB of activations) leave less than the margin free
    bigger = budget.job_need_mb(
        16 * GIB, "sdxl", 1024, 1024, 6, loras_mb=[None] * 10, controlnets_mb=[4 * GIB]
    )
    assert bigger.total_mb == pytest.approx(34 * GIB) and not budget.fits(40 * GIB, bigger)


def test_the_seeds_scenario_b_lora_and_controlnet_defaults() -> None:
    # Scenario B (A10G): two LoRAs 0.4 GB, one ControlNet 3 GB
    assert budget.lora_workspace_mb("sdxl", [None, None]) == pytest.approx(0.4 * GIB)
    assert budget.controlnet_reserve_mb("sdxl", [None]) == 3 * GIB
    # known sizes replace the defaults
    assert budget.lora_workspace_mb("sdxl", [50.0, None]) == pytest.approx(50.0 + 0.2 * GIB)


@given(
    family=st.sampled_from(sorted(budget.FAMILIES)),
    side=st.integers(8, 4096),
    other=st.integers(8, 4096),
    batch=st.integers(1, 8),
)
def test_activations_grow_with_resolution_and_batch(
    family: str, side: int, other: int, batch: int
) -> None:
    base = budget.activation_mb(family, side, other, batch)
    assert base > 0
    assert budget.activation_mb(family, side + 8, other, batch) > base
    assert budget.activation_mb(family, side, other + 8, batch) > base
    assert budget.activation_mb(family, side, other, batch + 1) > base
    assert budget.activation_mb(family, side, other, 2 * batch) == pytest.approx(2 * base)


def test_a_smaller_denoiser_needs_fewer_activations_by_the_square_root_of_its_size() -> None:
    full = budget.activation_mb("sdxl", 1024, 1024, 1)
    quarter = budget.activation_mb("sdxl", 1024, 1024, 1, denoiser_mb=10 * GIB / 4)
    assert quarter == pytest.approx(full / 2)
    # a tiny random-weight SDXL (a 0.25 MiB UNet) needs megabytes, not gigabytes
    assert budget.activation_mb("sdxl", 64, 64, 4, denoiser_mb=0.25) < 1.0


def test_a_models_own_figure_replaces_the_estimate() -> None:
    assert budget.activation_mb("flux", 1000, 1000, 2, per_mpix=300.0) == pytest.approx(600.0)
    # with every size known, a family without figures still gets its need
    need = budget.job_need_mb(10.0, "kandinsky", 1000, 1000, 1, activation_per_mpix=5.0)
    assert need.total_mb == pytest.approx(15.0)
    with pytest.raises(ValueError, match="family 'kandinsky'"):
        budget.job_need_mb(10.0, "kandinsky", 1000, 1000, 1, loras_mb=[None])


def test_fits_keeps_the_margin_free() -> None:
    assert budget.usable_mb(1000.0) == pytest.approx(800.0)
    assert budget.fits(1000.0, 800.0)
    assert not budget.fits(1000.0, 800.1)


def test_need_names_its_parts() -> None:
    need = budget.job_need_mb(100.0, "sd15", 512, 512, 2, loras_mb=[10.0])
    assert str(need).startswith(f"{need.total_mb:.1f} MiB (weights 100.0 + LoRAs 10.0 + ")
    assert "ControlNets" not in str(need)


@pytest.mark.parametrize(
    ("call", "named"),
    [
        (lambda: budget.activation_mb("sd9", 64, 64, 1), "family 'sd9'"),
        (lambda: budget.activation_mb("sdxl", 0, 64, 1), "width"),
        (lambda: budget.activation_mb("sdxl", 64, -8, 1), "height"),
        (lambda: budget.activation_mb("sdxl", 64, 64, 0), "batch"),
        (lambda: budget.activation_mb("sdxl", 64, 64, 1, denoiser_mb=0.0), "denoiser_mb"),
        (lambda: budget.lora_workspace_mb("sdxl", [-1.0]), r"loras_mb\[0\]"),
        (lambda: budget.controlnet_reserve_mb("sdxl", [1.0, -1.0]), r"controlnets_mb\[1\]"),
        (lambda: budget.weights_mb({"unet": -5}), "components"),
        (lambda: budget.job_need_mb(-1.0, "sdxl", 64, 64, 1), "weights_mb"),
        (lambda: budget.margin_mb(-1.0), "budget_mb"),
    ],
)
def test_bad_input_is_refused_naming_the_field(call: object, named: str) -> None:
    assert callable(call)
    with pytest.raises(ValueError, match=named):
        call()

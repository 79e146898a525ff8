"""The CUDA path's decisions and their application (issue 12 item 6 "On CUDA", ADR 0709).

- ``domain/accel.plan``: dtype, attention, compile, VAE tiling, channels_last and the pinned RAM
  tier for every device kind and family, and the settings' validation;
- the worker settings (``IMAGEGEN_GPU_WORKER_*``) that feed it;
- ``adapters/accel`` on the zoo's tiny pipelines (CPU): the loaded dtype, SDPA made explicit
  and reported, per-run VAE tiling, and the RAM tier's moves;
- CPU images unchanged: the runner's PNG bytes equal those of a plain pipeline call (the
  registry's float32 load, no plan applied) for every family.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from gpu_worker_testkit import tiny_plan
from pydantic import ValidationError

from imagegen_gpu_worker.adapters import accel, registry
from imagegen_gpu_worker.adapters.diffusers_runner import (
    DiffusersRunner,
    call_kwargs,
    encode_png,
    make_sampler,
)
from imagegen_gpu_worker.config import GpuWorkerSettings
from imagegen_gpu_worker.domain.accel import AccelError, AccelSettings, device_kind, plan

pytestmark = pytest.mark.unit
BOOTSTRAP = "127.0.0.1:9092"
FAMILIES = ("sd15", "sdxl", "sd3", "flux")
TINY = {"sd15": "tiny-sd15", "sdxl": "tiny-sdxl", "sd3": "tiny-sd3", "flux": "tiny-flux"}


# -- domain/accel.plan -------------------------------------------------------------------------


@pytest.mark.parametrize("family", FAMILIES)
def test_auto_dtype_is_float32_on_cpu_for_every_family(family: str) -> None:
    p = plan("cpu", family, AccelSettings(), bf16_supported=True)
    assert p.dtype == "fp32" and p.dtype_reason == "auto on cpu: float32"
    assert (p.channels_last, p.pin_ram_tier, p.vae_tiling_above_pixels) == (False, False, None)


@pytest.mark.parametrize(
    ("family", "bf16", "dtype"),
    [
        ("sd15", True, "fp16"),
        ("sdxl", True, "fp16"),
        ("sd3", True, "bf16"),
        ("flux", True, "bf16"),
        ("sd3", False, "fp16"),
        ("flux", False, "fp16"),
        ("sdxl", False, "fp16"),
    ],
)
def test_auto_dtype_on_cuda_is_half_bf16_for_the_t5_families_when_supported(
    family: str, bf16: bool, dtype: str
) -> None:
    p = plan("cuda", family, AccelSettings(), bf16_supported=bf16)
    assert p.dtype == dtype
    assert family in p.dtype_reason and "cuda" in p.dtype_reason


@pytest.mark.parametrize("setting", ["fp32", "fp16", "bf16"])
@pytest.mark.parametrize("device", ["cpu", "cuda", "cuda:1"])
def test_an_explicit_dtype_is_used_as_given(setting: str, device: str) -> None:
    p = plan(device, "flux", AccelSettings(dtype=setting), bf16_supported=False)
    assert p.dtype == setting and p.dtype_reason == f"dtype setting {setting}"


def test_channels_last_and_the_pinned_tier_are_cuda_only_and_channels_last_unet_only() -> None:
    assert plan("cuda", "sdxl", AccelSettings()).channels_last is True
    assert plan("cuda", "sd15", AccelSettings()).channels_last is True
    assert plan("cuda", "flux", AccelSettings()).channels_last is False
    assert plan("cuda", "sd3", AccelSettings()).pin_ram_tier is True
    assert plan("cuda", "sd3", AccelSettings(pin_ram_tier=False)).pin_ram_tier is False
    assert plan("cpu", "sd3", AccelSettings(pin_ram_tier=True)).pin_ram_tier is False


def test_vae_tiling_applies_on_cuda_above_the_threshold_only() -> None:
    p = plan("cuda", "sdxl", AccelSettings())
    assert p.vae_tiling_above_pixels == 1024 * 1024
    assert not p.tiles_vae(1024, 1024)
    assert p.tiles_vae(1024, 1032) and p.tiles_vae(2048, 2048)
    small = plan("cuda", "sdxl", AccelSettings(vae_tiling_above_pixels=512 * 512))
    assert small.tiles_vae(768, 512) and not small.tiles_vae(512, 512)
    assert not plan("cuda", "sdxl", AccelSettings(vae_tiling=False)).tiles_vae(4096, 4096)
    assert not plan("cpu", "sdxl", AccelSettings()).tiles_vae(4096, 4096)


def test_compile_and_attention_pass_through_from_the_settings() -> None:
    p = plan("cuda", "sdxl", AccelSettings())
    assert (p.compile, p.compile_mode, p.attention) == (False, "default", "sdpa")
    p = plan("cpu", "sd15", AccelSettings(compile=True, compile_mode="max-autotune"))
    assert (p.compile, p.compile_mode) == (True, "max-autotune")
    assert plan("cuda", "sd15", AccelSettings(attention="diffusers")).attention == "diffusers"


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"dtype": "fp8"}, "dtype"),
        ({"attention": "xformers"}, "attention"),
        ({"compile_mode": "fast"}, "compile_mode"),
        ({"vae_tiling_above_pixels": 0}, "vae_tiling_above_pixels"),
    ],
)
def test_bad_accel_settings_are_refused_naming_the_field(
    kwargs: dict[str, Any], field: str
) -> None:
    with pytest.raises(AccelError, match=field):
        AccelSettings(**kwargs)


def test_an_unknown_device_is_refused_naming_it() -> None:
    assert (device_kind("cuda:0"), device_kind("cpu")) == ("cuda", "cpu")
    with pytest.raises(AccelError, match="'mps'"):
        plan("mps", "sd15", AccelSettings())


# -- settings ----------------------------------------------------------------------------------


def test_the_settings_defaults_and_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("DTYPE", "ATTENTION", "COMPILE", "COMPILE_MODE", "VAE_TILING_ABOVE_PIXELS"):
        monkeypatch.delenv(f"IMAGEGEN_GPU_WORKER_{name}", raising=False)
    assert GpuWorkerSettings(kafka_bootstrap=BOOTSTRAP).accel_settings() == AccelSettings()
    monkeypatch.setenv("IMAGEGEN_GPU_WORKER_DTYPE", "bf16")
    monkeypatch.setenv("IMAGEGEN_GPU_WORKER_COMPILE", "true")
    monkeypatch.setenv("IMAGEGEN_GPU_WORKER_COMPILE_MODE", "max-autotune")
    monkeypatch.setenv("IMAGEGEN_GPU_WORKER_VAE_TILING_ABOVE_PIXELS", "262144")
    monkeypatch.setenv("IMAGEGEN_GPU_WORKER_PIN_RAM_TIER", "false")
    got = GpuWorkerSettings(kafka_bootstrap=BOOTSTRAP).accel_settings()
    assert got == AccelSettings(
        dtype="bf16",
        compile=True,
        compile_mode="max-autotune",
        vae_tiling_above_pixels=262144,
        pin_ram_tier=False,
    )


@pytest.mark.parametrize(
    ("field", "value"),
    [("dtype", "fp8"), ("attention", "flash"), ("vae_tiling_above_pixels", 0)],
)
def test_bad_settings_are_refused_naming_the_field(field: str, value: Any) -> None:
    with pytest.raises(ValidationError, match=field):
        GpuWorkerSettings(kafka_bootstrap=BOOTSTRAP, **{field: value})


def test_the_service_stops_at_start_up_naming_a_bad_dtype_variable() -> None:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("IMAGEGEN_")}
    env = {
        **clean,
        "IMAGEGEN_GPU_WORKER_KAFKA_BOOTSTRAP": BOOTSTRAP,
        "IMAGEGEN_GPU_WORKER_DTYPE": "float8",
    }
    code = "from imagegen_gpu_worker.config import GpuWorkerSettings; GpuWorkerSettings()"
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode != 0
    assert "dtype" in done.stderr and "float8" in done.stderr


# -- adapters/accel on the tiny pipelines ---------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_sdxl(zoo: Path) -> Any:
    import torch

    torch.set_num_threads(2)
    folder = zoo / "tiny-sdxl"
    return accel.open_pipeline(folder, registry.verify(folder), "cpu", AccelSettings())


def test_a_cpu_load_is_float32_with_sdpa_attention_reported(tiny_sdxl: Any) -> None:
    import torch

    for module in tiny_sdxl.components.values():
        if isinstance(module, torch.nn.Module):
            assert {p.dtype for p in module.parameters()} == {torch.float32}
    report = accel.apply(tiny_sdxl, plan("cpu", "sdxl", AccelSettings()))
    assert report["dtype"] == "fp32" and report["all_attention_sdpa"] is True
    assert report["attention_in_use"]["unet"] == ["AttnProcessor2_0(sdpa)"]
    assert report["attention_in_use"]["text_encoder"] == ["sdpa"]
    assert report["compile"] is False and report["vae_tiling_above_pixels"] is None


def test_sdpa_replaces_classic_attention_processors_and_diffusers_mode_keeps_them(
    tiny_sdxl: Any,
) -> None:
    from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

    unet = tiny_sdxl.unet
    unet.set_attn_processor(AttnProcessor())
    kept = accel.set_attention(tiny_sdxl, "diffusers")
    assert kept["unet"] == ["AttnProcessor"]
    assert all(type(p) is AttnProcessor for p in unet.attn_processors.values())
    made = accel.set_attention(tiny_sdxl, "sdpa")
    assert made["unet"] == ["AttnProcessor2_0(sdpa)"]
    assert all(type(p) is AttnProcessor2_0 for p in unet.attn_processors.values())


def test_vae_tiling_is_switched_per_run_by_size(tiny_sdxl: Any) -> None:
    settings = AccelSettings(vae_tiling_above_pixels=64 * 64)
    assert accel.prepare_run(tiny_sdxl, "sdxl", "cpu", settings, 128, 128) is False
    assert tiny_sdxl.vae.use_tiling is False  # never on CPU
    cuda_plan = plan("cuda", "sdxl", settings)
    accel.set_vae_tiling(tiny_sdxl, cuda_plan.tiles_vae(128, 128))
    assert tiny_sdxl.vae.use_tiling is True
    accel.set_vae_tiling(tiny_sdxl, cuda_plan.tiles_vae(64, 64))
    assert tiny_sdxl.vae.use_tiling is False


class _Pipe:
    def __init__(self) -> None:
        self.components = {"unet": SimpleNamespace()}
        self.moves: list[str] = []

    def to(self, device: str) -> _Pipe:
        self.moves.append(device)
        return self


def test_ram_tier_moves_call_the_pipelines_own_to_and_pin_nothing_without_cuda() -> None:
    pipe = _Pipe()
    assert accel.to_ram(pipe, pin=True) == 0
    assert accel.to_device(pipe, "cuda") == 0
    assert pipe.moves == ["cpu", "cuda"]


def test_ram_tier_moves_keep_a_real_pipeline_intact_on_cpu(tiny_sdxl: Any) -> None:
    before = [p.data_ptr() for p in tiny_sdxl.unet.parameters()]
    assert accel.to_ram(tiny_sdxl, pin=True) == 0  # nothing to pin: no CUDA here
    assert accel.to_device(tiny_sdxl, "cpu") == 0
    assert [p.data_ptr() for p in tiny_sdxl.unet.parameters()] == before


# -- CPU images unchanged ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def runner(zoo: Path) -> DiffusersRunner:
    return DiffusersRunner(zoo)


@pytest.mark.parametrize("family", FAMILIES)
def test_cpu_images_equal_a_plain_float32_pipeline_call_byte_for_byte(
    runner: DiffusersRunner, zoo: Path, family: str
) -> None:
    import torch

    model_id = TINY[family]
    p = tiny_plan(model_id)
    ours = runner.run(p, lambda *a: None, lambda: False).images_png
    folder = zoo / model_id
    pipe = registry.open_pipeline(folder, registry.verify(folder))  # no plan applied
    pipe.scheduler = make_sampler(family, p.scheduler, pipe.scheduler.config)
    with torch.inference_mode():
        out = pipe(**call_kwargs(family, p), generator=torch.Generator("cpu").manual_seed(p.seed))
    assert ours == [encode_png(image) for image in out.images]

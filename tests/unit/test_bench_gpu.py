"""``bench/gpu.py`` (issue 12, "bench/gpu.py, ready for an accelerator"), tested where CI runs:
without CUDA it says so (exit 0, or 1 with ``--require-gpu``); with ``--device cpu --tiny`` it
runs its whole code path on the tiny SDXL model's configs and prints the JSON report; its SDXL
configs have SDXL base 1.0's published parameter counts (built on the meta device: no memory).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit
torch = pytest.importorskip("torch")

ROOT = Path(__file__).resolve().parents[2]
FIGURES = {
    "image_s",
    "swap_out_s",
    "swap_in_s",
    "swap_in_pageable_s",
    "lora_load_s",
    "lora_switch_s",
    "lora_toggle_s",
    "image_after_lora_switch_s",
    "image_with_lora_s",
}
GOALS = {"image_s": 1.5, "swap_in_s": 0.5, "lora_switch_s": 0.3, "lora_toggle_s": 0.3}


@pytest.fixture(scope="module")
def tiny_sdxl(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from imagegen_model_zoo.build import build_all

    return build_all(tmp_path_factory.mktemp("zoo"), only=["tiny-sdxl"])["tiny-sdxl"]


def test_tiny_cpu_mode_runs_the_whole_path_and_prints_the_report(
    tiny_sdxl: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from bench import gpu

    out = tmp_path / "gpu.json"
    argv = ["--device", "cpu", "--tiny", "--tiny-model", str(tiny_sdxl), "--size", "64"]
    argv += ["--steps", "2", "--runs", "2", "--lora-rank", "4", "--out", str(out)]
    assert gpu.main(argv) == 0
    report = json.loads(capsys.readouterr().out)
    assert report == json.loads(out.read_text())
    assert report["bench"] == "gpu" and report["ran"] is True and report["device"] == "cpu"
    assert set(report["figures"]) == FIGURES
    assert all(isinstance(v, float) and v >= 0 for v in report["figures"].values())
    assert report["settings"] == {
        "size": 64,
        "steps": 2,
        "guidance": 5.0,
        "runs": 2,
        "warmup": 1,
        "lora_rank": 4,
        "seed": 0,
    }
    assert [len(report["runs"][k]) for k in ("image_s", "swap_in_s", "lora_switch_s")] == [2] * 3
    assert len(report["runs"]["lora_toggle_s"]) == 4
    # The worker's plan for sdxl on the CPU, applied to the pipeline.
    plan = report["plan"]
    assert (plan["dtype"], plan["attention"], plan["all_attention_sdpa"]) == ("fp32", "sdpa", True)
    assert plan["attention_in_use"]["unet"] == ["AttnProcessor2_0(sdpa)"]
    assert (plan["compile"], plan["pin_ram_tier"], plan["vae_tiling_above_pixels"]) == (
        False,
        False,
        None,
    )
    assert set(report["params"]) == {"unet", "vae", "text_encoder", "text_encoder_2"}
    assert report["swap_roundtrip_identical"] is True and report["lora_bytes"] > 0
    # Goals: printed beside the figures with ratios, but they do not apply to a tiny CPU run.
    assert report["goals"] == GOALS and report["goals_apply"] is False
    for name, goal in GOALS.items():
        assert report["vs_goal"][name] == round(report["figures"][name] / goal, 3)
        assert report["meets_goal"][name] is (report["figures"][name] <= goal)
    assert report["memory"] == {}


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the machine without CUDA")
def test_without_cuda_it_says_so_and_fails_only_with_require_gpu() -> None:
    script = str(ROOT / "bench" / "gpu.py")  # run directly, not through the package
    plain = subprocess.run(
        [sys.executable, script], capture_output=True, text=True, timeout=300, cwd=ROOT
    )
    assert plain.returncode == 0
    assert "no CUDA device here" in plain.stderr
    report = json.loads(plain.stdout)
    assert report["ran"] is False and report["goals"] == GOALS
    strict = subprocess.run(
        [sys.executable, script, "--require-gpu"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert strict.returncode == 1 and "no CUDA device here" in strict.stderr


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--device", "cpu"], "--device cpu runs only with --tiny"),
        (["--device", "mps"], "--device must be cuda, cuda:N or cpu"),
        (["--size", "100"], "--size must be a multiple of 8"),
        (["--runs", "0"], "--runs must be at least 1"),
    ],
)
def test_bad_arguments_are_refused_naming_them(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from bench import gpu

    assert gpu.main(argv) == 2
    assert message in capsys.readouterr().err


def test_the_sdxl_configs_have_sdxl_base_parameter_counts() -> None:
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from bench import gpu

    configs = gpu.sdxl_configs()
    with torch.device("meta"):
        modules = {
            "unet": UNet2DConditionModel.from_config(configs["unet"]),
            "vae": AutoencoderKL.from_config(configs["vae"]),
            "text_encoder": CLIPTextModel(CLIPTextConfig.from_dict(configs["text_encoder"])),
            "text_encoder_2": CLIPTextModelWithProjection(
                CLIPTextConfig.from_dict(configs["text_encoder_2"])
            ),
        }
    counts = {name: sum(p.numel() for p in m.parameters()) for name, m in modules.items()}
    # stabilityai/stable-diffusion-xl-base-1.0's components.
    assert counts == {
        "unet": 2_567_463_684,
        "vae": 83_653_863,
        "text_encoder": 123_060_480,
        "text_encoder_2": 694_659_840,
    }


def test_python_m_bench_lists_the_gpu_bench() -> None:
    from bench.__main__ import BENCHES
    from bench.gpu import main

    assert BENCHES["gpu"] is main

"""Fixtures shared by the gpu-worker tests."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def zoo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A models folder with the tiny random-weight model of every family (tiny-sd15,
    tiny-sdxl, tiny-sd3, tiny-flux) and the zoo's tiny LoRAs (tiny-sd15-lora-ink,
    tiny-sd15-lora-glow, tiny-sdxl-lora-ink) and ControlNets (tiny-sd15-controlnet-canny, ...),
    built once per session by the model-zoo tool
    (~20 s with the imports), independent of ``make models``."""
    pytest.importorskip("torch")
    from imagegen_model_zoo.build import build_all

    root = tmp_path_factory.mktemp("zoo")
    build_all(root)
    return root

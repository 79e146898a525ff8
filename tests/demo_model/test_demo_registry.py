"""The shapes demo's manifest and its sha256 checks (no torch needed)."""

from __future__ import annotations

import json

import pytest

from imagegen_gpu_worker.demo import registry

pytestmark = pytest.mark.unit


@pytest.fixture
def model_dir(tmp_path):
    (tmp_path / "unet").mkdir()
    (tmp_path / "unet" / "weights.safetensors").write_bytes(b"\x00" * 100)
    (tmp_path / "model_index.json").write_text("{}")
    registry.write_manifest(tmp_path)
    return tmp_path


def test_manifest_lists_every_file_with_its_sha256(model_dir):
    entry = registry.verify(model_dir)
    assert entry.id == "shapes-demo" and entry.family == "sd15" and entry.default_size == 64
    assert set(entry.files) == {"unet/weights.safetensors", "model_index.json"}
    assert entry.files["model_index.json"] == registry.sha256_file(model_dir / "model_index.json")
    assert (model_dir / "unet" / "weights.safetensors").stat().st_mode & 0o777 == 0o644


def test_a_changed_file_is_refused(model_dir):
    (model_dir / "unet" / "weights.safetensors").write_bytes(b"\x01" * 100)
    with pytest.raises(registry.ChecksumError, match="unet/weights.safetensors has sha256"):
        registry.verify(model_dir)


def test_an_unlisted_file_is_refused(model_dir):
    (model_dir / "unet" / "extra.bin").write_bytes(b"x")
    with pytest.raises(registry.ChecksumError, match="not in model.json"):
        registry.verify(model_dir)


def test_a_missing_file_is_refused(model_dir):
    (model_dir / "model_index.json").unlink()
    with pytest.raises(registry.ChecksumError, match="missing"):
        registry.verify(model_dir)


def test_load_pipeline_checks_before_loading(model_dir):
    (model_dir / "model_index.json").write_text('{"tampered": true}')
    with pytest.raises(registry.ChecksumError):
        registry.load_pipeline(model_dir)


def test_the_committed_model_is_registered_and_small():
    model_dir = registry.DEFAULT_MODEL_DIR
    entry = registry.verify(model_dir)
    raw = json.loads((model_dir / registry.MANIFEST).read_text())
    assert raw["id"] == "shapes-demo" and raw["family"] == "sd15"
    assert raw["pipeline"] == "StableDiffusionPipeline" and raw["default_size"] == 64
    total = sum((model_dir / name).stat().st_size for name in entry.files)
    assert total <= 20 * 1024 * 1024
    for part in ("unet", "vae", "text_encoder", "tokenizer", "scheduler"):
        assert any(name.startswith(part + "/") for name in entry.files)

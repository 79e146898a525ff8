"""The model registry: the manifest (model.json) and its sha256 checks (no torch needed)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from imagegen_gpu_worker.adapters import registry

pytestmark = pytest.mark.unit

# The committed demo model (models/shapes-demo).
DEMO_MODEL_DIR = Path(__file__).resolve().parents[3] / "models" / "shapes-demo"


@pytest.fixture
def model_dir(tmp_path):
    (tmp_path / "unet").mkdir()
    (tmp_path / "unet" / "weights.safetensors").write_bytes(b"\x00" * 100)
    (tmp_path / "model_index.json").write_text("{}")
    registry.write_manifest(tmp_path, id="shapes-demo")
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
    model_dir = DEMO_MODEL_DIR
    entry = registry.verify(model_dir)
    raw = json.loads((model_dir / registry.MANIFEST).read_text())
    assert raw["id"] == "shapes-demo" and raw["family"] == "sd15"
    assert raw["pipeline"] == "StableDiffusionPipeline" and raw["default_size"] == 64
    total = sum((model_dir / name).stat().st_size for name in entry.files)
    assert total <= 20 * 1024 * 1024
    for part in ("unet", "vae", "text_encoder", "tokenizer", "scheduler"):
        assert any(name.startswith(part + "/") for name in entry.files)


def test_a_manifest_without_preview_reads_and_unknown_keys_are_ignored(model_dir):
    raw = json.loads((model_dir / registry.MANIFEST).read_text())
    assert "preview" not in raw  # written without one: the runner's fallback colours apply
    raw["added_by_a_newer_version"] = True
    (model_dir / registry.MANIFEST).write_text(json.dumps(raw))
    entry = registry.verify(model_dir)
    assert entry.preview is None and entry.id == "shapes-demo"


def test_the_new_manifest_fields_round_trip(model_dir):
    (model_dir / "vae").mkdir()
    (model_dir / "vae" / "config.json").write_text("{}")
    entry = registry.write_manifest(
        model_dir,
        id="m",
        family="flux",
        kind="base",
        tier=3,
        samplers=("euler", "unipc"),
        created=1764547200,
    )
    raw = json.loads((model_dir / registry.MANIFEST).read_text())
    assert raw["pipeline"] == "FluxPipeline" and raw["tier"] == 3 and raw["kind"] == "base"
    assert raw["samplers"] == ["euler", "unipc"] and raw["created"] == 1764547200
    assert raw["components"] == {"unet": 100, "vae": 2}  # model_index.json is no component
    assert registry.read_manifest(model_dir) == entry
    assert entry.samplers == ("euler", "unipc")


def test_a_manifest_without_the_new_fields_reads_with_defaults(model_dir):
    raw = json.loads((model_dir / registry.MANIFEST).read_text())
    for key in ("kind", "tier", "samplers", "created", "components"):
        raw.pop(key, None)
    (model_dir / registry.MANIFEST).write_text(json.dumps(raw))
    entry = registry.read_manifest(model_dir)
    assert (entry.kind, entry.tier, entry.samplers, entry.created) == ("base", 2, (), None)


def test_every_family_has_a_pipeline_and_open_arguments():
    assert set(registry.FAMILIES) == set(registry.OPEN_KWARGS) == {"sd15", "sdxl", "sd3", "flux"}
    assert registry.FAMILIES["sd3"] == "StableDiffusion3Pipeline"
    assert registry.FAMILIES["flux"] == "FluxPipeline"

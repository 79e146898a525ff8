"""The model zoo builds the same bytes twice (models, LoRAs and ControlNets), registers every
one, and skips what is built.

Two builds of the four tiny models take ~10 s on two cores (after ~8 s of imports); how the
models run is tested by the gpu-worker (services/gpu-worker/tests/test_gpu_worker_families.py).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from imagegen_gpu_worker.adapters import registry

pytest.importorskip("torch")
from imagegen_model_zoo import build  # noqa: E402

pytestmark = pytest.mark.unit


def digests(root: Path) -> dict[str, str]:
    """Every file of the models (the pristine copies under ``.pristine`` left out)."""
    return {
        p.relative_to(root).as_posix(): registry.sha256_file(p)
        for p in sorted(root.rglob("*"))
        if p.is_file() and build.PRISTINE not in p.relative_to(root).parts
    }


@pytest.fixture(scope="module")
def builds(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    a, b = tmp_path_factory.mktemp("zoo-a"), tmp_path_factory.mktemp("zoo-b")
    build.build_all(a)
    build.build_all(b)
    return a, b


def test_two_builds_are_byte_identical(builds: tuple[Path, Path]) -> None:
    a, b = builds
    first, second = digests(a), digests(b)
    assert first == second
    assert {name.split("/", 1)[0] for name in first} == {
        *build.MODELS,
        *build.LORAS,
        *build.CONTROLNETS,
    }
    assert any(name.endswith(build.LORA_FILE) for name in first)  # the LoRAs are compared too
    assert any(name.endswith(build.CONTROLNET_FILE) for name in first)  # and the ControlNets
    assert not any("/." in "/" + name for name in first)  # no staging folder left behind


def test_every_model_is_registered_small_and_complete(builds: tuple[Path, Path]) -> None:
    a, _ = builds
    for model_id, spec in build.MODELS.items():
        entry = registry.verify(a / model_id)  # every file listed, every sha256 right
        assert (entry.id, entry.family, entry.tier, entry.kind) == (
            model_id,
            spec.family,
            spec.tier,
            "base",
        )
        assert entry.created == build.CREATED and entry.default_size == 64
        assert entry.components and sum(entry.components.values()) < 3 * 2**20
        index = json.loads((a / model_id / "model_index.json").read_text())
        assert index["_class_name"] == registry.FAMILIES[spec.family]
        # no path of the machine that built it leaks into the files
        for name in entry.files:
            if name.endswith(".json"):
                assert str(a) not in (a / model_id / name).read_text(), name


def test_every_lora_is_registered_as_a_lora_of_its_family(builds: tuple[Path, Path]) -> None:
    a, _ = builds
    assert {"sd15", "sdxl"} <= {spec.family for spec in build.LORAS.values()}
    for lora_id, spec in build.LORAS.items():
        entry = registry.verify(a / lora_id)
        assert (entry.id, entry.kind, entry.family, entry.created) == (
            lora_id,
            "lora",
            spec.family,
            build.CREATED,
        )
        assert list(entry.files) == [build.LORA_FILE]
        doc = json.loads((a / lora_id / registry.MANIFEST).read_text())
        assert doc["kind"] == "lora" and "samplers" not in doc
        # B is random, not peft's zero default: the LoRA changes what it is applied to
        from safetensors.torch import load_file

        tensors = load_file(a / lora_id / build.LORA_FILE)
        ups = [t for name, t in tensors.items() if ".lora.up." in name or "lora_B" in name]
        assert ups and all(t.abs().sum() > 0 for t in ups)
    # different seeds: different LoRAs
    ink = registry.read_manifest(a / "tiny-sd15-lora-ink").files
    glow = registry.read_manifest(a / "tiny-sd15-lora-glow").files
    assert ink != glow
    assert registry.families(a) == ("flux", "sd15", "sd3", "sdxl")  # LoRAs announce no family


# The layers diffusers zero-initialises in each family's ControlNets (the zoo seeds them).
UNET_SEEDED = (
    "controlnet_down_blocks",
    "controlnet_mid_block",
    "controlnet_cond_embedding.conv_out",
)
SEEDED = {
    "sd15": UNET_SEEDED,
    "sdxl": UNET_SEEDED,
    "sd3": ("controlnet_blocks", "pos_embed_input.proj"),
    "flux": ("controlnet_blocks", "controlnet_single_blocks", "controlnet_x_embedder"),
}


def test_the_sd3_and_flux_controlnets_build_byte_identical_from_their_seeds(
    tmp_path: Path,
) -> None:
    """Built alone (without the base models), twice: the same sha256 for every file; the two
    nets differ from each other."""
    nets = ["tiny-sd3-controlnet-canny", "tiny-flux-controlnet-canny"]
    first = build.build_all(tmp_path / "a", nets)
    second = build.build_all(tmp_path / "b", nets)
    for net_id in nets:
        assert digests(first[net_id]) == digests(second[net_id])
        assert registry.verify(first[net_id]).pipeline in (
            "SD3ControlNetModel",
            "FluxControlNetModel",
        )
    sd3, flux = (registry.read_manifest(first[n]).files for n in nets)
    assert sd3[build.CONTROLNET_FILE] != flux[build.CONTROLNET_FILE]


def test_every_controlnet_is_registered_with_its_family_and_type(
    builds: tuple[Path, Path],
) -> None:
    a, _ = builds
    assert {"sd15", "sdxl", "sd3", "flux"} <= {spec.family for spec in build.CONTROLNETS.values()}
    assert {"canny", "scribble", "tile"} <= {
        spec.controlnet_type for spec in build.CONTROLNETS.values() if spec.family == "sdxl"
    }
    from safetensors.torch import load_file

    for net_id, spec in build.CONTROLNETS.items():
        entry = registry.verify(a / net_id)
        assert (entry.id, entry.kind, entry.family, entry.controlnet_type, entry.created) == (
            net_id,
            "controlnet",
            spec.family,
            spec.controlnet_type,
            build.CREATED,
        )
        assert entry.pipeline == build.CONTROLNET_CLASSES[spec.family]
        assert sorted(entry.files) == ["config.json", build.CONTROLNET_FILE]
        assert sum((a / net_id / name).stat().st_size for name in entry.files) < 2**20
        doc = json.loads((a / net_id / registry.MANIFEST).read_text())
        assert doc["controlnet_type"] == spec.controlnet_type and "samplers" not in doc
        # the layers diffusers zero-initialises are seeded: the net changes what it conditions
        tensors = load_file(a / net_id / build.CONTROLNET_FILE)
        seeded = [
            t
            for name, t in tensors.items()
            if name.endswith(".weight") and name.startswith(SEEDED[spec.family])
        ]
        assert len(seeded) >= 3 and all(t.abs().sum() > 0 for t in seeded), net_id
    # different seeds: different nets of the same family
    canny = registry.read_manifest(a / "tiny-sd15-controlnet-canny").files
    tile = registry.read_manifest(a / "tiny-sd15-controlnet-tile").files
    assert canny[build.CONTROLNET_FILE] != tile[build.CONTROLNET_FILE]
    assert registry.families(a) == ("flux", "sd15", "sd3", "sdxl")  # no family of their own


def test_a_built_model_is_kept_unless_forced(tmp_path: Path) -> None:
    build.build_all(tmp_path, only=["tiny-sd15"])
    manifest = tmp_path / "tiny-sd15" / registry.MANIFEST
    before = manifest.stat().st_mtime_ns
    build.build_all(tmp_path, only=["tiny-sd15"])
    assert manifest.stat().st_mtime_ns == before  # valid manifest: skipped
    (tmp_path / "tiny-sd15" / "vae" / "config.json").write_text("{}")  # now invalid
    build.build_all(tmp_path, only=["tiny-sd15"])
    registry.verify(tmp_path / "tiny-sd15")  # rebuilt
    before = manifest.stat().st_mtime_ns
    assert build.main(["--out", str(tmp_path), "--only", "tiny-sd15", "--force"]) == 0
    assert manifest.stat().st_mtime_ns != before
    registry.verify(tmp_path / "tiny-sd15")
    assert sorted(p.name for p in tmp_path.iterdir()) == [build.PRISTINE, "tiny-sd15"]


def test_a_pristine_copy_of_an_older_build_is_made_again(tmp_path: Path) -> None:
    """A model rebuilt after a change (``--force``) must not keep the old build's pristine copy:
    a repair from it would bring back files its new manifest refuses."""
    build.build_all(tmp_path, only=["tiny-sd15"])
    copy = tmp_path / build.PRISTINE / "tiny-sd15"
    # Stand in for an older build: a copy that verifies by itself but holds other bytes.
    config = copy / "scheduler" / "scheduler_config.json"
    config.write_text(config.read_text().replace("}", ', "older_build": 1}', 1))
    doc = json.loads((copy / registry.MANIFEST).read_text())
    doc["files"]["scheduler/scheduler_config.json"] = hashlib.sha256(
        config.read_bytes()
    ).hexdigest()
    (copy / registry.MANIFEST).write_text(json.dumps(doc))
    registry.verify(copy)  # valid on its own
    assert (
        registry.read_manifest(copy).files
        != registry.read_manifest(copy.parents[1] / "tiny-sd15").files
    )
    build.build_all(tmp_path, only=["tiny-sd15"])
    model = registry.read_manifest(tmp_path / "tiny-sd15")
    assert registry.read_manifest(copy).files == model.files


def test_an_unknown_id_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown model ids"):
        build.build_all(tmp_path, only=["tiny-sd9"])


def test_every_model_names_a_pristine_copy_that_repairs_a_corrupted_file(
    builds: tuple[Path, Path],
) -> None:
    """ADR 0707: a worker repairs a corrupted file from the manifest's ``source``; the zoo keeps
    a verified copy of each model under ``.pristine`` and names it there."""
    a, _ = builds
    for model_id in (*build.MODELS, *build.LORAS, *build.CONTROLNETS):
        entry = registry.read_manifest(a / model_id)
        source = registry.source_dir(a / model_id, entry)
        assert source == (a / build.PRISTINE / model_id).resolve()
        assert registry.read_manifest(source).files == entry.files
    model = a / "tiny-sd15"
    weights = next(name for name in registry.read_manifest(model).files if "unet/" in name)
    good = (model / weights).read_bytes()
    (model / weights).write_bytes(b"corrupted" + good[9:])
    integrity = registry.Integrity(registry.TrustStore())  # in memory
    with pytest.raises(registry.Corrupted) as bad:
        integrity.verify(model)
    integrity.repair(model, bad.value)
    assert (model / weights).read_bytes() == good
    integrity.verify(model)

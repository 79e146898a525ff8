"""`imagegen models register`: a real checkpoint (a diffusers folder, from a path or a hub cache
layout, or a single .safetensors file) becomes a registered model the worker loads and runs."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from imagegen.cli import main
from imagegen_gpu_worker.adapters import registry
from imagegen_gpu_worker.domain.plan import RunPlan
from imagegen_gpu_worker.domain.samplers import SAMPLERS

pytestmark = pytest.mark.unit

TINY = "tiny-sd15"
COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture(scope="module")
def zoo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A models folder holding only the zoo's tiny-sd15 (built from its config, offline)."""
    pytest.importorskip("torch")
    from imagegen_model_zoo.build import build_all

    root = tmp_path_factory.mktemp("zoo")
    build_all(root, only=[TINY])
    return root


def plan(model_id: str) -> RunPlan:
    return RunPlan(
        job_id="j",
        fencing_token=1,
        attempt=1,
        model_id=model_id,
        prompt="a red circle on a blue background",
        negative_prompt="blurry",
        width=64,
        height=64,
        steps=3,
        guidance_scale=4.0,
        scheduler="ddim",
        seed=7,
        num_images=1,
        progress_every=1,
    )


def png(models_dir: Path, model_id: str) -> bytes:
    from imagegen_gpu_worker.adapters.diffusers_runner import DiffusersRunner

    torch = pytest.importorskip("torch")
    torch.set_num_threads(2)
    result = DiffusersRunner(models_dir).run(plan(model_id), lambda *_: None, lambda: False)
    return bytes(result.images_png[0])


@pytest.fixture(scope="module")
def original_png(zoo: Path) -> bytes:
    return png(zoo, TINY)


def fake_hub(cache: Path, source: Path, repo: str = "acme/tiny-sd15") -> Path:
    """``source``'s files laid out as the hub cache holds a download: content in ``blobs/``,
    ``snapshots/<commit>/`` of relative symlinks to them, ``refs/main`` naming the commit; plus
    files registration leaves out (a README, a pickle, an fp16 variant)."""
    repo_dir = cache / ("models--" + repo.replace("/", "--"))
    snapshot = repo_dir / "snapshots" / COMMIT
    (repo_dir / "blobs").mkdir(parents=True)
    extras = {
        "README.md": b"# tiny\n",
        "text_encoder/pytorch_model.bin": b"pickle",
        "unet/diffusion_pytorch_model.fp16.safetensors": b"fp16",
    }
    files = {p.relative_to(source).as_posix(): p.read_bytes() for p in source.rglob("*.*")}
    files.pop(registry.MANIFEST)
    for name, data in {**files, **extras}.items():
        blob = repo_dir / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        link = snapshot / name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(Path(*[".."] * (name.count("/") + 2), "blobs", blob.name))
    (repo_dir / "refs").mkdir()
    (repo_dir / "refs" / "main").write_text(COMMIT)
    return snapshot


def register(models: Path, *args: str) -> int:
    return main(["models", "register", "--models-dir", str(models), *args])


def test_a_diffusers_folder_registers_as_symlinks_and_runs_to_the_same_bytes(
    zoo: Path, original_png: bytes, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    models = tmp_path / "models"
    args = ["--id", "mine", "--family", "sd15", "--tier", "1", "--path", str(zoo / TINY)]
    assert register(models, *args) == 0
    assert "registered mine: sd15 (StableDiffusionPipeline), tier 1" in capsys.readouterr().out

    folder = models / "mine"
    entry = registry.read_manifest(folder)
    original = registry.read_manifest(zoo / TINY)
    assert entry.files == original.files  # every loaded file, hashed at install
    assert (entry.id, entry.family, entry.pipeline, entry.tier, entry.kind) == (
        "mine",
        "sd15",
        "StableDiffusionPipeline",
        1,
        "base",
    )
    assert entry.samplers == tuple(sorted(SAMPLERS["sd15"]))
    assert entry.components == original.components
    assert entry.source == str((zoo / TINY).resolve())
    assert entry.single_file is None
    unet = folder / "unet" / "diffusion_pytorch_model.safetensors"
    assert unet.is_symlink() and unet.resolve() == (zoo / TINY / unet.relative_to(folder))
    assert registry.verify(folder) == entry
    assert registry.families(models) == ("sd15",)  # what the worker announces

    assert png(models, "mine") == original_png


def test_a_hub_cache_snapshot_registers_and_runs_to_the_same_bytes(
    zoo: Path, original_png: bytes, tmp_path: Path
) -> None:
    cache = tmp_path / "hub"
    snapshot = fake_hub(cache, zoo / TINY)
    models = tmp_path / "models"
    args = ["--id", "hubbed", "--family", "sd15", "--hub", "acme/tiny-sd15"]
    assert register(models, *args, "--hub-cache", str(cache)) == 0

    folder = models / "hubbed"
    entry = registry.read_manifest(folder)
    assert entry.files == registry.read_manifest(zoo / TINY).files  # no README/pickle/fp16
    assert entry.source == str(snapshot)
    assert entry.tier == 2
    assert registry.verify(folder) == entry
    assert png(models, "hubbed") == original_png


def test_hub_cache_from_hf_home_a_commit_revision_and_copies(
    zoo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_hub(tmp_path / "hf" / "hub", zoo / TINY)
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    models = tmp_path / "models"
    args = ["--family", "sd15", "--hub", "acme/tiny-sd15", "--revision", COMMIT, "--copy"]
    assert register(models, "--id", "copied", *args) == 0

    folder = models / "copied"
    assert not any(p.is_symlink() for p in folder.rglob("*"))
    entry = registry.verify(folder)
    assert entry.files == registry.read_manifest(zoo / TINY).files

    # A corrupted copy is repaired from the snapshot the manifest names as its source.
    unet = folder / "unet" / "diffusion_pytorch_model.safetensors"
    unet.write_bytes(b"rot")
    with pytest.raises(registry.Corrupted) as bad:
        registry.verify(folder)
    integrity = registry.Integrity()
    integrity.repair(folder, bad.value)
    assert registry.verify(folder) == entry


def test_bad_input_exits_2_with_one_line_naming_the_problem(
    zoo: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    models = tmp_path / "models"
    tiny = str(zoo / TINY)
    assert register(models, "--id", "taken", "--family", "sd15", "--path", tiny) == 0
    capsys.readouterr()
    cases: list[tuple[list[str], str]] = [
        (["--id", "taken", "--family", "sd15", "--path", tiny], "already exists (--force"),
        (["--id", "x", "--family", "sdxl", "--path", tiny], "--family sdxl needs"),
        (["--id", "x", "--family", "sd15", "--path", str(tmp_path)], "no model_index.json"),
        (["--id", "x", "--family", "sd15", "--path", str(tmp_path / "nope")], "does not exist"),
        (["--id", "../x", "--family", "sd15", "--path", tiny], "--id '../x'"),
        (
            ["--id", "x", "--family", "sd15", "--hub", "acme/none", "--hub-cache", str(tmp_path)],
            f"not in the hub cache (no folder {tmp_path / 'models--acme--none'})",
        ),
    ]
    readme = tmp_path / "notes.txt"
    readme.write_text("hi")
    cases.append((["--id", "x", "--family", "sd15", "--path", str(readme)], ".safetensors file"))
    single = tmp_path / "one.safetensors"
    single.write_bytes(b"x")
    cases.append((["--id", "x", "--family", "sd15", "--path", str(single)], "--config DIR"))
    for args, reason in cases:
        assert register(models, *args) == 2, args
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("imagegen models register: error: ")
        assert reason in err, (args, err)
    assert sorted(p.name for p in models.iterdir()) == ["taken"]  # nothing half-written

    cache = tmp_path / "hub"
    fake_hub(cache, zoo / TINY)
    hub = ["--id", "x", "--family", "sd15", "--hub", "acme/tiny-sd15", "--hub-cache", str(cache)]
    assert register(models, *hub, "--revision", "v2") == 2
    err = capsys.readouterr().err
    assert "--revision v2" in err and str(cache / "models--acme--tiny-sd15/snapshots/v2") in err

    with pytest.raises(SystemExit) as exit_:  # argparse: an unknown family
        register(models, "--id", "x", "--family", "sd9", "--path", tiny)
    assert exit_.value.code == 2
    assert "invalid choice: 'sd9'" in capsys.readouterr().err


def test_force_replaces_a_registered_model_without_touching_its_source(
    zoo: Path, tmp_path: Path
) -> None:
    source = tmp_path / "src"
    shutil.copytree(zoo / TINY, source)
    models = tmp_path / "models"
    assert register(models, "--id", "m", "--family", "sd15", "--path", str(source)) == 0
    before = {p: p.read_bytes() for p in source.rglob("*") if p.is_file()}
    args = ["--id", "m", "--family", "sd15", "--tier", "3", "--path", str(source), "--force"]
    assert register(models, *args) == 0
    assert registry.read_manifest(models / "m").tier == 3
    assert {p: p.read_bytes() for p in source.rglob("*") if p.is_file()} == before


def test_a_single_file_checkpoint_is_registered_with_its_config_folder(
    zoo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The manifest and the load call. The load itself is not run here: no offline way to
    write the tiny model as an original-layout single-file checkpoint (see docs/models.md)."""
    checkpoint = tmp_path / "dl" / "tiny.safetensors"
    checkpoint.parent.mkdir()
    checkpoint.write_bytes(b"weights")
    models = tmp_path / "models"
    args = ["--id", "one", "--family", "sd15", "--path", str(checkpoint)]
    assert register(models, *args, "--config", str(zoo / TINY)) == 0

    folder = models / "one"
    entry = registry.verify(folder)
    assert (entry.single_file, entry.single_file_config) == ("tiny.safetensors", "config")
    assert (folder / "tiny.safetensors").is_symlink()
    assert entry.source == str(checkpoint.parent.resolve())
    configs = sorted(n for n in entry.files if n.startswith("config/"))
    assert "config/model_index.json" in configs and "config/unet/config.json" in configs
    assert not any(n.endswith(".safetensors") for n in configs)  # configs only, copied
    assert not any((folder / n).is_symlink() for n in configs)

    calls: list[tuple[str, dict[str, Any]]] = []

    class Pipe:
        @classmethod
        def from_single_file(cls, path: str, **kwargs: Any) -> Pipe:
            calls.append((path, kwargs))
            return cls()

        def to(self, device: str) -> Pipe:
            return self

        def set_progress_bar_config(self, **kwargs: Any) -> None:
            pass

    monkeypatch.setattr(registry, "diffusers_class", lambda name: Pipe)
    registry.open_pipeline(folder, entry)
    ((path, kwargs),) = calls
    assert path == str(folder / "tiny.safetensors")
    assert kwargs["config"] == str(folder / "config")
    assert kwargs["local_files_only"] is True and kwargs["safety_checker"] is None


def test_manifest_json_records_the_single_file_fields(zoo: Path, tmp_path: Path) -> None:
    checkpoint = tmp_path / "x.safetensors"
    checkpoint.write_bytes(b"w")
    models = tmp_path / "models"
    args = ["--id", "s", "--family", "sd15", "--path", str(checkpoint), "--config", str(zoo / TINY)]
    assert register(models, *args, "--copy") == 0
    doc = json.loads((models / "s" / "model.json").read_text())
    assert doc["single_file"] == "x.safetensors" and doc["single_file_config"] == "config"
    assert not (models / "s" / "x.safetensors").is_symlink()

"""A model folder of symlinks (``imagegen models register``'s default: links into a diffusers
folder or a hub cache snapshot) is checked through its links (ADR 0707)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from imagegen_gpu_worker.adapters import registry

pytestmark = pytest.mark.unit

FILES = {"model_index.json": b"{}", "unet/w.safetensors": b"weights" * 100}


def linked_model(tmp_path: Path) -> tuple[Path, Path]:
    """(model folder of symlinks with its manifest, the source folder they point into)."""
    source, folder = tmp_path / "source", tmp_path / "models" / "m"
    for name, data in FILES.items():
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        (source / name).write_bytes(data)
        (source / name).chmod(0o600)
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).symlink_to(source / name)
    registry.write_manifest(folder, id="m", source=str(source))
    return folder, source


def test_files_are_hashed_through_their_links_and_their_targets_left_as_they_are(
    tmp_path: Path,
) -> None:
    folder, source = linked_model(tmp_path)
    entry = registry.verify(folder)
    assert sorted(entry.files) == sorted(FILES)
    assert entry.files["unet/w.safetensors"] == registry.sha256_file(source / "unet/w.safetensors")
    assert entry.components == {"unet": len(FILES["unet/w.safetensors"])}
    assert stat.S_IMODE((source / "unet/w.safetensors").stat().st_mode) == 0o600  # not chmodded


def test_a_changed_target_is_corrupted(tmp_path: Path) -> None:
    folder, source = linked_model(tmp_path)
    integrity = registry.Integrity()
    integrity.verify(folder)
    (source / "unet/w.safetensors").write_bytes(b"rotten" * 100)  # size and mtime change
    with pytest.raises(registry.Corrupted) as bad:
        integrity.verify(folder)
    assert [m.file for m in bad.value.mismatches] == ["unet/w.safetensors"]
    assert bad.value.mismatches[0].actual  # hashed through the link, not "missing"


def test_a_dangling_link_is_missing_and_an_unlisted_link_refused(tmp_path: Path) -> None:
    folder, source = linked_model(tmp_path)
    (folder / "unet" / "extra.safetensors").symlink_to(source / "model_index.json")
    with pytest.raises(registry.ChecksumError, match=r"files not in model.json.*extra"):
        registry.verify(folder)
    (folder / "unet" / "extra.safetensors").unlink()

    (source / "unet/w.safetensors").unlink()
    with pytest.raises(registry.Corrupted) as bad:
        registry.verify(folder)
    assert bad.value.mismatches == (
        registry.Mismatch(
            "unet/w.safetensors", registry.read_manifest(folder).files["unet/w.safetensors"], ""
        ),
    )


def test_a_removed_link_is_repaired_as_a_copy_but_a_bad_source_cannot_be(tmp_path: Path) -> None:
    folder, source = linked_model(tmp_path)
    integrity = registry.Integrity()
    os.unlink(folder / "unet/w.safetensors")
    with pytest.raises(registry.Corrupted) as bad:
        integrity.verify(folder)
    integrity.repair(folder, bad.value)
    repaired = folder / "unet/w.safetensors"
    assert not repaired.is_symlink() and repaired.read_bytes() == FILES["unet/w.safetensors"]
    integrity.verify(folder)

    # The links ARE the source's files: when the source itself rots there is nothing to copy.
    (source / "model_index.json").write_bytes(b"[]")
    with pytest.raises(registry.Corrupted) as bad:
        integrity.verify(folder)
    with pytest.raises(registry.RepairFailed, match="the copy from"):
        integrity.repair(folder, bad.value)

"""The shapes demo's registry entry (``model.json``) and a loader that trusts nothing unchecked.

``model.json`` sits beside the diffusers folders and records what the rest of the platform needs
to know to route and load the model like any other::

    {"id": "shapes-demo", "family": "sd15", "pipeline": "StableDiffusionPipeline",
     "default_size": 64, "default_steps": 25, "default_guidance": 5.0,
     "files": {"unet/diffusion_pytorch_model.safetensors": "<sha256>", ...}}

``load_pipeline`` recomputes every sha256 (and refuses files the manifest does not list) before
anything is deserialised, then loads with the hub switched off.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MANIFEST = "model.json"
MODEL_ID = "shapes-demo"
DEFAULT_MODEL_DIR = Path(__file__).resolve().parents[5] / "models" / MODEL_ID


@dataclass(frozen=True)
class ModelEntry:
    id: str  # the model id jobs name ("shapes-demo")
    family: str  # pipeline family the worker routes on ("sd15" = StableDiffusionPipeline)
    pipeline: str  # diffusers pipeline class name
    default_size: int  # square image side, in pixels, the model was trained at
    default_steps: int  # denoising steps the figures in docs/demo-model.md use
    default_guidance: float  # classifier-free guidance scale the figures use
    files: dict[str, str]  # path relative to the model folder -> sha256 hex digest


class ChecksumError(RuntimeError):
    """A model file is missing, unlisted, or does not match its recorded sha256."""


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _model_files(model_dir: Path) -> list[Path]:
    return sorted(
        p
        for p in model_dir.rglob("*")
        if p.is_file() and p.name != MANIFEST and p.name != ".gitattributes"
    )


def write_manifest(model_dir: Path, **fields: Any) -> ModelEntry:
    """Hash every file under ``model_dir``, make them world-readable, write ``model.json``."""
    files = {}
    for path in _model_files(model_dir):
        path.chmod(0o644)  # safetensors writes 0600; the worker may run as another user
        files[path.relative_to(model_dir).as_posix()] = sha256_file(path)
    entry = ModelEntry(
        id=fields.get("id", MODEL_ID),
        family=fields.get("family", "sd15"),
        pipeline=fields.get("pipeline", "StableDiffusionPipeline"),
        default_size=fields.get("default_size", 64),
        default_steps=fields.get("default_steps", 25),
        default_guidance=fields.get("default_guidance", 5.0),
        files=files,
    )
    manifest = model_dir / MANIFEST
    manifest.write_text(json.dumps(entry.__dict__, indent=2, sort_keys=True) + "\n")
    manifest.chmod(0o644)
    return entry


def read_manifest(model_dir: Path) -> ModelEntry:
    data = json.loads((model_dir / MANIFEST).read_text())
    return ModelEntry(**data)


def verify(model_dir: Path) -> ModelEntry:
    """Check every listed file's sha256 and that no unlisted file is present; raise
    ChecksumError naming the first problem."""
    entry = read_manifest(model_dir)
    present = {p.relative_to(model_dir).as_posix() for p in _model_files(model_dir)}
    unlisted = sorted(present - entry.files.keys())
    if unlisted:
        raise ChecksumError(f"{model_dir}: files not in {MANIFEST}: {unlisted}")
    for name, expected in sorted(entry.files.items()):
        path = model_dir / name
        if not path.is_file():
            raise ChecksumError(f"{model_dir}: {name} is listed in {MANIFEST} but missing")
        actual = sha256_file(path)
        if actual != expected:
            raise ChecksumError(
                f"{model_dir}: {name} has sha256 {actual}, {MANIFEST} says {expected}; "
                "re-run the training or restore the file from git"
            )
    return entry


def load_pipeline(model_dir: Path | str = DEFAULT_MODEL_DIR, device: str = "cpu") -> Any:
    """Verify ``model_dir`` then load it as a StableDiffusionPipeline, offline."""
    model_dir = Path(model_dir)
    verify(model_dir)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(
        model_dir,
        safety_checker=None,
        requires_safety_checker=False,
        local_files_only=True,
        dtype=torch.float32,  # weights are stored as float16; compute in float32 on CPU
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)

"""The model registry: a model's ``model.json`` and a loader that trusts nothing unchecked.

Every model folder under the worker's ``models_dir`` holds a ``model.json`` beside its diffusers
folders, recording what the platform needs to route and load it like any other::

    {"id": "shapes-demo", "family": "sd15", "pipeline": "StableDiffusionPipeline",
     "default_size": 64, "default_steps": 25, "default_guidance": 5.0,
     "preview": {"kind": "layout", "background": [0, 1, 2], "presence": 3, "color": [4, 5, 6]},
     "files": {"unet/diffusion_pytorch_model.safetensors": "<sha256>", ...},
     "kind": "base", "tier": 1, "samplers": ["ddim", "euler", ...], "created": 1764547200,
     "components": {"unet": 8452776, "vae": 5304847, "text_encoder": 394977, ...}}

``kind`` (what the folder registers: a ``base`` model), ``tier`` (its warm-pool tier: 1 pinned
warm, 2 kept by priority, 3 loaded on demand; ADR 0701), ``samplers`` (the sampler names that
run on this model: its family's table in ``domain/samplers.py``, less any this model cannot
run), ``created`` (a unix time, fixed by the writer so rebuilt models are byte-identical) and
``components`` (bytes of each component folder's files, computed by :func:`write_manifest`) are
read by the API's catalog; the worker reads ``family`` (:func:`families` announces the
registered ones in its heartbeats).

:func:`verify` recomputes every sha256 (and refuses files the manifest does not list) before
anything is deserialised; :func:`open_pipeline` then loads with the hub switched off. Every
model the worker loads goes through both (``DiffusersRunner.load``); the demo tooling
(``tools/demo-model``) writes manifests and loads its model through this module too.

``preview`` (optional) says how a step preview paints latents without the VAE
(``diffusers_runner.preview_png_b64``): ``{"kind": "linear", "latent_rgb": [[r, g, b], ...]}``
(one row per latent channel) or ``{"kind": "layout", "background": [...], "presence": c,
"color": [...]}`` (a designed layout map: the background's RGB channels, blended with the
object's by the presence channel). Without it, 4-channel latents use Stable Diffusion's linear
factors and any other latents show their first three channels.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

from ..domain.run import ModelNotRegistered, ModelUnavailable
from .ml import diffusers_class, torch_module  # never a bare ``import diffusers`` (see ml.py)

log = logging.getLogger(__name__)

MANIFEST = "model.json"

# Pipeline class per model family (the ``family`` of model.json).
FAMILIES = {
    "sd15": "StableDiffusionPipeline",
    "sdxl": "StableDiffusionXLPipeline",
    "sd3": "StableDiffusion3Pipeline",
    "flux": "FluxPipeline",
}
# Keyword arguments each family's pipeline is opened with, beside local_files_only and dtype:
# the SD 1.x safety checker and the SDXL watermarker would need hub weights / extra packages.
OPEN_KWARGS: dict[str, dict[str, Any]] = {
    "sd15": {"safety_checker": None, "requires_safety_checker": False},
    "sdxl": {"add_watermarker": False},
    "sd3": {},
    "flux": {},
}


@dataclass(frozen=True)
class ModelEntry:
    id: str  # the model id jobs name ("shapes-demo")
    family: str  # pipeline family the worker routes on ("sd15" = StableDiffusionPipeline)
    pipeline: str  # diffusers pipeline class name
    default_size: int  # square image side, in pixels, the model was trained at
    default_steps: int  # denoising steps the model's documented figures use
    default_guidance: float  # classifier-free guidance scale the figures use
    files: dict[str, str]  # path relative to the model folder -> sha256 hex digest
    # How previews paint the latents (see the module docstring); None: the fallback.
    preview: dict[str, Any] | None = None
    kind: str = "base"  # what the folder registers (only base models today)
    tier: int = 2  # warm-pool tier: 1 pinned, 2 kept by priority, 3 loaded on demand
    samplers: tuple[str, ...] = ()  # sampler names that run on this model; () = not recorded
    created: int | None = None  # unix time the model was made (fixed by reproducible builders)
    # Bytes of each component folder's files ("unet", "vae", ...); written by write_manifest.
    components: dict[str, int] | None = None


class ChecksumError(ModelUnavailable):
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


def write_manifest(
    model_dir: Path,
    *,
    id: str,
    family: str = "sd15",
    pipeline: str | None = None,
    default_size: int = 64,
    default_steps: int = 25,
    default_guidance: float = 5.0,
    preview: dict[str, Any] | None = None,
    kind: str = "base",
    tier: int = 2,
    samplers: tuple[str, ...] | list[str] = (),
    created: int | None = None,
) -> ModelEntry:
    """Hash every file under ``model_dir``, make them world-readable, write ``model.json``
    (with ``components``: the bytes of each component folder's files)."""
    files = {}
    components: dict[str, int] = {}
    for path in _model_files(model_dir):
        path.chmod(0o644)  # safetensors writes 0600; the worker may run as another user
        name = path.relative_to(model_dir).as_posix()
        files[name] = sha256_file(path)
        if "/" in name:
            part = name.split("/", 1)[0]
            components[part] = components.get(part, 0) + path.stat().st_size
    entry = ModelEntry(
        id=id,
        family=family,
        pipeline=pipeline or FAMILIES[family],
        default_size=default_size,
        default_steps=default_steps,
        default_guidance=default_guidance,
        files=files,
        preview=preview,
        kind=kind,
        tier=tier,
        samplers=tuple(samplers),
        created=created,
        components=components,
    )
    doc = {k: v for k, v in asdict(entry).items() if v is not None}
    if not doc["samplers"]:
        del doc["samplers"]  # not recorded: readers fall back to the family's defaults
    else:
        doc["samplers"] = list(doc["samplers"])
    manifest = model_dir / MANIFEST
    manifest.write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
    manifest.chmod(0o644)
    return entry


def read_manifest(model_dir: Path) -> ModelEntry:
    """The manifest's entry; keys this code does not know are ignored (a newer manifest)."""
    try:
        data = json.loads((model_dir / MANIFEST).read_text())
    except FileNotFoundError as exc:
        raise ModelNotRegistered(
            f"{model_dir.name!r} is not registered on this worker: no {model_dir / MANIFEST}"
        ) from exc
    known = {f.name for f in fields(ModelEntry)}
    entry = ModelEntry(**{k: v for k, v in data.items() if k in known})
    if not isinstance(entry.samplers, tuple):
        entry = replace(entry, samplers=tuple(entry.samplers))
    return entry


def families(models_dir: Path) -> tuple[str, ...]:
    """The families (sorted, once each) of the models registered under ``models_dir``: every
    folder with a readable ``model.json`` whose family this worker can open. Files are not
    hashed here (:func:`verify` does that before a model is loaded)."""
    found = set()
    for manifest in sorted(Path(models_dir).glob(f"*/{MANIFEST}")):
        try:
            entry = read_manifest(manifest.parent)
        except (ModelUnavailable, ValueError, TypeError) as exc:  # not JSON, fields missing
            log.warning(
                "model folder skipped: unreadable manifest",
                extra={"model_dir": str(manifest.parent), "error": repr(exc)},
            )
            continue
        if entry.kind == "base" and entry.family in FAMILIES:
            found.add(entry.family)
    return tuple(sorted(found))


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


def open_pipeline(model_dir: Path, entry: ModelEntry, device: str = "cpu") -> Any:
    """Load a model :func:`verify` has just checked, offline, as its family's pipeline.

    Off CUDA the weights are computed in float32 (they may be stored as float16, as the demo
    model's are); on CUDA they keep the dtype diffusers gives them.
    """
    torch = torch_module()
    kwargs: dict[str, Any] = {"local_files_only": True}
    if not str(device).startswith("cuda"):
        kwargs["dtype"] = torch.float32
    kwargs.update(OPEN_KWARGS.get(entry.family, {}))
    pipe = diffusers_class(FAMILIES[entry.family]).from_pretrained(model_dir, **kwargs)
    pipe = pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def load_pipeline(model_dir: Path, device: str = "cpu") -> Any:
    """Verify ``model_dir``, then load it (:func:`verify`, then :func:`open_pipeline`)."""
    model_dir = Path(model_dir)
    return open_pipeline(model_dir, verify(model_dir), device)

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

Real checkpoints (``imagegen models register``, ``src/imagegen/models.py``; docs/models.md): the
folder's files may be symlinks (into a diffusers folder or a hub cache snapshot), hashed and
checked through their links and never chmodded; a single-file checkpoint records
``single_file`` (its name in the folder) and ``single_file_config`` (the folder of copied configs
and tokenizers it is opened with, by the pipeline class's ``from_single_file``).

Nothing is deserialised before its files are checked against the manifest (and files the
manifest does not list are refused); :func:`open_pipeline` then loads with the hub switched off.
Every model the worker loads goes through :meth:`Integrity.verify` and :func:`open_pipeline`
(``DiffusersRunner.load``); the demo tooling (``tools/demo-model``) writes manifests and loads
its model through this module too (:func:`load_pipeline`: :func:`verify`, every sha256).

Integrity (ADR 0707): :class:`Integrity` is what the worker checks with. A file is hashed once
(at the first load on a worker, or by the periodic check) and its size, mtime and sha256 are kept
in a :class:`TrustStore` (in memory, and as one JSON file per model folder in the worker's
``integrity_dir``, never inside the model folder); a later load trusts a file whose size and
mtime still equal its record and hashes any other (:meth:`Integrity.verify`).
:meth:`Integrity.full_check` hashes every file whatever the record says (the periodic check).
A file that does not match its manifest raises :class:`Corrupted` (one :class:`Mismatch` per
file); :meth:`Integrity.repair` copies those files again from the manifest's ``source`` (a
folder holding a pristine copy under the same relative names: another copy of the model, a hub
cache snapshot; absolute, or relative to the model folder) and checks each copy's sha256 before
it replaces the bad file, or raises :class:`RepairFailed` saying why not. :func:`verify` (every
file hashed, no record kept) stays the check for tools and tests.

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
import os
import shutil
import threading
import uuid
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from ..domain.run import ModelNotRegistered, ModelUnavailable
from .ml import diffusers_class, torch_module  # never a bare ``import diffusers`` (see ml.py)

log = logging.getLogger(__name__)

MANIFEST = "model.json"
REPAIR_PREFIX = ".repair-"  # a repair's temporary copy beside the file it replaces
TRUST_FORMAT = 1  # version of a trust record file

# Called with the bytes of every block read while hashing (the periodic check paces itself).
Pace = Callable[[int], None]

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
    # Where a pristine copy of the folder is (the same relative file names), for repairs
    # (ADR 0707): absolute, or relative to the model folder; None: nothing to repair from.
    source: str | None = None
    # What a ``kind: "controlnet"`` folder conditions on ("canny", "depth", ...; ADR 0706).
    controlnet_type: str | None = None
    # A single-file checkpoint (``imagegen models register --path x.safetensors``): the file's
    # path relative to the model folder, and the folder (relative too) of the diffusers configs
    # and tokenizers it is opened with (:func:`open_pipeline`); None: a diffusers folder.
    single_file: str | None = None
    single_file_config: str | None = None


class ChecksumError(ModelUnavailable):
    """A model file is missing, unlisted, or does not match its recorded sha256."""


@dataclass(frozen=True)
class Mismatch:
    file: str  # path relative to the model folder
    expected: str  # the manifest's sha256
    actual: str  # the file's sha256 now; "" when the file is missing


class Corrupted(ChecksumError):
    """Listed files are missing or do not match their sha256 (``mismatches``, by name)."""

    def __init__(self, model_dir: Path, mismatches: Iterable[Mismatch]) -> None:
        self.model_dir = model_dir
        self.mismatches = tuple(mismatches)
        first = self.mismatches[0]
        if first.actual:
            what = f"{first.file} has sha256 {first.actual}, {MANIFEST} says {first.expected}"
        else:
            what = f"{first.file} is listed in {MANIFEST} but missing"
        more = len(self.mismatches) - 1
        super().__init__(f"{model_dir}: {what}" + (f" (and {more} more files)" if more else ""))


class RepairFailed(ChecksumError):
    """A corrupted model could not be repaired: no ``source`` recorded, the source lacks a file,
    or the copy does not match the manifest either."""


def sha256_file(path: Path, pace: Pace | None = None) -> str:
    """The file's sha256, read in 1 MiB blocks (``pace`` is called with each block's size)."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
            if pace is not None:
                pace(len(block))
    return digest.hexdigest()


def _model_files(model_dir: Path) -> list[Path]:
    return sorted(
        p
        for p in model_dir.rglob("*")
        if p.is_file()
        and p.name != MANIFEST
        and p.name != ".gitattributes"
        and not p.name.startswith(REPAIR_PREFIX)
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
    source: str | None = None,
    controlnet_type: str | None = None,
    single_file: str | None = None,
    single_file_config: str | None = None,
) -> ModelEntry:
    """Hash every file under ``model_dir``, make them world-readable, write ``model.json``
    (with ``components``: the bytes of each component folder's files). A symlinked file is
    hashed through its link and left as its owner made it (not chmodded: it may be another
    user's hub cache)."""
    files = {}
    components: dict[str, int] = {}
    for path in _model_files(model_dir):
        if not path.is_symlink():
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
        source=source,
        controlnet_type=controlnet_type,
        single_file=single_file,
        single_file_config=single_file_config,
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
    """Check every listed file's sha256 (all hashed, no trust record kept) and that no unlisted
    file is present; raise ChecksumError (:class:`Corrupted` for bad or missing files) naming
    the first problem."""
    return Integrity().full_check(Path(model_dir))


def _refuse_unlisted(model_dir: Path, entry: ModelEntry) -> None:
    present = {p.relative_to(model_dir).as_posix() for p in _model_files(model_dir)}
    unlisted = sorted(present - entry.files.keys())
    if unlisted:
        raise ChecksumError(f"{model_dir}: files not in {MANIFEST}: {unlisted}")


def source_dir(model_dir: Path, entry: ModelEntry) -> Path | None:
    """The folder ``entry.source`` names (relative paths against ``model_dir``), or None."""
    if not entry.source:
        return None
    return (model_dir / entry.source).resolve()


@dataclass(frozen=True)
class Stamp:
    """What a file was when it was hashed and matched its manifest."""

    size: int
    mtime_ns: int
    sha256: str


class TrustStore:
    """Per model folder, the :class:`Stamp` of each file last hashed good: in memory, and, with
    ``directory``, in ``<directory>/<folder name>-<hash of its path>.json`` (written atomically),
    so a restarted worker trusts what it verified before. A record that cannot be written is
    kept in memory only (logged)."""

    def __init__(self, directory: Path | None = None) -> None:
        self.directory = directory
        self._lock = threading.Lock()
        self._records: dict[Path, dict[str, Stamp]] = {}

    def _file(self, folder: Path) -> Path:
        assert self.directory is not None
        key = hashlib.sha256(str(folder).encode()).hexdigest()[:16]
        return self.directory / f"{folder.name}-{key}.json"

    def _read(self, folder: Path) -> dict[str, Stamp]:
        if self.directory is None:
            return {}
        path = self._file(folder)
        try:
            doc = json.loads(path.read_text())
            if doc["format"] != TRUST_FORMAT or doc["folder"] != str(folder):
                return {}
            return {
                str(name): Stamp(int(size), int(mtime_ns), str(sha))
                for name, (size, mtime_ns, sha) in doc["files"].items()
            }
        except FileNotFoundError:
            return {}
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            log.warning("trust record ignored", extra={"path": str(path), "error": repr(exc)})
            return {}

    def stamps(self, model_dir: Path) -> dict[str, Stamp]:
        """The records of ``model_dir``'s files (a copy)."""
        folder = Path(model_dir).resolve()
        with self._lock:
            if folder not in self._records:
                self._records[folder] = self._read(folder)
            return dict(self._records[folder])

    def update(self, model_dir: Path, good: dict[str, Stamp], drop: Iterable[str] = ()) -> None:
        """Record ``good`` files and forget ``drop`` ones; written through when it changed."""
        folder = Path(model_dir).resolve()
        with self._lock:
            if folder not in self._records:
                self._records[folder] = self._read(folder)
            record = self._records[folder]
            before = dict(record)
            record.update(good)
            for name in drop:
                record.pop(name, None)
            if record == before or self.directory is None:
                return
            doc = {
                "format": TRUST_FORMAT,
                "folder": str(folder),
                "files": {n: [s.size, s.mtime_ns, s.sha256] for n, s in sorted(record.items())},
            }
            path = self._file(folder)
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}")
                tmp.write_text(json.dumps(doc, indent=1) + "\n")
                os.replace(tmp, path)
            except OSError as exc:
                log.warning(
                    "trust record not written; kept in memory",
                    extra={"path": str(path), "error": repr(exc)},
                )


@dataclass
class Integrity:
    """Model file integrity (ADR 0707): checks against the manifest, trusting a file whose size
    and mtime equal its :class:`TrustStore` record, and repairs from the manifest's ``source``.
    ``hasher`` (``sha256_file``'s signature) is injectable so tests can count what is read."""

    trust: TrustStore = field(default_factory=TrustStore)
    hasher: Callable[[Path, Pace | None], str] = sha256_file

    def verify(self, model_dir: Path) -> ModelEntry:
        """A load's check: every listed file present, none unlisted; a file whose size and mtime
        equal its record (made when it last hashed to the manifest's sha256) is trusted, any
        other is hashed. Raises :class:`Corrupted` (every bad file) or ChecksumError."""
        return self._check(Path(model_dir), trusting=True, pace=None)

    def full_check(self, model_dir: Path, pace: Pace | None = None) -> ModelEntry:
        """:meth:`verify` with every file hashed whatever its record says (``pace`` is called
        with each block read)."""
        return self._check(Path(model_dir), trusting=False, pace=pace)

    def _check(self, model_dir: Path, *, trusting: bool, pace: Pace | None) -> ModelEntry:
        entry = read_manifest(model_dir)
        _refuse_unlisted(model_dir, entry)
        stamps = self.trust.stamps(model_dir)
        good: dict[str, Stamp] = {}
        bad: list[Mismatch] = []
        for name, expected in sorted(entry.files.items()):
            path = model_dir / name
            try:
                before = path.stat()
            except FileNotFoundError:
                bad.append(Mismatch(name, expected, ""))
                continue
            if not path.is_file():
                bad.append(Mismatch(name, expected, ""))
                continue
            now = Stamp(before.st_size, before.st_mtime_ns, expected)
            if trusting and stamps.get(name) == now:
                continue
            actual = self.hasher(path, pace)
            if actual != expected:
                bad.append(Mismatch(name, expected, actual))
                continue
            after = path.stat()
            if (after.st_size, after.st_mtime_ns) == (now.size, now.mtime_ns):
                good[name] = now  # not rewritten while it was hashed
        self.trust.update(model_dir, good, drop=[m.file for m in bad])
        if bad:
            raise Corrupted(model_dir, bad)
        return entry

    def repair(self, model_dir: Path, corrupted: Corrupted) -> None:
        """Copy each of ``corrupted``'s files from the manifest's ``source`` to a temporary file
        beside it, hash the copy, and move it over the bad file only if it matches the
        manifest (its record then kept); raise :class:`RepairFailed` naming why a file could not
        be repaired (no source recorded, the source lacks it, the copy does not match)."""
        model_dir = Path(model_dir)
        entry = read_manifest(model_dir)
        source = source_dir(model_dir, entry)
        if source is None:
            raise RepairFailed(
                f"{corrupted}; not repaired: {MANIFEST} records no 'source' to copy it from"
            )
        for mismatch in corrupted.mismatches:
            name = mismatch.file
            expected = entry.files[name]
            origin = source / name
            if not origin.is_file():
                raise RepairFailed(f"{corrupted}; not repaired: the source {origin} does not exist")
            target = model_dir / name
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(f"{REPAIR_PREFIX}{uuid.uuid4().hex}-{target.name}")
            try:
                shutil.copyfile(origin, tmp)
                tmp.chmod(0o644)
                actual = self.hasher(tmp, None)
                if actual != expected:
                    raise RepairFailed(
                        f"{corrupted}; not repaired: the copy from {origin} has sha256 "
                        f"{actual}, {MANIFEST} says {expected}"
                    )
                os.replace(tmp, target)
            finally:
                tmp.unlink(missing_ok=True)
            st = target.stat()
            self.trust.update(model_dir, {name: Stamp(st.st_size, st.st_mtime_ns, expected)})
            log.info(
                "model file repaired from its source",
                extra={"model_dir": str(model_dir), "file": name, "source": str(origin)},
            )


def registered(models_dir: Path) -> list[str]:
    """The ids (folder names) of every folder under ``models_dir`` with a ``model.json``, sorted:
    base models, LoRAs, any kind."""
    return sorted(m.parent.name for m in Path(models_dir).glob(f"*/{MANIFEST}"))


def open_pipeline(
    model_dir: Path, entry: ModelEntry, device: str = "cpu", dtype: str | None = None
) -> Any:
    """Load a model :func:`verify` has just checked, offline, as its family's pipeline.

    ``dtype`` (a torch dtype's name: ``"float16"``) is what the weights are loaded as; None:
    float32 off CUDA (they may be stored as float16, as the demo model's are), diffusers' own
    choice on CUDA. The worker passes its accelerator plan's (``adapters/accel.py``, ADR 0709).
    """
    torch = torch_module()
    kwargs: dict[str, Any] = {"local_files_only": True}
    if dtype is not None:
        kwargs["dtype"] = getattr(torch, dtype)
    elif not str(device).startswith("cuda"):
        kwargs["dtype"] = torch.float32
    kwargs.update(OPEN_KWARGS.get(entry.family, {}))
    cls = diffusers_class(FAMILIES[entry.family])
    if entry.single_file:
        # A single-file checkpoint: its configs and tokenizers come from the folder registered
        # beside it (checked like every other file), so nothing is fetched from the hub.
        config = model_dir / (entry.single_file_config or "config")
        pipe = cls.from_single_file(
            str(model_dir / entry.single_file), config=str(config), **kwargs
        )
    else:
        pipe = cls.from_pretrained(model_dir, **kwargs)
    pipe = pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def load_pipeline(model_dir: Path, device: str = "cpu") -> Any:
    """Verify ``model_dir``, then load it (:func:`verify`, then :func:`open_pipeline`)."""
    model_dir = Path(model_dir)
    return open_pipeline(model_dir, verify(model_dir), device)

"""``imagegen models register``: put a real checkpoint in the worker's model registry.

    imagegen models register --id ID --family {sd15,sdxl,sd3,flux} [--tier 1|2|3]
        (--path PATH | --hub REPO_ID [--hub-cache DIR] [--revision REV])
        [--config DIR] [--copy] [--force] [--models-dir models]

``PATH`` is a diffusers folder (it has ``model_index.json``) or a single ``.safetensors``
checkpoint (then ``--config`` names a diffusers folder of the same architecture, whose configs
and tokenizers it is opened with). ``--hub`` finds the repository's snapshot in the local
Hugging Face hub cache (``--hub-cache``, else ``$HF_HUB_CACHE``, else ``$HF_HOME/hub``, else
``~/.cache/huggingface/hub``), with no network access, and registers it as ``--path``.

``models/ID/`` is made holding a symlink to each file the pipeline loads (``--copy``: a copy),
and ``model.json`` is written with every file's sha256 (hashed once, here: ADR 0707), the
family's pipeline class and samplers, the tier, the components' sizes and ``source`` (the
original folder, which repairs copy from). See docs/models.md.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Square size, steps and guidance each family's documented base checkpoints use by default.
FAMILY_DEFAULTS: dict[str, tuple[int, int, float]] = {
    "sd15": (512, 30, 7.5),
    "sdxl": (1024, 30, 5.0),
    "sd3": (1024, 28, 7.0),
    "flux": (1024, 28, 3.5),
}
# Weight formats the worker never loads (pickles, other runtimes): left out of the model folder.
SKIPPED_SUFFIXES = frozenset(
    {".bin", ".ckpt", ".pt", ".pth", ".msgpack", ".onnx", ".onnx_data", ".h5", ".pb", ".xml"}
)
# ``name.<variant>.safetensors`` / sharded ``name.<variant>-00001-of-00002.safetensors`` /
# ``name.safetensors.index.<variant>.json``: diffusers' weight variants (fp16, ...).
VARIANT = re.compile(
    r"^[^.]+\.[A-Za-z0-9_]+(-\d{5}-of-\d{5})?\.safetensors$|^[^.]+\.safetensors\.index\.\w+\.json$"
)
MODEL_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
CONFIG_DIR = "config"  # where a single-file checkpoint's configs are copied, in its model folder


class RegisterError(ValueError):
    """Bad input to ``models register``; the message is the one line the operator sees."""


@dataclass(frozen=True)
class Source:
    """What is registered: a diffusers folder, or a single file with its config folder."""

    root: Path  # the diffusers folder, or the single file's folder
    files: tuple[str, ...]  # paths relative to ``root`` that go into the model folder
    single_file: str | None = None
    config: Path | None = None  # the single file's diffusers config folder
    config_files: tuple[str, ...] = ()  # relative to ``config``: copied to the model's config/


def hub_cache_dir(explicit: str | None = None) -> Path:
    """The hub cache folder: ``explicit``, else $HF_HUB_CACHE, else $HF_HOME/hub, else
    ~/.cache/huggingface/hub (huggingface_hub's own order)."""
    if explicit:
        return Path(explicit).expanduser()
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    home = os.environ.get("HF_HOME") or str(Path("~/.cache/huggingface").expanduser())
    return Path(home).expanduser() / "hub"


def hub_snapshot(repo_id: str, cache: Path, revision: str | None = None) -> Path:
    """The snapshot folder of ``repo_id`` at ``revision`` (a commit hash, or a ref such as
    ``main`` read from ``refs/``; default ``main``) in the hub cache ``cache``, offline."""
    if repo_id.count("/") != 1 or not all(repo_id.split("/")):
        raise RegisterError(f"--hub {repo_id!r}: expected a repository id 'org/name'")
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    if not repo.is_dir():
        raise RegisterError(f"--hub {repo_id}: not in the hub cache (no folder {repo})")
    rev = revision or "main"
    ref = repo / "refs" / rev
    commit = ref.read_text().strip() if ref.is_file() else rev
    snapshot = repo / "snapshots" / commit
    if not snapshot.is_dir():
        what = f"refs/{rev} points at {commit}, but" if ref.is_file() else "no ref of that name and"
        raise RegisterError(
            f"--hub {repo_id} --revision {rev}: {what} there is no snapshot folder {snapshot}"
        )
    return snapshot


def _model_index(folder: Path) -> dict[str, Any]:
    try:
        doc = json.loads((folder / "model_index.json").read_text())
    except (OSError, ValueError) as exc:
        raise RegisterError(f"{folder / 'model_index.json'}: unreadable ({exc})") from exc
    if not isinstance(doc, dict):
        raise RegisterError(f"{folder / 'model_index.json'}: not a JSON object")
    return doc


def _check_class(folder: Path, family: str, pipeline: str) -> dict[str, Any]:
    index = _model_index(folder)
    name = index.get("_class_name")
    if name != pipeline:
        raise RegisterError(
            f"{folder / 'model_index.json'} names {name!r}; --family {family} needs {pipeline!r}"
        )
    return index


def _components(index: dict[str, Any], family: str, skipped: dict[str, Any]) -> list[str]:
    """The component folders the family's pipeline loads: those model_index.json names with a
    class, less those the worker opens as None (the SD 1.x safety checker)."""
    return sorted(
        name
        for name, value in index.items()
        if not name.startswith("_")
        and isinstance(value, list)
        and len(value) == 2
        and value[1] is not None
        and not (name in skipped and skipped[name] is None)
    )


def _component_files(folder: Path, component: str, *, weights: bool) -> list[str]:
    """A component folder's files (relative to ``folder``): safetensors weights (with
    ``weights``; a variant such as ``*.fp16.safetensors`` only when no plain file exists, and then
    refused), configs and tokenizer files; never another weight format."""
    base = folder / component
    if not base.is_dir():
        raise RegisterError(f"{folder}: model_index.json names {component!r}, no folder {base}")
    found = sorted(
        p.relative_to(folder).as_posix()
        for p in base.rglob("*")
        if p.is_file() and p.suffix not in SKIPPED_SUFFIXES and not p.name.startswith(".")
    )
    names = [f.rsplit("/", 1)[-1] for f in found]
    plain = [n for n in names if n.endswith(".safetensors") and not VARIANT.match(n)]
    variants = [n for n in names if VARIANT.match(n)]
    if not weights:
        return [f for f, n in zip(found, names, strict=True) if not n.endswith(".safetensors")]
    if variants and not plain:
        raise RegisterError(
            f"{base}: only variant weights ({', '.join(variants)}); register a folder with the "
            f"plain '*.safetensors' files (weight variants are not supported)"
        )
    return [f for f, n in zip(found, names, strict=True) if n not in variants]


def inspect(path: Path, family: str, config: Path | None) -> Source:
    """What ``path`` holds for ``family``: a diffusers folder or a single ``.safetensors`` file
    (with ``config``); RegisterError naming the problem otherwise."""
    from imagegen_gpu_worker.adapters.registry import FAMILIES, OPEN_KWARGS

    pipeline = FAMILIES[family]
    skipped = OPEN_KWARGS.get(family, {})
    if path.is_dir():
        if config is not None:
            raise RegisterError("--config is for a single-file checkpoint; --path is a folder")
        if not (path / "model_index.json").is_file():
            raise RegisterError(
                f"--path {path}: not a diffusers folder (no model_index.json) "
                f"nor a .safetensors file"
            )
        index = _check_class(path, family, pipeline)
        files = ["model_index.json"]
        for component in _components(index, family, skipped):
            files += _component_files(path, component, weights=True)
        return Source(root=path.resolve(), files=tuple(files))
    if path.is_file() and path.suffix == ".safetensors":
        if config is None:
            raise RegisterError(
                f"--path {path} is a single-file checkpoint: --config DIR must name a diffusers "
                f"folder of the same architecture (its configs and tokenizers are used)"
            )
        if not (config / "model_index.json").is_file():
            raise RegisterError(f"--config {config}: not a diffusers folder (no model_index.json)")
        index = _check_class(config, family, pipeline)
        configs = ["model_index.json"]
        for component in _components(index, family, skipped):
            configs += _component_files(config, component, weights=False)
        return Source(
            root=path.resolve().parent,
            files=(path.name,),
            single_file=path.name,
            config=config.resolve(),
            config_files=tuple(configs),
        )
    if not path.exists():
        raise RegisterError(f"--path {path}: does not exist")
    raise RegisterError(
        f"--path {path}: not a diffusers folder (no model_index.json) nor a .safetensors file"
    )


def _place(origin: Path, target: Path, copy: bool) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    if copy:
        shutil.copyfile(origin, target)
    else:
        target.symlink_to(origin)


def register(
    models_dir: Path,
    *,
    id: str,
    family: str,
    path: Path,
    tier: int = 2,
    kind: str = "base",
    config: Path | None = None,
    copy: bool = False,
    force: bool = False,
    size: int | None = None,
    steps: int | None = None,
    guidance: float | None = None,
) -> Any:
    """Register ``path`` (see the module docstring) as ``models_dir/id``; returns the written
    :class:`ModelEntry`. Raises RegisterError on bad input, before anything is written."""
    from imagegen_gpu_worker.adapters.registry import FAMILIES, write_manifest
    from imagegen_gpu_worker.domain.samplers import SAMPLERS

    if not MODEL_ID.match(id):
        raise RegisterError(
            f"--id {id!r}: letters, digits, '.', '_' and '-' only, starting with a letter or digit"
        )
    if family not in FAMILIES:
        raise RegisterError(f"--family {family!r}: one of {', '.join(sorted(FAMILIES))}")
    if tier not in (1, 2, 3):
        raise RegisterError(f"--tier {tier}: 1, 2 or 3")
    if kind != "base":
        raise RegisterError(f"--kind {kind!r}: only 'base' models are registered this way")
    models_dir = Path(models_dir)
    final = models_dir / id
    if (final.exists() or final.is_symlink()) and not force:
        raise RegisterError(f"--id {id}: {final} already exists (--force replaces it)")
    source = inspect(Path(path).expanduser(), family, config)
    d_size, d_steps, d_guidance = FAMILY_DEFAULTS[family]

    models_dir.mkdir(parents=True, exist_ok=True)
    staging = models_dir / f".register-{id}-{uuid.uuid4().hex[:8]}"
    staging.mkdir()
    try:
        for name in source.files:
            _place(source.root / name, staging / name, copy)
        if source.config is not None:  # the configs are small: always copied, and hashed
            for name in source.config_files:
                _place(source.config / name, staging / CONFIG_DIR / name, True)
        if final.exists() or final.is_symlink():
            if final.is_symlink() or not final.is_dir():
                final.unlink()
            else:
                shutil.rmtree(final)  # symlinks are removed, never what they point at
        os.replace(staging, final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return write_manifest(
        final,
        id=id,
        family=family,
        default_size=size or d_size,
        default_steps=steps or d_steps,
        default_guidance=d_guidance if guidance is None else guidance,
        kind=kind,
        tier=tier,
        samplers=sorted(SAMPLERS[family]),
        created=int(time.time()),
        source=str(source.root),
        single_file=source.single_file,
        single_file_config=CONFIG_DIR if source.single_file else None,
    )


def cmd_register(args: argparse.Namespace) -> int:
    """``imagegen models register``: 0 and a summary on stdout; 2 and one line on stderr for bad
    input."""
    try:
        if args.hub:
            path = hub_snapshot(args.hub, hub_cache_dir(args.hub_cache), args.revision)
        else:
            path = Path(args.path)
            if args.hub_cache or args.revision:
                raise RegisterError("--hub-cache and --revision go with --hub, not --path")
        entry = register(
            Path(args.models_dir),
            id=args.id,
            family=args.family,
            path=path,
            tier=args.tier,
            kind=args.kind,
            config=Path(args.config).expanduser() if args.config else None,
            copy=args.copy,
            force=args.force,
            size=args.size,
            steps=args.steps,
            guidance=args.guidance,
        )
    except RegisterError as exc:
        print(f"imagegen models register: error: {exc}", file=sys.stderr)
        return 2
    folder = Path(args.models_dir) / entry.id
    weight = sum((folder / name).stat().st_size for name in entry.files)
    what = f"single file {entry.single_file}" if entry.single_file else "diffusers folder"
    how = "copied" if args.copy else "symlinked"
    print(
        f"registered {entry.id}: {entry.family} ({entry.pipeline}), tier {entry.tier}, {what}, "
        f"{len(entry.files)} files, {weight / 2**20:.1f} MiB, {how} from {entry.source}; "
        f"manifest {folder / 'model.json'}"
    )
    return 0


def add_parser(sub: Any) -> None:
    """The ``models`` subcommand on the ``imagegen`` parser's subparsers."""
    from imagegen_gpu_worker.domain.samplers import FAMILIES  # pure: no torch at parse time

    models = sub.add_parser("models", help="the worker's model registry: register a checkpoint")
    actions = models.add_subparsers(dest="action", required=True)
    reg = actions.add_parser(
        "register",
        help="register a diffusers folder or single .safetensors (path or hub cache)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    reg.add_argument("--id", required=True, help="the model id jobs name (the folder name)")
    reg.add_argument("--family", required=True, choices=sorted(FAMILIES))
    reg.add_argument("--tier", type=int, choices=[1, 2, 3], default=2, help="warm-pool tier")
    reg.add_argument("--kind", choices=["base"], default="base")
    where = reg.add_mutually_exclusive_group(required=True)
    where.add_argument("--path", help="a diffusers folder or a single .safetensors checkpoint")
    where.add_argument("--hub", metavar="REPO_ID", help="a repository in the local hub cache")
    reg.add_argument("--hub-cache", default=None, help="default: $HF_HUB_CACHE or $HF_HOME/hub")
    reg.add_argument("--revision", default=None, help="a ref or commit in the hub cache (main)")
    reg.add_argument(
        "--config", default=None, help="a single file's diffusers config folder (same model)"
    )
    reg.add_argument(
        "--copy", action="store_true", help="copy the files (default: symlink to them)"
    )
    reg.add_argument("--force", action="store_true", help="replace an existing model folder")
    reg.add_argument("--models-dir", default="models", help="the worker's models folder")
    reg.add_argument("--size", type=int, default=None, help="default image side (family's)")
    reg.add_argument("--steps", type=int, default=None, help="default steps (family's)")
    reg.add_argument("--guidance", type=float, default=None, help="default guidance (family's)")
    reg.set_defaults(func=cmd_register)

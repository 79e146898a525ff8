"""ControlNets on the worker (ADR 0706): find, load, and run a base model with them.

A plan's ``controlnets`` name a ControlNet **type** ("canny") and a control image (a file id,
``file-<first 32 hex digits of its sha256>``, that the API stored in the shared files folder).
This module:

- finds the registered ControlNet of that type for the model's family: a folder under
  ``models_dir`` whose ``model.json`` says ``kind: "controlnet"``, the ``family`` and the
  ``controlnet_type`` (the first by id when several match; none: :class:`ControlNetUnavailable`);
- loads it once (the runner's integrity check, ADR 0707, then ``from_pretrained`` offline, in
  the base model's dtype, on the run's device); the runner keeps it while it fits its memory
  budget and a model of its family is resident (``DiffusersRunner``, ADR 0706/0708);
- reads the control image from the files folder, checks that its bytes hash to its id and
  decodes it (missing, altered or undecodable: :class:`ControlImageUnavailable`);
- preprocesses it for the type (:mod:`.control_preprocess`);
- builds the family's ControlNet pipeline around the base pipeline's own components (nothing is
  copied or cast: ``from_pipe`` is not used because it casts every shared module to float32),
  with one net, or a list of nets (diffusers' multi-ControlNet), each with its weight
  (``controlnet_conditioning_scale``) and window (``control_guidance_start``/``end``).

Every failure is a :class:`~imagegen_gpu_worker.domain.run.ModelUnavailable`: the attempt fails
with ``model_unavailable`` and a message naming the net or the file.
"""

from __future__ import annotations

import hashlib
import inspect
import io
import logging
import re
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from PIL import Image

from ..domain.plan import ControlNetUse
from ..domain.run import ModelUnavailable
from . import registry
from .control_preprocess import prepare
from .ml import diffusers_class

log = logging.getLogger(__name__)

# The family's ControlNet pipeline, the model classes its manifest may name, and the name of the
# pipeline's control image argument.
PIPELINES = {
    "sd15": "StableDiffusionControlNetPipeline",
    "sdxl": "StableDiffusionXLControlNetPipeline",
    "sd3": "StableDiffusion3ControlNetPipeline",
    "flux": "FluxControlNetPipeline",
}
MODEL_CLASSES = {
    "sd15": "ControlNetModel",
    "sdxl": "ControlNetModel",
    "sd3": "SD3ControlNetModel",
    "flux": "FluxControlNetModel",
}
IMAGE_ARG = {"sd15": "image", "sdxl": "image", "sd3": "control_image", "flux": "control_image"}
# Families whose ControlNet pipeline encodes the control image with the VAE and samples the
# latent distribution: SD3 from torch's global RNG (a run would not reproduce), Flux from the
# run's generator before the initial noise (the noise would no longer be the seed's, so even a
# net at weight 0 would change the image). Their control latents are the distribution's mode
# (:func:`control_latents_by_mode`): deterministic, and no random number is drawn.
ENCODES_CONTROL = frozenset({"sd3", "flux"})
# Init arguments a base pipeline does not record in its config but the ControlNet one takes.
EXTRA_INIT = {"add_watermarker": False, "requires_safety_checker": False}

FILE_ID = re.compile(r"^file-[0-9a-f]{32}$")
MAX_CONTROL_PIXELS = 4096 * 4096  # what the API lets through (4096 px a side)


class ControlNetUnavailable(ModelUnavailable):
    """No ControlNet of the plan's type is registered for the model's family, or the registered
    one is not a ControlNet of that family, or its weights do not load."""


class ControlImageUnavailable(ModelUnavailable):
    """A plan's control image is not in this worker's files folder, does not hash to its id,
    or cannot be decoded."""


@dataclass
class LoadedControlNet:
    id: str  # registered folder under models_dir
    net: Any  # the diffusers ControlNet module, on the device
    bytes: int  # its parameters' bytes
    load_ms: float  # verify + from_pretrained
    family: str = ""  # the base family it conditions: unloaded with that family's last model


def find(models_dir: Path, family: str, control_type: str) -> str:
    """The id of the registered ControlNet of ``control_type`` for ``family`` (the first by id);
    ControlNetUnavailable when there is none. Manifests are read, files are not hashed."""
    for manifest in sorted(Path(models_dir).glob(f"*/{registry.MANIFEST}")):
        try:
            entry = registry.read_manifest(manifest.parent)
        except (ModelUnavailable, ValueError, TypeError):
            continue  # unreadable: registry.families logs it
        if (entry.kind, entry.family, entry.controlnet_type) == (
            "controlnet",
            family,
            control_type,
        ):
            return manifest.parent.name
    raise ControlNetUnavailable(
        f"no {control_type!r} ControlNet is registered for {family!r} models on this worker"
    )


def load(
    models_dir: Path,
    net_id: str,
    family: str,
    device: str,
    dtype: Any,
    verify: Callable[[Path], registry.ModelEntry] = registry.verify,
) -> LoadedControlNet:
    """Verify and load ControlNet ``net_id`` for a ``family`` model (on ``device``, in
    ``dtype``); ``verify`` checks its files before anything is read (the runner passes its
    integrity check: trusted by size and mtime, repaired when corrupted, ADR 0707)."""
    t0 = time.perf_counter()
    folder = models_dir / net_id
    entry = verify(folder)
    if entry.kind != "controlnet" or entry.family != family:
        raise ControlNetUnavailable(
            f"{net_id!r} is a {entry.family!r} {entry.kind!r}, not a {family!r} ControlNet"
        )
    cls_name = entry.pipeline if entry.pipeline in MODEL_CLASSES.values() else None
    if cls_name != MODEL_CLASSES[family]:
        raise ControlNetUnavailable(
            f"ControlNet {net_id!r} names class {entry.pipeline!r}; {family!r} needs "
            f"{MODEL_CLASSES[family]!r}"
        )
    try:
        net = diffusers_class(cls_name).from_pretrained(folder, local_files_only=True, dtype=dtype)
    except Exception as exc:
        raise ControlNetUnavailable(f"ControlNet {net_id!r} does not load: {exc!r}") from exc
    net = net.to(device)
    net.eval()
    size = sum(p.numel() * p.element_size() for p in net.parameters())
    ms = (time.perf_counter() - t0) * 1000
    log.info("ControlNet loaded", extra={"controlnet_id": net_id, "bytes": size, "load_ms": ms})
    return LoadedControlNet(net_id, net, size, ms, family)


class ControlFiles(Protocol):
    """Where uploaded control images are read when not from a folder (S3: ``files/<id>``)."""

    def read(self, file_id: str) -> bytes:
        """The file's bytes; OSError (FileNotFoundError when absent) when it cannot be read."""
        ...


def read_image(files_dir: Path | ControlFiles | None, ref: str) -> Image.Image:
    """The control image ``ref`` (a file id) from ``files_dir`` (a folder, or an object store's
    ``files/``), its bytes checked against the id and decoded (RGB)."""
    if not FILE_ID.fullmatch(ref):
        raise ControlImageUnavailable(
            f"control image {ref[:80]!r} is not a file id (file-<32 hex digits>)"
        )
    if files_dir is None:
        raise ControlImageUnavailable(
            f"control image {ref}: this worker has no files folder (IMAGEGEN_GPU_WORKER_FILES_DIR)"
        )
    where = str(files_dir / ref) if isinstance(files_dir, Path) else f"files/{ref}"
    try:
        data = (
            (files_dir / ref).read_bytes() if isinstance(files_dir, Path) else files_dir.read(ref)
        )
    except OSError as exc:
        raise ControlImageUnavailable(
            f"control image {ref} not readable at {where}: {exc}"
        ) from exc
    digest = hashlib.sha256(data).hexdigest()
    if digest[:32] != ref.removeprefix("file-"):
        raise ControlImageUnavailable(f"control image {ref} at {where} has sha256 {digest}")
    try:
        image = Image.open(io.BytesIO(data))
        if image.width * image.height > MAX_CONTROL_PIXELS:
            raise ValueError(f"{image.width}x{image.height} pixels")
        image.load()
    except Exception as exc:  # PIL raises many kinds for a bad file
        raise ControlImageUnavailable(f"control image {ref} cannot be decoded: {exc}") from exc
    return image.convert("RGB")


def control_images(
    files_dir: Path | ControlFiles | None, uses: tuple[ControlNetUse, ...], width: int, height: int
) -> list[Image.Image]:
    """Each use's control image, read and preprocessed for its type at the output size."""
    return [prepare(u.type, read_image(files_dir, u.image), width, height) for u in uses]


def pipeline(family: str, base: Any, nets: list[Any]) -> Any:
    """``family``'s ControlNet pipeline sharing ``base``'s components (modules, tokenizers,
    scheduler), with ``nets`` (one: a single ControlNet; more: diffusers' multi-ControlNet)."""
    cls = diffusers_class(PIPELINES[family])
    accepted = inspect.signature(cls.__init__).parameters
    kwargs: dict[str, Any] = {k: v for k, v in base.components.items() if k in accepted}
    for name, value in base.config.items():  # e.g. force_zeros_for_empty_prompt
        if name in accepted and name not in kwargs and not name.startswith("_"):
            kwargs[name] = value
    for name, value in EXTRA_INIT.items():
        if name in accepted and name not in kwargs:
            kwargs[name] = value
    kwargs["controlnet"] = nets[0] if len(nets) == 1 else list(nets)
    pipe = cls(**kwargs)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def call_kwargs(
    family: str, uses: tuple[ControlNetUse, ...], images: list[Image.Image]
) -> dict[str, Any]:
    """The pipeline arguments for ``uses``: scalars for one net, lists (in order) for more."""

    def each(values: list[Any]) -> Any:
        return values[0] if len(values) == 1 else values

    return {
        IMAGE_ARG[family]: each(images),
        "controlnet_conditioning_scale": each([float(u.weight) for u in uses]),
        "control_guidance_start": each([float(u.start_percent) for u in uses]),
        "control_guidance_end": each([float(u.end_percent) for u in uses]),
    }


@contextmanager
def control_latents_by_mode(family: str, pipe: Any) -> Iterator[None]:
    """While a ``family`` ControlNet run of ``pipe`` lasts, its VAE's ``encode`` (only the
    control image is encoded in a text-to-image run) gives a latent distribution whose
    ``sample`` is its mode (see :data:`ENCODES_CONTROL`); nothing changes for other families."""
    if family not in ENCODES_CONTROL:
        yield
        return
    vae = pipe.vae
    encode = vae.encode

    def by_mode(*args: Any, **kwargs: Any) -> Any:
        out = encode(*args, **kwargs)
        dist = out.latent_dist
        dist.sample = lambda generator=None: dist.mode()
        return out

    vae.encode = by_mode  # an attribute of this instance, over the class's method
    try:
        yield
    finally:
        del vae.encode

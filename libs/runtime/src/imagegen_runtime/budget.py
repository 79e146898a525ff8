"""The memory budget model: what one generation job needs on a worker's device (ADR 0708).

Shared by the gpu-worker (it admits a job, and makes room for it, with these numbers) and the
scheduler (it routes a job only to a worker whose reported budget holds them), so both judge a
job by the same formula. Pure arithmetic, no I/O; sizes in MiB (2**20 bytes) as floats. The
seed's GB figures are read as GiB (1 GB = 1024 MiB here).

The seed's VRAM layout (design/seed-deep-dive.md, "A100 80GB Layout", SDXL at 1024x1024) and
where each line goes in this model:

==============================  ======  ==============================================
seed line                       seed    here
==============================  ======  ==============================================
Base model (SDXL UNet)          10 GB   ``weights_mb``: the model's device components
Text encoders (CLIP+T5)         4 GB    ``weights_mb``
VAE decoder                     2 GB    ``weights_mb``
LoRA workspace                  2 GB    ``lora_workspace_mb``: per LoRA of the job
ControlNet reserve              4 GB    ``controlnet_reserve_mb``: per ControlNet
Latent tensors (batch=4)        8 GB    ``activation_mb``: per image, by resolution
Safety models                   4 GB    not per job: outside a worker's model budget
CUDA overhead and buffers       6 GB    not per job: outside a worker's model budget
Safety margin                   10 GB   ``margin_mb``: 20% of the budget (10 of 50 GB)
==============================  ======  ==============================================

A job fits a budget when its need (weights + LoRA workspace + ControlNet reserve + activations)
is at most the budget less the margin (:func:`fits`). The scheduler's ``budget_fraction`` is
:data:`USABLE_FRACTION` of a worker's reported memory, the same rule.

**These are estimates, not measurements.** Only SDXL's numbers come from the seed; the other
families' activation and adapter figures are scaled from them (see :data:`FAMILIES`). How
activations scale with the model: a network of channel width ``c`` has weights ~ c**2 and
activations per pixel ~ c, so for a model whose denoiser (UNet or transformer) is not its
family's reference size the per-pixel activations are scaled by ``sqrt(denoiser / reference)``
(a tiny random-weight model then needs megabytes, not the gigabytes of a real SDXL). Activations
are linear in pixels and batch: attention is assumed memory-efficient (SDPA), not quadratic in
tokens. A model's manifest may give its own measured ``activation_mb_per_mpix``; it then
replaces the estimate.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

MIB = 2**20
GB = 10**9  # the scheduler's unit
REFERENCE_PIXELS = 1024 * 1024  # the resolution the per-image activation figures are for

# The safety margin, as a share of a worker's budget: the seed keeps 10 GB of its 50 GB
# allocation free for spikes and fragmentation.
MARGIN_FRACTION = 0.2
USABLE_FRACTION = 1.0 - MARGIN_FRACTION

# Component folders of a diffusers model that never go on the device (configs, vocabularies).
HOST_ONLY_PREFIXES = ("tokenizer", "scheduler", "feature_extractor", "image_processor")
DENOISERS = ("unet", "transformer")


@dataclass(frozen=True)
class FamilyFigures:
    """A family's reference figures, in MiB (estimates except where the source says seed)."""

    activation_per_image: float  # activations of one 1024x1024 image, reference denoiser
    reference_denoiser: float  # the reference checkpoint's denoiser weights
    lora: float  # a LoRA's workspace when its size is not known
    controlnet: float  # a ControlNet's reserve when its size is not known
    source: str  # where the figures come from


FAMILIES: Mapping[str, FamilyFigures] = {
    # Seed: latents 8 GB for batch 4 at 1024x1024, base model 10 GB, scenario B: two LoRAs
    # 0.4 GB, one ControlNet 3 GB.
    "sdxl": FamilyFigures(2048.0, 10240.0, 204.8, 3072.0, "seed"),
    # Estimates: SD 1.5's UNet (860M parameters, fp32 3280 MiB) has SDXL's channel widths but
    # fewer transformer blocks: half of SDXL's activations per pixel; LoRAs and ControlNets
    # about half of SDXL's.
    "sd15": FamilyFigures(1024.0, 3280.0, 102.4, 1400.0, "estimate"),
    # Estimates: SD3-medium's MMDiT (2B parameters, fp32 7740 MiB) at SDXL's per-pixel figure.
    "sd3": FamilyFigures(2048.0, 7740.0, 204.8, 2048.0, "estimate"),
    # Estimates: Flux's 12B transformer (bf16 22700 MiB) at 1.75x SDXL per pixel (the ratio
    # the scheduler's reference catalog uses, 3.5 against 2.0 GB per megapixel).
    "flux": FamilyFigures(3584.0, 22700.0, 409.6, 3300.0, "estimate"),
}


def figures(family: str) -> FamilyFigures:
    """The family's figures; ValueError naming ``family`` when it is not one of :data:`FAMILIES`."""
    try:
        return FAMILIES[family]
    except KeyError:
        known = ", ".join(sorted(FAMILIES))
        raise ValueError(f"family {family!r} has no memory figures (known: {known})") from None


def _positive(name: str, value: float) -> None:
    if not value > 0:
        raise ValueError(f"{name} must be positive, got {value!r}")


def _not_negative(name: str, value: float) -> None:
    if not value >= 0:
        raise ValueError(f"{name} must not be negative, got {value!r}")


def weights_mb(components: Mapping[str, int]) -> float:
    """MiB of a model's weights on the device, from its manifest's ``components`` (bytes per
    component folder): every component but tokenizers, schedulers and feature extractors."""
    total = 0
    for name, size in components.items():
        _not_negative(f"components[{name!r}]", size)
        if not name.startswith(HOST_ONLY_PREFIXES):
            total += size
    return total / MIB


def denoiser_mb(components: Mapping[str, int]) -> float | None:
    """MiB of the model's denoiser (``unet`` or ``transformer``), None when it has neither."""
    for name in DENOISERS:
        if name in components:
            return components[name] / MIB
    return None


def activation_mb_per_mpix(family: str, *, denoiser_mb: float | None = None) -> float:
    """Activations of one image per megapixel (10**6 pixels), MiB: the family's reference
    figure, scaled by ``sqrt(denoiser_mb / reference)`` when the denoiser's size is given."""
    fam = figures(family)
    per_mpix = fam.activation_per_image * 1e6 / REFERENCE_PIXELS
    if denoiser_mb is None:
        return per_mpix
    _positive("denoiser_mb", denoiser_mb)
    return per_mpix * math.sqrt(denoiser_mb / fam.reference_denoiser)


def activation_mb(
    family: str,
    width: int,
    height: int,
    batch: int,
    *,
    denoiser_mb: float | None = None,
    per_mpix: float | None = None,
) -> float:
    """Activations of ``batch`` images of ``width`` x ``height``, MiB: linear in pixels and in
    batch. ``per_mpix`` (a model's own figure) replaces the family estimate."""
    for name, value in (("width", width), ("height", height), ("batch", batch)):
        _positive(name, value)
    if per_mpix is None:
        per_mpix = activation_mb_per_mpix(family, denoiser_mb=denoiser_mb)
    else:  # the model's own figure: the family's figures are not needed
        _not_negative("per_mpix", per_mpix)
    return per_mpix * width * height / 1e6 * batch


def lora_workspace_mb(family: str, loras_mb: Iterable[float | None]) -> float:
    """The LoRA workspace of a job, MiB: each LoRA's weights (the seed's scenario B: two SDXL
    LoRAs, 0.4 GB), the family's default for one whose size is unknown (None)."""
    total = 0.0
    for i, size in enumerate(loras_mb):
        if size is None:
            total += figures(family).lora
        else:
            _not_negative(f"loras_mb[{i}]", size)
            total += size
    return total


def controlnet_reserve_mb(family: str, controlnets_mb: Iterable[float | None]) -> float:
    """The ControlNet reserve of a job, MiB: each ControlNet's weights, the family's default
    (SDXL: the seed's 3 GB a ControlNet) for one whose size is unknown (None)."""
    total = 0.0
    for i, size in enumerate(controlnets_mb):
        if size is None:
            total += figures(family).controlnet
        else:
            _not_negative(f"controlnets_mb[{i}]", size)
            total += size
    return total


def margin_mb(budget_mb: float) -> float:
    """The part of a budget kept free for spikes and fragmentation (:data:`MARGIN_FRACTION`)."""
    _not_negative("budget_mb", budget_mb)
    return budget_mb * MARGIN_FRACTION


def usable_mb(budget_mb: float) -> float:
    """What jobs may use of a budget: the budget less its margin."""
    return budget_mb - margin_mb(budget_mb)


@dataclass(frozen=True)
class Need:
    """What one job needs on the device, MiB, by part."""

    weights_mb: float  # the model's weights (resident or still to load)
    loras_mb: float  # its LoRAs' workspace
    controlnets_mb: float  # its ControlNets' reserve
    activations_mb: float  # latents and activations for its resolution and batch

    @property
    def total_mb(self) -> float:
        return self.weights_mb + self.loras_mb + self.controlnets_mb + self.activations_mb

    def __str__(self) -> str:
        parts = [f"weights {self.weights_mb:.1f}"]
        if self.loras_mb:
            parts.append(f"LoRAs {self.loras_mb:.1f}")
        if self.controlnets_mb:
            parts.append(f"ControlNets {self.controlnets_mb:.1f}")
        parts.append(f"activations {self.activations_mb:.1f}")
        return f"{self.total_mb:.1f} MiB ({' + '.join(parts)})"


def job_need_mb(
    weights_mb: float,
    family: str,
    width: int,
    height: int,
    batch: int,
    *,
    denoiser_mb: float | None = None,
    activation_per_mpix: float | None = None,
    loras_mb: Iterable[float | None] = (),
    controlnets_mb: Iterable[float | None] = (),
) -> Need:
    """The :class:`Need` of a job: a model of ``family`` weighing ``weights_mb`` on the device,
    ``batch`` images of ``width`` x ``height``, with LoRAs and ControlNets of the given sizes
    (None: unknown, the family default). ``denoiser_mb`` scales the activation estimate;
    ``activation_per_mpix`` (the model's own figure, MiB per megapixel per image) replaces it.
    The family's figures are read only where an estimate or a default is needed: a family
    without figures is refused (ValueError naming it) only then."""
    _not_negative("weights_mb", weights_mb)
    return Need(
        weights_mb=weights_mb,
        loras_mb=lora_workspace_mb(family, loras_mb),
        controlnets_mb=controlnet_reserve_mb(family, controlnets_mb),
        activations_mb=activation_mb(
            family, width, height, batch, denoiser_mb=denoiser_mb, per_mpix=activation_per_mpix
        ),
    )


def fits(budget_mb: float, need: Need | float) -> bool:
    """Whether a job needing ``need`` (a :class:`Need` or MiB) fits a budget of ``budget_mb``
    (everything on the worker may be evicted for it) with the margin kept free."""
    total = need.total_mb if isinstance(need, Need) else need
    return total <= usable_mb(budget_mb)

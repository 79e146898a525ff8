"""How a pipeline is run on its device: the accelerator decisions, as data (ADR 0709).

:func:`plan` turns the device kind, the model's family and the worker's settings into an
:class:`AccelPlan`; ``adapters/accel.py`` applies it to a pipeline once it is built. Pure: no
torch here (whether the GPU computes bfloat16 is passed in).

The rules:

- **dtype** ``auto``: float32 on CPU (the images' bytes stay those of every earlier release);
  on CUDA float16 for the UNet families (sd15, sdxl) and bfloat16 for the transformer families
  (sd3, flux: their T5 text encoder and activations overflow float16) when the GPU computes it
  (Ampere and newer), else float16. An explicit ``fp32``, ``fp16`` or ``bf16`` is used as given.
- **attention** ``sdpa``: every attention layer of the diffusers components uses PyTorch's
  ``scaled_dot_product_attention`` (flash / memory-efficient kernels on CUDA); ``diffusers``
  leaves diffusers' own choice untouched. Either way what is in use is reported.
- **compile**: ``torch.compile`` of the denoiser (UNet or transformer), only when the setting
  says so (the first run per shape pays the compilation).
- **VAE tiling**: on CUDA, an image of more than ``vae_tiling_above_pixels`` pixels is decoded
  in tiles (diffusers' ``enable_tiling``), which bounds the decoder's activation memory; never on
  CPU (host RAM is not the scarce resource, and CPU bytes stay unchanged).
- **channels_last** memory format for the UNet families on CUDA (faster convolutions).
- **pinned RAM tier**: on CUDA a model evicted to the RAM tier (ADR 0705) is copied into
  page-locked host memory, so that its copy back to the device runs at full PCIe/NVLink speed.
"""

from __future__ import annotations

from dataclasses import dataclass

DTYPES = ("auto", "fp32", "fp16", "bf16")
ATTENTION = ("sdpa", "diffusers")
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
DEVICE_KINDS = ("cpu", "cuda")
# Families whose denoiser is a transformer fed by T5 (bfloat16 when the GPU has it).
BF16_FAMILIES = frozenset({"sd3", "flux"})
# Families whose denoiser is a convolutional UNet (channels_last helps on CUDA).
UNET_FAMILIES = frozenset({"sd15", "sdxl"})
DEFAULT_VAE_TILING_ABOVE_PIXELS = 1024 * 1024


class AccelError(ValueError):
    """An accelerator setting that cannot be used; the message names the setting."""


@dataclass(frozen=True)
class AccelSettings:
    """The worker's accelerator settings (``IMAGEGEN_GPU_WORKER_*``; see ``config.py``)."""

    dtype: str = "auto"
    attention: str = "sdpa"
    compile: bool = False
    compile_mode: str = "default"
    vae_tiling: bool = True
    vae_tiling_above_pixels: int = DEFAULT_VAE_TILING_ABOVE_PIXELS
    pin_ram_tier: bool = True

    def __post_init__(self) -> None:
        _one_of("dtype", self.dtype, DTYPES)
        _one_of("attention", self.attention, ATTENTION)
        _one_of("compile_mode", self.compile_mode, COMPILE_MODES)
        if self.vae_tiling_above_pixels < 1:
            raise AccelError(
                f"vae_tiling_above_pixels must be at least 1, got {self.vae_tiling_above_pixels}"
            )


@dataclass(frozen=True)
class AccelPlan:
    """What :func:`plan` decided for one model on one device."""

    dtype: str  # "fp32", "fp16" or "bf16"
    attention: str  # "sdpa" or "diffusers"
    compile: bool
    compile_mode: str
    # Tile the VAE for images of more than this many pixels; None: never.
    vae_tiling_above_pixels: int | None
    channels_last: bool
    pin_ram_tier: bool
    dtype_reason: str  # why this dtype, for the log

    def tiles_vae(self, width: int, height: int) -> bool:
        """Whether an image of ``width`` x ``height`` pixels is decoded in tiles."""
        limit = self.vae_tiling_above_pixels
        return limit is not None and width * height > limit


def _one_of(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise AccelError(f"{name} must be one of {', '.join(allowed)}; got {value!r}")


def device_kind(device: str) -> str:
    """``"cuda"`` for ``cuda`` or ``cuda:N``, ``"cpu"`` for ``cpu``; anything else refused."""
    kind = str(device).split(":", 1)[0]
    if kind not in DEVICE_KINDS:
        raise AccelError(f"device must be cpu, cuda or cuda:N; got {device!r}")
    return kind


def choose_dtype(kind: str, family: str, setting: str, bf16_supported: bool) -> tuple[str, str]:
    """(dtype, reason) for a model of ``family`` on a device of ``kind``."""
    if setting != "auto":
        return setting, f"dtype setting {setting}"
    if kind == "cpu":
        return "fp32", "auto on cpu: float32"
    if family in BF16_FAMILIES:
        if bf16_supported:
            return "bf16", f"auto on cuda for {family}: bfloat16"
        return "fp16", f"auto on cuda for {family}: bfloat16 not supported by this GPU, float16"
    return "fp16", f"auto on cuda for {family}: float16"


def plan(
    device: str, family: str, settings: AccelSettings, *, bf16_supported: bool = False
) -> AccelPlan:
    """The :class:`AccelPlan` of a model of ``family`` on ``device`` (see the module's rules);
    ``bf16_supported``: whether the CUDA device computes bfloat16 (ignored on CPU)."""
    kind = device_kind(device)
    on_cuda = kind == "cuda"
    dtype, reason = choose_dtype(kind, family, settings.dtype, on_cuda and bf16_supported)
    tiling = settings.vae_tiling_above_pixels if on_cuda and settings.vae_tiling else None
    return AccelPlan(
        dtype=dtype,
        attention=settings.attention,
        compile=settings.compile,
        compile_mode=settings.compile_mode,
        vae_tiling_above_pixels=tiling,
        channels_last=on_cuda and family in UNET_FAMILIES,
        pin_ram_tier=on_cuda and settings.pin_ram_tier,
        dtype_reason=reason,
    )

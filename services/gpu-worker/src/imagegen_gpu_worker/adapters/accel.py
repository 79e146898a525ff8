"""Applies an :class:`~..domain.accel.AccelPlan` to a pipeline, and moves pipelines between the
device and host RAM (ADR 0709).

- :func:`open_pipeline`: the registry's loader with the plan's dtype, then :func:`apply`
  (attention, channels_last, compile), logged once per load. The runner's one call site where a
  pipeline is built and put on its device.
- :func:`set_vae_tiling`: per run, the plan's VAE tiling for the run's image size.
- :func:`to_ram` / :func:`to_device`: the RAM tier's moves (ADR 0705). On CUDA, with the plan's
  ``pin_ram_tier``, every parameter and buffer is copied straight from the device into
  page-locked (pinned) host memory, and back with asynchronous copies from it, then the stream is
  synchronised: the copy back runs at the link's full speed instead of through the driver's
  pageable staging buffer. Pinned blocks come from PyTorch's host caching allocator, which rounds
  each block up to a power of two and keeps freed blocks for reuse: the host memory locked can
  exceed the tier's model bytes (``torch.cuda.host_memory_stats``), up to twice.

torch is never imported here for a pipeline that holds no torch module (tests' stand-ins): the
moves then call the pipeline's own ``to`` only.
"""

from __future__ import annotations

import importlib
import logging
import sys
import time
from pathlib import Path
from typing import Any

from ..domain.accel import BF16_FAMILIES, AccelPlan, AccelSettings, device_kind, plan
from . import registry
from .ml import torch_module

log = logging.getLogger(__name__)

TORCH_DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}
# Classic attention processors and their scaled_dot_product_attention twins (diffusers).
SDPA_TWINS = {
    "AttnProcessor": "AttnProcessor2_0",
    "AttnAddedKVProcessor": "AttnAddedKVProcessor2_0",
}
_bf16: dict[str, bool] = {}  # device -> torch.cuda.is_bf16_supported(), asked once


def bf16_supported(device: str) -> bool:
    """Whether CUDA ``device`` computes bfloat16 (asked once per device)."""
    if device not in _bf16:
        torch = torch_module()
        with torch.cuda.device(torch.device(device)):
            _bf16[device] = bool(torch.cuda.is_bf16_supported())
    return _bf16[device]


def plan_for(device: str, family: str, settings: AccelSettings) -> AccelPlan:
    """:func:`~..domain.accel.plan`, asking the GPU about bfloat16 only when it matters."""
    asks = device_kind(device) == "cuda" and settings.dtype == "auto" and family in BF16_FAMILIES
    return plan(device, family, settings, bf16_supported=asks and bf16_supported(device))


def open_pipeline(
    folder: Path, entry: registry.ModelEntry, device: str, settings: AccelSettings
) -> Any:
    """Load a verified model as its family's pipeline on ``device`` in the plan's dtype, with
    the plan applied (:func:`apply`); the plan and what is in use are logged."""
    accel = plan_for(device, entry.family, settings)
    t0 = time.perf_counter()
    # float32 on CPU is the registry's own default (what every CPU load has always used).
    cpu_default = accel.dtype == "fp32" and device_kind(device) == "cpu"
    dtype = () if cpu_default else (TORCH_DTYPES[accel.dtype],)
    pipe = registry.open_pipeline(folder, entry, device, *dtype)
    report = apply(pipe, accel)
    log.info(
        "pipeline on its device",
        extra={
            "model_id": entry.id,
            "device": device,
            "dtype_reason": accel.dtype_reason,
            "open_ms": round((time.perf_counter() - t0) * 1000, 1),
            **report,
        },
    )
    return pipe


def denoiser(pipe: Any) -> Any:
    """The pipeline's UNet or transformer (None if it has neither)."""
    for name in ("unet", "transformer"):
        module = getattr(pipe, name, None)
        if module is not None:
            return module
    return None


def apply(pipe: Any, accel: AccelPlan) -> dict[str, Any]:
    """Apply ``accel`` to a built pipeline (already in its dtype, on its device): attention,
    channels_last, compile; VAE tiling off until a run asks (:func:`set_vae_tiling`).
    Returns what is in use, for the log and the GPU bench."""
    attention = set_attention(pipe, accel.attention)
    net = denoiser(pipe)
    if accel.channels_last and net is not None:
        net.to(memory_format=torch_module().channels_last)
    if accel.compile and net is not None:
        # In place (nn.Module.compile): the module keeps its class, so diffusers' LoRA loading
        # and isinstance checks still see a UNet / transformer. Compiles at the first run.
        net.compile(mode=None if accel.compile_mode == "default" else accel.compile_mode)
    set_vae_tiling(pipe, False)
    return {
        "dtype": accel.dtype,
        "attention": accel.attention,
        "attention_in_use": attention,
        "all_attention_sdpa": all(
            kind == "sdpa" or kind.endswith("(sdpa)")
            for kinds in attention.values()
            for kind in kinds
        ),
        "channels_last": accel.channels_last,
        "compile": accel.compile,
        "compile_mode": accel.compile_mode if accel.compile else None,
        "vae_tiling_above_pixels": accel.vae_tiling_above_pixels,
        "pin_ram_tier": accel.pin_ram_tier,
    }


def _processor_kind(processor: Any) -> str:
    """A processor's class name, marked ``(sdpa)`` when it calls
    ``scaled_dot_product_attention``: the ``*2_0`` processors, and the dispatching ones
    (``_attention_backend``) left on the native backend."""
    name = type(processor).__name__
    native = hasattr(processor, "_attention_backend") and processor._attention_backend in (
        None,
        "native",
    )
    return f"{name}(sdpa)" if name.endswith("2_0") or native else name


def set_attention(pipe: Any, mode: str) -> dict[str, list[str]]:
    """With ``mode == "sdpa"``, give every classic attention processor of the diffusers
    components its SDPA twin, and transformers components on ``eager`` attention the ``sdpa``
    implementation; ``"diffusers"`` changes nothing. Returns, per component, the kinds of
    attention in use afterwards (processor classes, or the transformers implementation)."""
    in_use: dict[str, list[str]] = {}
    for name, module in pipe.components.items():
        processors = getattr(module, "attn_processors", None)
        if isinstance(processors, dict) and hasattr(module, "set_attn_processor"):
            if mode == "sdpa" and any(type(p).__name__ in SDPA_TWINS for p in processors.values()):
                classes = importlib.import_module("diffusers.models.attention_processor")
                module.set_attn_processor(
                    {
                        key: getattr(classes, SDPA_TWINS[type(p).__name__])()
                        if type(p).__name__ in SDPA_TWINS
                        else p
                        for key, p in processors.items()
                    }
                )
                processors = module.attn_processors
            in_use[name] = sorted({_processor_kind(p) for p in processors.values()})
            continue
        config = getattr(module, "config", None)
        implementation = getattr(config, "_attn_implementation", None)
        if implementation is None:
            continue
        if (
            mode == "sdpa"
            and implementation == "eager"
            and hasattr(module, "set_attn_implementation")
        ):
            module.set_attn_implementation("sdpa")
            implementation = module.config._attn_implementation
        in_use[name] = [str(implementation)]
    return in_use


def set_vae_tiling(pipe: Any, on: bool) -> None:
    """Decode in tiles (``enable_tiling``) or whole (``disable_tiling``); a VAE without tiling
    is left alone."""
    vae = getattr(pipe, "vae", None)
    if vae is None or not hasattr(vae, "use_tiling"):
        return
    if on:
        vae.enable_tiling()
    else:
        vae.disable_tiling()


def prepare_run(
    pipe: Any, family: str, device: str, settings: AccelSettings, w: int, h: int
) -> bool:
    """Per run: VAE tiling on for a ``w`` x ``h`` image when the plan tiles that size (CUDA
    only), off otherwise. Returns whether it tiles."""
    tiles = plan_for(device, family, settings).tiles_vae(w, h)
    set_vae_tiling(pipe, tiles)
    return tiles


def _modules(pipe: Any, torch: Any) -> list[Any]:
    return [m for m in pipe.components.values() if isinstance(m, torch.nn.Module)]


def _tensors(module: Any) -> list[Any]:
    return [*module.parameters(), *module.buffers()]


def to_ram(pipe: Any, pin: bool) -> int:
    """Move ``pipe`` to host RAM. With ``pin`` (and CUDA tensors to move), each tensor is
    copied straight into pinned host memory (non-blocking copies, one synchronisation); then
    the pipeline's own ``to("cpu")`` (a no-op for tensors already there). Returns the bytes
    copied into pinned memory (0 when not pinned)."""
    torch = sys.modules.get("torch")
    pinned = 0
    if pin and torch is not None and torch.cuda.is_available():
        for module in _modules(pipe, torch):
            for t in _tensors(module):
                if t.device.type != "cuda":
                    continue
                host = torch.empty_strided(
                    t.size(), t.stride(), dtype=t.dtype, device="cpu", pin_memory=True
                )
                host.copy_(t.data, non_blocking=True)
                t.data = host
                pinned += host.numel() * host.element_size()
        if pinned:
            torch.cuda.synchronize()
    pipe.to("cpu")
    return pinned


def to_device(pipe: Any, device: str) -> int:
    """Move ``pipe`` back to ``device``: on CUDA each host tensor with a non-blocking copy
    (asynchronous from pinned memory), one synchronisation, then the pipeline's own
    ``to(device)``. Returns the bytes copied by the first pass."""
    torch = sys.modules.get("torch")
    moved = 0
    if torch is not None and device_kind(device) == "cuda" and torch.cuda.is_available():
        target = torch.device(device)
        for module in _modules(pipe, torch):
            for t in _tensors(module):
                if t.device.type != "cpu":
                    continue
                t.data = t.data.to(target, non_blocking=t.is_pinned())
                moved += t.numel() * t.element_size()
        if moved:
            torch.cuda.synchronize(target)
    pipe.to(device)
    return moved

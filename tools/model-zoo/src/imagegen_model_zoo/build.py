"""Build the tiny random-weight test models of every family the worker runs, from configs.

    python -m imagegen_model_zoo [--out models] [--force] [--only tiny-sd3 ...]

``tiny-sd15`` (StableDiffusionPipeline), ``tiny-sdxl`` (StableDiffusionXLPipeline),
``tiny-sd3`` (StableDiffusion3Pipeline) and ``tiny-flux`` (FluxPipeline): untrained, a few
hundred kB each, 64 px by default, registered with a ``model.json`` written by the worker's
registry (``imagegen_gpu_worker.adapters.registry.write_manifest``), so a worker loads them like
any model. They make noise, not pictures: they exist to prove that every family loads, runs
every sampler it claims and reproduces an image from its seed.

LoRAs (:data:`LORAS`: ``tiny-sd15-lora-ink``, ``tiny-sd15-lora-glow``, ``tiny-sdxl-lora-ink``):
a folder with one ``pytorch_lora_weights.safetensors`` (UNet attention projections, rank 4,
saved with the family pipeline's ``save_lora_weights``, so ``load_lora_weights`` reads it) and a
``model.json`` with ``kind: "lora"`` and the ``family`` it applies to. Both LoRA matrices are
random (peft's ``init_lora_weights=False``), so at weight 1 a LoRA visibly changes the image;
each applies to any model of its family built from the same configs (only shapes matter).

ControlNets (:data:`CONTROLNETS`: canny, scribble, tile and depth for sd15; canny, scribble and
tile for sdxl; canny for sd3 and flux): a ControlNet model folder (``config.json`` and one
safetensors file, saved with ``save_pretrained``) and a ``model.json`` with
``kind: "controlnet"``, its ``family`` and its ``controlnet_type`` (the name a request gives).
An sd15 or sdxl net is its family's UNet encoder (the base models' seed) with the layers
diffusers zero-initialises seeded instead, so at weight 1 it changes the image where the
control image has structure (:func:`build_controlnet_model`, ADR 0706). SD3 and Flux have a
canny net each (``SD3ControlNetModel``, ``FluxControlNetModel``): their family's tiny
transformer with diffusers' zero-initialised layers seeded
(:func:`build_transformer_controlnet`).

Reproducible: every component is initialised right after ``torch.manual_seed`` with its own
fixed seed, tokenizers are built (not trained) with the ``tokenizers`` library
(:mod:`.vocab`), and the manifest's ``created`` is a fixed time, so two builds write
byte-identical folders (tested). A folder that already holds a valid manifest is skipped
unless ``force``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from imagegen_gpu_worker.adapters import registry
from imagegen_gpu_worker.domain.samplers import supported

from . import vocab

CREATED = 1764547200  # 2025-12-01T00:00:00Z: a fixed "created" so builds are byte-identical
SIZE = 64  # default image side, pixels
DEFAULT_MODELS_DIR = Path(__file__).resolve().parents[4] / "models"

CLIP_TEXT: dict[str, Any] = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "max_position_embeddings": vocab.CLIP_MAX_LENGTH,
    "projection_dim": 32,
    "hidden_act": "gelu",
}
T5_TEXT: dict[str, Any] = {
    "d_model": 64,
    "d_kv": 16,
    "d_ff": 64,
    "num_layers": 1,
    "num_heads": 4,
    "relative_attention_num_buckets": 8,
    "relative_attention_max_distance": 32,
    "dropout_rate": 0.0,
    "feed_forward_proj": "gated-gelu",
    "is_encoder_decoder": False,
    "use_cache": False,
}
# A 4-block VAE: 64 px images <-> 8 x 8 latents (factor 8, as in the real models).
VAE: dict[str, Any] = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "block_out_channels": [8, 8, 16, 16],
    "layers_per_block": 1,
    "latent_channels": 4,
    "norm_num_groups": 8,
    "sample_size": SIZE,
    "mid_block_add_attention": False,
}
UNET: dict[str, Any] = {
    "sample_size": SIZE // 8,
    "in_channels": 4,
    "out_channels": 4,
    "down_block_types": ["CrossAttnDownBlock2D", "DownBlock2D"],
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D"],
    "block_out_channels": [8, 16],
    "layers_per_block": 1,
    "attention_head_dim": 2,
    "norm_num_groups": 8,
}
DISCRETE_SCHEDULER: dict[str, Any] = {  # Stable Diffusion's own schedule
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "clip_sample": False,
    "set_alpha_to_one": False,
    "steps_offset": 1,
}


def _seeded(seed: int, make: Callable[[], Any]) -> Any:
    import torch

    torch.manual_seed(seed)
    return make()


def _clip_text(tokenizer: Any, seed: int, *, projection: bool) -> Any:
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    config = CLIPTextConfig(
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **CLIP_TEXT,
    )
    cls = CLIPTextModelWithProjection if projection else CLIPTextModel
    return _seeded(seed, lambda: cls(config))


def _t5_text(tokenizer: Any, seed: int) -> Any:
    from transformers import T5Config, T5EncoderModel

    config = T5Config(
        vocab_size=len(tokenizer),
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        decoder_start_token_id=tokenizer.pad_token_id,
        **T5_TEXT,
    )
    return _seeded(seed, lambda: T5EncoderModel(config))


def _vae(seed: int, **extra: Any) -> Any:
    from diffusers import AutoencoderKL

    return _seeded(seed, lambda: AutoencoderKL(**{**VAE, **extra}))


def build_sd15() -> Any:
    from diffusers import DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel

    tokenizer = vocab.clip_tokenizer()
    return StableDiffusionPipeline(
        vae=_vae(1),
        text_encoder=_clip_text(tokenizer, 2, projection=False),
        tokenizer=tokenizer,
        unet=_seeded(3, lambda: UNet2DConditionModel(**SD15_UNET)),
        scheduler=DDIMScheduler(**DISCRETE_SCHEDULER),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


SDXL_TIME_DIM = 8
SD15_UNET: dict[str, Any] = {**UNET, "cross_attention_dim": 32}
SDXL_UNET: dict[str, Any] = {
    **UNET,
    "cross_attention_dim": 2 * CLIP_TEXT["hidden_size"],  # both encoders' states, side by side
    "addition_embed_type": "text_time",
    "addition_time_embed_dim": SDXL_TIME_DIM,
    # the second encoder's pooled projection + 6 size/crop numbers, each time-embedded
    "projection_class_embeddings_input_dim": CLIP_TEXT["projection_dim"] + 6 * SDXL_TIME_DIM,
    "transformer_layers_per_block": 1,
}


def build_sdxl() -> Any:
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel

    tokenizer = vocab.clip_tokenizer()
    return StableDiffusionXLPipeline(
        vae=_vae(1),
        text_encoder=_clip_text(tokenizer, 2, projection=False),
        text_encoder_2=_clip_text(tokenizer, 4, projection=True),
        tokenizer=tokenizer,
        tokenizer_2=vocab.clip_tokenizer(),
        unet=_seeded(3, lambda: UNet2DConditionModel(**SDXL_UNET)),
        scheduler=EulerDiscreteScheduler(
            num_train_timesteps=1000,
            beta_start=0.00085,
            beta_end=0.012,
            beta_schedule="scaled_linear",
            steps_offset=1,
            timestep_spacing="leading",
        ),
        add_watermarker=False,
    )


SD3_TRANSFORMER: dict[str, Any] = {
    "sample_size": SIZE // 8,
    "patch_size": 1,
    "in_channels": 4,  # a 4-channel VAE (patch_size 1 pairs with it)
    "out_channels": 4,
    # Two blocks: SD3's last block drops its text stream (context_pre_only) and never takes a
    # ControlNet residual, so a one-block model would ignore every ControlNet.
    "num_layers": 2,
    "attention_head_dim": 8,
    "num_attention_heads": 2,
    "joint_attention_dim": T5_TEXT["d_model"],  # CLIP states are padded to T5's width
    "caption_projection_dim": 16,
    "pooled_projection_dim": 2 * CLIP_TEXT["projection_dim"],
    "pos_embed_max_size": 32,  # latents up to 32 x 32: images up to 256 px
}
FLUX_TRANSFORMER: dict[str, Any] = {
    "patch_size": 1,
    "in_channels": 16,  # 2 x 2 packed patches of a 4-channel VAE's latents
    "num_layers": 1,
    "num_single_layers": 1,
    "attention_head_dim": 8,
    "num_attention_heads": 2,
    "joint_attention_dim": T5_TEXT["d_model"],
    "pooled_projection_dim": CLIP_TEXT["hidden_size"],  # CLIPTextModel's pooled output
    "guidance_embeds": True,  # guidance-distilled, as FLUX.1-dev: guidance is an input
    "axes_dims_rope": (2, 2, 4),  # sums to attention_head_dim
}


def build_sd3() -> Any:
    from diffusers import (
        FlowMatchEulerDiscreteScheduler,
        SD3Transformer2DModel,
        StableDiffusion3Pipeline,
    )

    tokenizer = vocab.clip_tokenizer()
    t5_tokenizer = vocab.t5_tokenizer()
    return StableDiffusion3Pipeline(
        transformer=_seeded(3, lambda: SD3Transformer2DModel(**SD3_TRANSFORMER)),
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
        vae=_vae(1, scaling_factor=1.5, shift_factor=0.0),
        text_encoder=_clip_text(tokenizer, 2, projection=True),
        tokenizer=tokenizer,
        text_encoder_2=_clip_text(tokenizer, 4, projection=True),
        tokenizer_2=vocab.clip_tokenizer(),
        text_encoder_3=_t5_text(t5_tokenizer, 5),
        tokenizer_3=t5_tokenizer,
    )


def build_flux() -> Any:
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel

    tokenizer = vocab.clip_tokenizer()
    t5_tokenizer = vocab.t5_tokenizer()
    scheduler = FlowMatchEulerDiscreteScheduler(
        shift=3.0,
        use_dynamic_shifting=True,
        base_shift=0.5,
        max_shift=1.15,
        base_image_seq_len=256,
        max_image_seq_len=4096,
    )
    return FluxPipeline(
        scheduler=scheduler,
        vae=_vae(1, scaling_factor=1.5, shift_factor=0.0),
        text_encoder=_clip_text(tokenizer, 2, projection=False),
        tokenizer=tokenizer,
        text_encoder_2=_t5_text(t5_tokenizer, 5),
        tokenizer_2=t5_tokenizer,
        transformer=_seeded(3, lambda: FluxTransformer2DModel(**FLUX_TRANSFORMER)),
    )


@dataclass(frozen=True)
class Spec:
    id: str
    family: str
    tier: int
    build: Callable[[], Any]
    default_steps: int
    default_guidance: float


MODELS: dict[str, Spec] = {
    s.id: s
    for s in (
        Spec("tiny-sd15", "sd15", 2, build_sd15, 25, 5.0),
        Spec("tiny-sdxl", "sdxl", 2, build_sdxl, 25, 5.0),
        Spec("tiny-sd3", "sd3", 3, build_sd3, 28, 5.0),
        Spec("tiny-flux", "flux", 3, build_flux, 28, 3.5),
    )
}


@dataclass(frozen=True)
class LoraModel:
    id: str
    family: str  # the family of the models it applies to ("sd15")
    seed: int  # torch seed its LoRA matrices are drawn from
    rank: int = 4


# The UNet config each LoRA family's adapters are shaped for, and the pipeline that saves them.
LORA_UNETS: dict[str, tuple[dict[str, Any], str]] = {
    "sd15": (SD15_UNET, "StableDiffusionPipeline"),
    "sdxl": (SDXL_UNET, "StableDiffusionXLPipeline"),
}
LORA_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]  # the UNet's attention projections
LORA_FILE = "pytorch_lora_weights.safetensors"

LORAS: dict[str, LoraModel] = {
    s.id: s
    for s in (
        LoraModel("tiny-sd15-lora-ink", "sd15", 11),
        LoraModel("tiny-sd15-lora-glow", "sd15", 12),
        LoraModel("tiny-sdxl-lora-ink", "sdxl", 13),
    )
}


def build_lora_weights(spec: LoraModel, folder: Path) -> None:
    """Write ``spec``'s LoRA weights file into ``folder``: a UNet of its family (seed 3, as the
    base models') with a peft LoRA whose A and B are both random (drawn from ``spec.seed``),
    saved in diffusers' format by the family pipeline's ``save_lora_weights``."""
    import diffusers
    import torch
    from diffusers import UNet2DConditionModel
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    config, pipeline = LORA_UNETS[spec.family]
    unet = _seeded(3, lambda: UNet2DConditionModel(**config))
    lora = LoraConfig(
        r=spec.rank,
        lora_alpha=spec.rank,  # scale 1: the file records no alpha, diffusers then uses the rank
        init_lora_weights=False,  # random B too (peft's default zero B would change nothing)
        target_modules=LORA_TARGETS,
    )
    torch.manual_seed(spec.seed)
    unet.add_adapter(lora)
    layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(unet))
    getattr(diffusers, pipeline).save_lora_weights(
        folder, unet_lora_layers=layers, weight_name=LORA_FILE, safe_serialization=True
    )


def build_lora(spec: LoraModel, out: Path) -> registry.ModelEntry:
    """Build ``spec`` into ``out`` (replaced), registered with a ``kind: "lora"`` manifest."""
    import torch

    with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.name}-") as tmp:
        staging = Path(tmp) / out.name
        staging.mkdir()
        with torch.random.fork_rng(devices=[]):  # leave the caller's global RNG as it was
            build_lora_weights(spec, staging)
        entry = registry.write_manifest(
            staging, id=spec.id, family=spec.family, kind="lora", tier=2, created=CREATED
        )
        if out.exists():
            shutil.rmtree(out)
        os.replace(staging, out)
    return entry


@dataclass(frozen=True)
class ControlNetModelSpec:
    id: str
    family: str  # the family of the models it conditions ("sd15")
    controlnet_type: str  # what a request names it by ("canny")
    seed: int  # torch seed of its conditioning embedding and output convolutions


# Gains of the seeded layers (ADR 0706): He-normal convolutions lose most of a sparse edge map
# on the way down the conditioning embedding (its output's std is ~0.015 against ~0.6 for the
# latents' first convolution on a canny map of shapes), so its last convolution is scaled up; the
# output ("zero") convolutions get PyTorch's default init, scaled up too.
CONTROLNET_EMBEDDING_GAIN = 50.0
CONTROLNET_OUTPUT_GAIN = 10.0
CONTROLNET_EMBEDDING_CHANNELS = (8, 8, 16, 16)  # three stride-2 steps: image -> latent size
CONTROLNET_FILE = "diffusion_pytorch_model.safetensors"

CONTROLNETS: dict[str, ControlNetModelSpec] = {
    s.id: s
    for s in (
        ControlNetModelSpec("tiny-sd15-controlnet-canny", "sd15", "canny", 21),
        ControlNetModelSpec("tiny-sd15-controlnet-scribble", "sd15", "scribble", 22),
        ControlNetModelSpec("tiny-sd15-controlnet-tile", "sd15", "tile", 23),
        ControlNetModelSpec("tiny-sd15-controlnet-depth", "sd15", "depth", 24),
        ControlNetModelSpec("tiny-sdxl-controlnet-canny", "sdxl", "canny", 25),
        ControlNetModelSpec("tiny-sdxl-controlnet-scribble", "sdxl", "scribble", 26),
        ControlNetModelSpec("tiny-sdxl-controlnet-tile", "sdxl", "tile", 27),
        ControlNetModelSpec("tiny-sd3-controlnet-canny", "sd3", "canny", 28),
        ControlNetModelSpec("tiny-flux-controlnet-canny", "flux", "canny", 29),
    )
}
# The diffusers class of each family's ControlNets (what their manifest's ``pipeline`` names).
CONTROLNET_CLASSES = {
    "sd15": "ControlNetModel",
    "sdxl": "ControlNetModel",
    "sd3": "SD3ControlNetModel",
    "flux": "FluxControlNetModel",
}


def build_controlnet_model(spec: ControlNetModelSpec) -> Any:
    """``spec``'s ControlNet (:func:`build_unet_controlnet` for sd15 and sdxl,
    :func:`build_transformer_controlnet` for sd3 and flux)."""
    if spec.family in ("sd3", "flux"):
        return build_transformer_controlnet(spec)
    return build_unet_controlnet(spec)


def build_transformer_controlnet(spec: ControlNetModelSpec) -> Any:
    """``spec``'s SD3 or Flux ControlNet: its family's tiny transformer config (the same
    layers, the control image entering as VAE latents), its shared layers copied from the base
    models' transformer (seed 3) as diffusers' ``from_transformer`` does (where the shapes
    agree: SD3's last base block drops its context outputs, the net's does not), and the layers
    diffusers zero-initialises (the per-block output projections, and the control input's
    embedding: SD3's ``pos_embed_input``, Flux's ``controlnet_x_embedder``) given PyTorch's
    default init from ``spec.seed`` instead, so the net changes the image at weight 1."""
    import torch
    from diffusers import (
        FluxControlNetModel,
        FluxTransformer2DModel,
        SD3ControlNetModel,
        SD3Transformer2DModel,
    )

    if spec.family == "sd3":
        transformer = _seeded(3, lambda: SD3Transformer2DModel(**SD3_TRANSFORMER))
        net = _seeded(spec.seed, lambda: SD3ControlNetModel(**SD3_TRANSFORMER))
        shared = ["pos_embed", "time_text_embed", "context_embedder", "transformer_blocks"]
        outputs = [*net.controlnet_blocks, net.pos_embed_input.proj]
    else:
        transformer = _seeded(3, lambda: FluxTransformer2DModel(**FLUX_TRANSFORMER))
        net = _seeded(spec.seed, lambda: FluxControlNetModel(**FLUX_TRANSFORMER))
        shared = [
            "pos_embed",
            "time_text_embed",
            "context_embedder",
            "x_embedder",
            "transformer_blocks",
            "single_transformer_blocks",
        ]
        outputs = [*net.controlnet_blocks, *net.controlnet_single_blocks]
        outputs.append(net.controlnet_x_embedder)
    for name in shared:  # tensors of the same name and shape (SD3's last base block differs)
        own = getattr(net, name).state_dict()
        copied = {
            k: v
            for k, v in getattr(transformer, name).state_dict().items()
            if k in own and own[k].shape == v.shape
        }
        getattr(net, name).load_state_dict(copied, strict=False)
    torch.manual_seed(spec.seed)
    with torch.no_grad():
        for layer in outputs:
            layer.reset_parameters()
    return net


def build_unet_controlnet(spec: ControlNetModelSpec) -> Any:
    """``spec``'s sd15 or sdxl ControlNet: the encoder half of its family's UNet (seed 3, as
    the base models'), copied as ControlNet training starts, with the layers a trained ControlNet
    learns seeded instead of zero (``spec.seed``): every convolution of the conditioning
    embedding He-normal with zero bias (a black control pixel adds nothing), its last one
    scaled by :data:`CONTROLNET_EMBEDDING_GAIN`; the output convolutions after each block
    PyTorch's default init scaled by :data:`CONTROLNET_OUTPUT_GAIN`, zero bias. Zero-initialised
    (as diffusers makes them) a ControlNet changes nothing at any weight."""
    import torch
    from diffusers import ControlNetModel, UNet2DConditionModel

    config, _ = LORA_UNETS[spec.family]
    unet = _seeded(3, lambda: UNet2DConditionModel(**config))
    net = ControlNetModel.from_unet(
        unet, conditioning_embedding_out_channels=CONTROLNET_EMBEDDING_CHANNELS
    )
    torch.manual_seed(spec.seed)
    embedding = net.controlnet_cond_embedding
    with torch.no_grad():
        for conv in [embedding.conv_in, *embedding.blocks, embedding.conv_out]:
            torch.nn.init.kaiming_normal_(conv.weight, nonlinearity="relu")
            conv.bias.zero_()
        embedding.conv_out.weight.mul_(CONTROLNET_EMBEDDING_GAIN)
        for conv in [*net.controlnet_down_blocks, net.controlnet_mid_block]:
            conv.reset_parameters()
            conv.weight.mul_(CONTROLNET_OUTPUT_GAIN)
            conv.bias.zero_()
    return net


def build_controlnet(spec: ControlNetModelSpec, out: Path) -> registry.ModelEntry:
    """Build ``spec`` into ``out`` (replaced), registered with a ``kind: "controlnet"``
    manifest naming its ``family`` and ``controlnet_type``."""
    import torch

    with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.name}-") as tmp:
        staging = Path(tmp) / out.name
        with torch.random.fork_rng(devices=[]):  # leave the caller's global RNG as it was
            net = build_controlnet_model(spec)
        net.save_pretrained(staging, safe_serialization=True)
        entry = registry.write_manifest(
            staging,
            id=spec.id,
            family=spec.family,
            pipeline=CONTROLNET_CLASSES[spec.family],
            kind="controlnet",
            tier=2,
            created=CREATED,
            controlnet_type=spec.controlnet_type,
        )
        if out.exists():
            shutil.rmtree(out)
        os.replace(staging, out)
    return entry


def _has_valid_manifest(folder: Path) -> bool:
    try:
        registry.verify(folder)
    except Exception:
        return False
    return True


def build_model(spec: Spec, out: Path) -> registry.ModelEntry:
    """Build ``spec`` into ``out`` (replaced), registered with its ``model.json``."""
    import torch

    with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.name}-") as tmp:
        staging = Path(tmp) / out.name
        with torch.random.fork_rng(devices=[]):  # leave the caller's global RNG as it was
            pipe = spec.build()
        pipe.save_pretrained(staging, safe_serialization=True)
        entry = registry.write_manifest(
            staging,
            id=spec.id,
            family=spec.family,
            default_size=SIZE,
            default_steps=spec.default_steps,
            default_guidance=spec.default_guidance,
            kind="base",
            tier=spec.tier,
            samplers=supported(spec.family),
            created=CREATED,
        )
        if out.exists():
            shutil.rmtree(out)
        os.replace(staging, out)
    return entry


def build_all(
    out_dir: Path, only: Iterable[str] | None = None, force: bool = False
) -> dict[str, Path]:
    """Build the zoo (base models, LoRAs and ControlNets, or the ids in ``only``) under
    ``out_dir``; skip a folder that already holds a valid manifest unless ``force``. Returns
    model id -> folder."""
    out_dir.mkdir(parents=True, exist_ok=True)
    wanted = list(only) if only else [*MODELS, *LORAS, *CONTROLNETS]
    unknown = sorted(set(wanted) - MODELS.keys() - LORAS.keys() - CONTROLNETS.keys())
    if unknown:
        raise ValueError(
            f"unknown model ids {unknown}; known: {sorted([*MODELS, *LORAS, *CONTROLNETS])}"
        )
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    folders = {}
    for model_id in wanted:
        folder = out_dir / model_id
        if force or not _has_valid_manifest(folder):
            if model_id in LORAS:
                build_lora(LORAS[model_id], folder)
            elif model_id in CONTROLNETS:
                build_controlnet(CONTROLNETS[model_id], folder)
            else:
                build_model(MODELS[model_id], folder)
            print(f"built {folder}", file=sys.stderr)
        else:
            print(f"kept {folder} (valid model.json; --force rebuilds)", file=sys.stderr)
        keep_pristine(folder)
        folders[model_id] = folder
    return folders


PRISTINE = ".pristine"  # beside the models: the copies a worker repairs corrupted files from


def keep_pristine(folder: Path) -> None:
    """Keep a pristine copy of a (just verified) model under ``<models>/.pristine/<id>`` and
    name it as the manifest's ``source``, so a worker that finds a file corrupted repairs it
    from there (ADR 0707). A copy that no longer verifies, or holds other files than the model
    (a model rebuilt with ``--force`` after a change), is made again."""
    import json

    copy = folder.parent / PRISTINE / folder.name
    if not _has_valid_manifest(copy) or (
        registry.read_manifest(copy).files != registry.read_manifest(folder).files
    ):
        if copy.exists():
            shutil.rmtree(copy)
        copy.parent.mkdir(parents=True, exist_ok=True)
        shutil.copytree(folder, copy)
    manifest = folder / registry.MANIFEST
    doc = json.loads(manifest.read_text())
    source = f"../{PRISTINE}/{folder.name}"
    if doc.get("source") != source:
        doc["source"] = source
        manifest.write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m imagegen_model_zoo", description=__doc__)
    parser.add_argument("--out", type=Path, default=DEFAULT_MODELS_DIR)
    parser.add_argument("--force", action="store_true", help="rebuild models already built")
    parser.add_argument(
        "--only",
        nargs="+",
        choices=sorted([*MODELS, *LORAS, *CONTROLNETS]),
        help="these models only",
    )
    args = parser.parse_args(argv)
    build_all(args.out, args.only, args.force)
    return 0

"""Write a diffusers pipeline folder as one original-layout single-file checkpoint.

    python -m imagegen_model_zoo.single_file FOLDER OUT.safetensors

The file uses the key layout of the original Stable Diffusion checkpoints (the one
``from_single_file`` reads), so the registry's single-file path (``imagegen models register
--path x.safetensors --config FOLDER``; ``registry.open_pipeline``) can be tested with the zoo's
tiny models, offline:

* ``sd15`` (``StableDiffusionPipeline``), like ``v1-5-pruned-emaonly.safetensors``: the UNet
  under ``model.diffusion_model.``, the VAE under ``first_stage_model.``, the CLIP text encoder
  under ``cond_stage_model.transformer.``;
* ``sdxl`` (``StableDiffusionXLPipeline``), like ``sd_xl_base_1.0.safetensors``: the same UNet
  and VAE prefixes, the CLIP text encoder under ``conditioner.embedders.0.transformer.`` and the
  second (OpenCLIP) one under ``conditioner.embedders.1.model.``, with its attention's q, k, v
  projections stacked into one ``in_proj`` and its text projection transposed.

The block numbering (the LDM UNet's ``input_blocks`` / ``middle_block`` / ``output_blocks``,
the VAE's ``down.N`` / reversed ``up.N``) follows the folder's own configs, so any
``layers_per_block`` and block count convert. Every tensor is renamed (stacked, transposed or
given unit dimensions where the layouts differ), its values never changed: the file holds the
folder's weights in their stored dtype. A weight the mapping does not know raises
:class:`ConvertError` naming it; nothing is dropped.

Written from the key mapping of diffusers' ``scripts/convert_diffusers_to_original_sdxl.py``
and ``scripts/convert_diffusers_to_original_stable_diffusion.py``, checked against the reverse
direction in ``diffusers/loaders/single_file_utils.py`` (what must accept the file). The
schedulers and tokenizers are not in a single-file checkpoint: they come from the config folder
it is registered with.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
CLIP_PREFIX = {
    "sd15": "cond_stage_model.transformer.",
    "sdxl": "conditioner.embedders.0.transformer.",
}
OPEN_CLIP_PREFIX = "conditioner.embedders.1.model."  # SDXL's second text encoder

# Pipeline class (model_index.json's _class_name) -> family.
PIPELINES = {"StableDiffusionPipeline": "sd15", "StableDiffusionXLPipeline": "sdxl"}
# Family -> (component folder, its weights file) the checkpoint holds.
COMPONENTS = {
    "sd15": [
        ("unet", "diffusion_pytorch_model.safetensors"),
        ("vae", "diffusion_pytorch_model.safetensors"),
        ("text_encoder", "model.safetensors"),
    ],
    "sdxl": [
        ("unet", "diffusion_pytorch_model.safetensors"),
        ("vae", "diffusion_pytorch_model.safetensors"),
        ("text_encoder", "model.safetensors"),
        ("text_encoder_2", "model.safetensors"),
    ],
}


class ConvertError(ValueError):
    """The folder cannot be written as a single file: not sd15/sdxl, a weights file missing or
    not safetensors, or a weight the key mapping does not know."""


# -- UNet -------------------------------------------------------------------------------------

UNET_TOP = {
    "time_embedding.linear_1": "time_embed.0",
    "time_embedding.linear_2": "time_embed.2",
    "conv_in": "input_blocks.0.0",
    "conv_norm_out": "out.0",
    "conv_out": "out.2",
    "add_embedding.linear_1": "label_emb.0.0",  # SDXL's size/crop/pooled-text embedding
    "add_embedding.linear_2": "label_emb.0.2",
}
UNET_RESNET = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "time_emb_proj": "emb_layers.1",
    "conv_shortcut": "skip_connection",
}
_UNET_BLOCK = re.compile(r"(down|up)_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)")
_UNET_SAMPLER = re.compile(r"(down|up)_blocks\.(\d+)\.(downsamplers|upsamplers)\.0\.conv\.(.+)")
_UNET_MID = re.compile(r"mid_block\.(resnets|attentions)\.(\d+)\.(.+)")


def _resnet(rest: str, names: dict[str, str]) -> str:
    """``rest`` (``conv1.weight``) with its layer renamed by ``names``."""
    layer, _, tail = rest.partition(".")
    if layer not in names:
        raise KeyError(layer)
    return f"{names[layer]}.{tail}"


def unet_key(name: str, config: dict[str, Any]) -> str:
    """The LDM UNet's name (``input_blocks.1.0.in_layers.0.weight``, no prefix) of a diffusers
    UNet2DConditionModel weight, for the UNet's ``config``. Attention blocks keep their inner
    names (``transformer_blocks.0.attn1.to_q.weight``): both layouts use the same ones."""
    per_block = config["layers_per_block"]
    if not isinstance(per_block, int):
        raise ConvertError(f"layers_per_block {per_block!r}: only one number for every block")
    top, _, param = name.rpartition(".")
    if top in UNET_TOP:
        return f"{UNET_TOP[top]}.{param}"
    if m := _UNET_BLOCK.fullmatch(name):
        side, block, kind, layer, rest = m[1], int(m[2]), m[3], int(m[4]), m[5]
        if side == "down":  # input_blocks.0 is conv_in; each block adds a downsampler but last
            index, where = 1 + block * (per_block + 1) + layer, "input_blocks"
        else:  # each up block has one layer more than a down block (the skip of its sampler)
            index, where = block * (per_block + 1) + layer, "output_blocks"
        if kind == "resnets":
            return f"{where}.{index}.0.{_resnet(rest, UNET_RESNET)}"
        return f"{where}.{index}.1.{rest}"
    if m := _UNET_SAMPLER.fullmatch(name):
        side, block, rest = m[1], int(m[2]), m[4]
        if side == "down":
            return f"input_blocks.{1 + block * (per_block + 1) + per_block}.0.op.{rest}"
        # the upsampler follows the last layer's resnet (.0) and, in a cross-attention block,
        # its attention (.1)
        slot = 2 if "CrossAttn" in config["up_block_types"][block] else 1
        return f"output_blocks.{block * (per_block + 1) + per_block}.{slot}.conv.{rest}"
    if m := _UNET_MID.fullmatch(name):
        kind, layer, rest = m[1], int(m[2]), m[3]
        if kind == "resnets":  # resnet, attention, resnet
            return f"middle_block.{2 * layer}.{_resnet(rest, UNET_RESNET)}"
        return f"middle_block.{2 * layer + 1}.{rest}"
    raise KeyError(name)


# -- VAE --------------------------------------------------------------------------------------

VAE_TOP = {
    "encoder.conv_in": "encoder.conv_in",
    "encoder.conv_out": "encoder.conv_out",
    "encoder.conv_norm_out": "encoder.norm_out",
    "decoder.conv_in": "decoder.conv_in",
    "decoder.conv_out": "decoder.conv_out",
    "decoder.conv_norm_out": "decoder.norm_out",
    "quant_conv": "quant_conv",
    "post_quant_conv": "post_quant_conv",
}
VAE_RESNET = {n: n for n in ("norm1", "conv1", "norm2", "conv2")} | {
    "conv_shortcut": "nin_shortcut"
}
VAE_ATTENTION = {
    "group_norm": "norm",
    "to_q": "q",
    "to_k": "k",
    "to_v": "v",
    "to_out.0": "proj_out",
}
_VAE_BLOCK = re.compile(r"(encoder\.down|decoder\.up)_blocks\.(\d+)\.resnets\.(\d+)\.(.+)")
_VAE_SAMPLER = re.compile(
    r"(encoder\.down|decoder\.up)_blocks\.(\d+)\.(?:down|up)samplers\.0\.(.+)"
)
_VAE_MID_RESNET = re.compile(r"(encoder|decoder)\.mid_block\.resnets\.(\d+)\.(.+)")
_VAE_MID_ATTENTION = re.compile(r"(encoder|decoder)\.mid_block\.attentions\.0\.(.+)\.(weight|bias)")


def vae_key(name: str, config: dict[str, Any]) -> str:
    """The LDM autoencoder's name (``decoder.up.3.block.0.conv1.weight``, no prefix) of a
    diffusers AutoencoderKL weight; the decoder's up blocks count down (``up.N`` is the diffusers
    ``up_blocks.{last - N}``)."""
    last = len(config["up_block_types"]) - 1
    top, _, param = name.rpartition(".")
    if top in VAE_TOP:
        return f"{VAE_TOP[top]}.{param}"
    if m := _VAE_BLOCK.fullmatch(name):
        side, block, layer, rest = m[1], int(m[2]), int(m[3]), m[4]
        index = block if side == "encoder.down" else last - block
        return f"{side}.{index}.block.{layer}.{_resnet(rest, VAE_RESNET)}"
    if m := _VAE_SAMPLER.fullmatch(name):
        side, block, rest = m[1], int(m[2]), m[3]
        if side == "encoder.down":
            return f"encoder.down.{block}.downsample.{rest}"
        return f"decoder.up.{last - block}.upsample.{rest}"
    if m := _VAE_MID_RESNET.fullmatch(name):
        return f"{m[1]}.mid.block_{int(m[2]) + 1}.{_resnet(m[3], VAE_RESNET)}"
    if m := _VAE_MID_ATTENTION.fullmatch(name):
        return f"{m[1]}.mid.attn_1.{VAE_ATTENTION[m[2]]}.{m[3]}"
    raise KeyError(name)


def _vae_tensor(ldm_name: str, tensor: Any) -> Any:
    """The LDM autoencoder's mid attention is four 1x1 convolutions where diffusers has linear
    layers: their weights get two trailing unit dimensions."""
    if ".mid.attn_1." in ldm_name and not ldm_name.endswith(("norm.weight", "bias")):
        return tensor.reshape(*tensor.shape, 1, 1)
    return tensor


# -- Text encoders ----------------------------------------------------------------------------


def clip_key(name: str) -> str:
    """The original checkpoint's name of a transformers CLIPTextModel weight, under its
    ``text_model.`` (transformers >= 5.6 saves CLIPTextModel without it)."""
    return name if name.startswith("text_model.") else f"text_model.{name}"


OPEN_CLIP_TOP = {
    "embeddings.token_embedding.weight": "token_embedding.weight",
    "embeddings.position_embedding.weight": "positional_embedding",
    "final_layer_norm.weight": "ln_final.weight",
    "final_layer_norm.bias": "ln_final.bias",
}
OPEN_CLIP_LAYER = {
    "layer_norm1": "ln_1",
    "layer_norm2": "ln_2",
    "mlp.fc1": "mlp.c_fc",
    "mlp.fc2": "mlp.c_proj",
    "self_attn.out_proj": "attn.out_proj",
}
_OPEN_CLIP_LAYER = re.compile(r"encoder\.layers\.(\d+)\.(.+)\.(weight|bias)")
_QKV = re.compile(r"encoder\.layers\.(\d+)\.self_attn\.([qkv])_proj\.(weight|bias)")


def open_clip_state(tensors: dict[str, Any]) -> dict[str, Any]:
    """A transformers CLIPTextModelWithProjection's weights in OpenCLIP's names (no prefix):
    each layer's q, k, v projections stacked (in that order) into ``attn.in_proj_weight`` /
    ``in_proj_bias``, the text projection transposed (OpenCLIP multiplies ``x @ proj``)."""
    import torch

    out: dict[str, Any] = {}
    qkv: dict[tuple[int, str], dict[str, Any]] = {}
    for name, tensor in tensors.items():
        inner = name.removeprefix("text_model.")
        before = len(out)
        if inner == "text_projection.weight":
            out["text_projection"] = tensor.T.contiguous()
        elif inner in OPEN_CLIP_TOP:
            out[OPEN_CLIP_TOP[inner]] = tensor
        elif m := _QKV.fullmatch(inner):
            qkv.setdefault((int(m[1]), m[3]), {})[m[2]] = tensor
        elif (m := _OPEN_CLIP_LAYER.fullmatch(inner)) and m[2] in OPEN_CLIP_LAYER:
            out[f"transformer.resblocks.{m[1]}.{OPEN_CLIP_LAYER[m[2]]}.{m[3]}"] = tensor
        else:
            raise KeyError(name)
        if len(out) == before and not _QKV.fullmatch(inner):
            raise ConvertError(f"{name} and another weight map to one OpenCLIP name")
    for (layer, param), parts in sorted(qkv.items()):
        if sorted(parts) != ["k", "q", "v"]:
            raise ConvertError(
                f"layer {layer}: q, k and v {param}s expected, found {sorted(parts)}"
            )
        stacked = torch.cat([parts["q"], parts["k"], parts["v"]])
        out[f"transformer.resblocks.{layer}.attn.in_proj_{param}"] = stacked
    return out


# -- The checkpoint ---------------------------------------------------------------------------


def family_of(folder: Path) -> str:
    """The family (``sd15`` / ``sdxl``) of a diffusers folder, from its model_index.json."""
    index = folder / "model_index.json"
    if not index.is_file():
        raise ConvertError(f"{folder}: not a diffusers folder (no model_index.json)")
    name = json.loads(index.read_text()).get("_class_name")
    if name not in PIPELINES:
        raise ConvertError(f"{folder}: a {name}; only {sorted(PIPELINES)} convert to one file")
    return PIPELINES[name]


def _renamed(
    component: str, tensors: dict[str, Any], rename: Callable[[str], str], prefix: str
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, tensor in tensors.items():
        try:
            target = prefix + rename(name)
        except KeyError:
            raise ConvertError(f"{component}: no original-layout name for {name}") from None
        if target in out:
            raise ConvertError(f"{component}: {name} and another weight both map to {target}")
        out[target] = tensor
    return out


def checkpoint(folder: Path) -> dict[str, Any]:
    """The folder's UNet, VAE and text encoder weights under their original-layout names."""
    from safetensors.torch import load_file

    family = family_of(folder)
    state: dict[str, Any] = {}
    for component, weights in COMPONENTS[family]:
        path = folder / component / weights
        if not path.is_file():
            raise ConvertError(f"{path} does not exist (only safetensors weights convert)")
        tensors = load_file(path)
        config = json.loads((folder / component / "config.json").read_text())
        if component == "unet":
            part = _renamed(component, tensors, partial(unet_key, config=config), UNET_PREFIX)
        elif component == "vae":
            part = _renamed(component, tensors, partial(vae_key, config=config), VAE_PREFIX)
            part = {name: _vae_tensor(name, t) for name, t in part.items()}
        elif component == "text_encoder":
            part = _renamed(component, tensors, clip_key, CLIP_PREFIX[family])
        else:
            try:
                part = {OPEN_CLIP_PREFIX + n: t for n, t in open_clip_state(tensors).items()}
            except KeyError as exc:
                name = exc.args[0]
                raise ConvertError(f"{component}: no original-layout name for {name}") from None
        clash = state.keys() & part.keys()
        if clash:
            raise ConvertError(f"{component}: {sorted(clash)[0]} is already taken")
        state.update(part)
    return state


def convert(folder: Path, out: Path) -> Path:
    """Write ``folder`` (a diffusers sd15 / sdxl pipeline folder) as one original-layout
    ``.safetensors`` file at ``out`` (written to a temporary name, then moved there)."""
    from safetensors.torch import save_file

    state = checkpoint(Path(folder))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    save_file({k: state[k].contiguous() for k in sorted(state)}, tmp, metadata={"format": "pt"})
    tmp.replace(out)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m imagegen_model_zoo.single_file",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
    )
    parser.add_argument("folder", type=Path, help="a diffusers sd15 or sdxl pipeline folder")
    parser.add_argument("out", type=Path, help="the .safetensors file to write")
    args = parser.parse_args(argv)
    try:
        path = convert(args.folder, args.out)
    except ConvertError as exc:
        print(f"{parser.prog}: error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {path} ({family_of(args.folder)}, original layout)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

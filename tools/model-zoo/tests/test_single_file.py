"""The single-file converter writes a zoo model in the original checkpoints' key layout.

What it writes is loaded for real (``from_single_file`` through the worker's registry, the
image compared with the diffusers folder's) in tests/unit/test_models_register.py; here: the
names, shapes and values a checkpoint of that layout has, and what is refused.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from imagegen_gpu_worker.adapters import registry

torch = pytest.importorskip("torch")
from safetensors.torch import load_file, save_file  # noqa: E402

from imagegen_model_zoo import build, single_file  # noqa: E402

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def zoo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("zoo")
    build.build_all(root, only=["tiny-sd15", "tiny-sdxl"])
    return root


def component(folder: Path, name: str) -> dict[str, torch.Tensor]:
    files = {"unet": "diffusion_pytorch_model", "vae": "diffusion_pytorch_model"}
    return load_file(folder / name / f"{files.get(name, 'model')}.safetensors")


# Names of the original checkpoints (v1-5-pruned-emaonly, sd_xl_base_1.0) -> the tiny models'
# shapes. The tiny UNet has one layer per block, two blocks (cross-attention down, plain up
# first), so input_blocks.2 is the downsampler and output_blocks.1 ends with the upsampler.
SHARED = {
    "model.diffusion_model.input_blocks.0.0.weight": [8, 4, 3, 3],  # conv_in
    "model.diffusion_model.input_blocks.1.0.in_layers.0.weight": [8],  # a resnet's norm1
    "model.diffusion_model.input_blocks.1.1.proj_in.weight": [8, 8, 1, 1],
    "model.diffusion_model.input_blocks.2.0.op.weight": [8, 8, 3, 3],
    "model.diffusion_model.input_blocks.3.0.skip_connection.weight": [16, 8, 1, 1],
    "model.diffusion_model.middle_block.1.transformer_blocks.0.attn1.to_q.weight": [16, 16],
    "model.diffusion_model.middle_block.2.emb_layers.1.weight": [16, 32],
    "model.diffusion_model.output_blocks.1.1.conv.weight": [16, 16, 3, 3],  # the upsampler
    "model.diffusion_model.output_blocks.3.1.proj_out.weight": [8, 8, 1, 1],
    "model.diffusion_model.out.2.weight": [4, 8, 3, 3],  # conv_out
    "first_stage_model.encoder.down.2.block.0.nin_shortcut.weight": [16, 8, 1, 1],
    "first_stage_model.encoder.down.0.downsample.conv.weight": [8, 8, 3, 3],
    "first_stage_model.encoder.mid.block_2.conv2.weight": [16, 16, 3, 3],
    "first_stage_model.decoder.up.3.block.0.conv1.weight": [16, 16, 3, 3],  # up_blocks.0
    "first_stage_model.decoder.up.1.block.0.nin_shortcut.weight": [8, 16, 1, 1],  # up_blocks.2
    "first_stage_model.decoder.up.1.upsample.conv.weight": [8, 8, 3, 3],
    "first_stage_model.decoder.norm_out.weight": [8],
    "first_stage_model.post_quant_conv.weight": [4, 4, 1, 1],
}
NAMES = {
    "tiny-sd15": {
        **SHARED,
        "cond_stage_model.transformer.text_model.embeddings.position_embedding.weight": [77, 32],
        "cond_stage_model.transformer.text_model.final_layer_norm.weight": [32],
    },
    "tiny-sdxl": {
        **SHARED,
        "model.diffusion_model.label_emb.0.0.weight": [32, 80],  # add_embedding
        "conditioner.embedders.0.transformer.text_model.encoder.layers.1.mlp.fc2.weight": [32, 64],
        "conditioner.embedders.1.model.positional_embedding": [77, 32],
        "conditioner.embedders.1.model.token_embedding.weight": [514, 32],
        "conditioner.embedders.1.model.transformer.resblocks.1.attn.in_proj_weight": [96, 32],
        "conditioner.embedders.1.model.transformer.resblocks.1.attn.in_proj_bias": [96],
        "conditioner.embedders.1.model.transformer.resblocks.0.ln_2.bias": [32],
        "conditioner.embedders.1.model.transformer.resblocks.0.mlp.c_fc.weight": [64, 32],
        "conditioner.embedders.1.model.ln_final.weight": [32],
        "conditioner.embedders.1.model.text_projection": [32, 32],
    },
}


@pytest.mark.parametrize("model_id", ["tiny-sd15", "tiny-sdxl"])
def test_every_weight_is_written_under_its_original_name(
    zoo: Path, tmp_path: Path, model_id: str
) -> None:
    folder = zoo / model_id
    out = single_file.convert(folder, tmp_path / "a.safetensors")
    state = load_file(out)
    for name, shape in NAMES[model_id].items():
        assert list(state[name].shape) == shape, name

    parts = {
        p: component(folder, p) for p, _ in single_file.COMPONENTS[single_file.family_of(folder)]
    }
    # renamed, never changed: the same tensors under the new names
    unet, vae = parts["unet"], parts["vae"]
    assert torch.equal(
        state["model.diffusion_model.input_blocks.2.0.op.bias"],
        unet["down_blocks.0.downsamplers.0.conv.bias"],
    )
    assert torch.equal(
        state["first_stage_model.decoder.up.3.block.0.conv1.weight"],
        vae["decoder.up_blocks.0.resnets.0.conv1.weight"],
    )
    stacked = 0
    if "text_encoder_2" in parts:  # OpenCLIP: q, k, v stacked; the projection transposed
        enc = parts["text_encoder_2"]
        layer = "text_model.encoder.layers.1.self_attn"
        qkv = [enc[f"{layer}.{x}_proj.weight"] for x in "qkv"]
        assert torch.equal(
            state["conditioner.embedders.1.model.transformer.resblocks.1.attn.in_proj_weight"],
            torch.cat(qkv),
        )
        assert torch.equal(
            state["conditioner.embedders.1.model.text_projection"],
            enc["text_projection.weight"].T,
        )
        stacked = 2 * 2 * 2  # per layer, weight and bias: three tensors became one
    assert len(state) == sum(len(p) for p in parts.values()) - stacked  # nothing left out
    assert sum(t.numel() for t in state.values()) == sum(
        t.numel() for p in parts.values() for t in p.values()
    )
    prefixes = ("model.diffusion_model.", "first_stage_model.", "cond_stage_model.", "conditioner.")
    assert all(name.startswith(prefixes) for name in state)

    again = single_file.convert(folder, tmp_path / "b.safetensors")
    assert registry.sha256_file(again) == registry.sha256_file(out)  # reproducible


def test_what_cannot_be_converted_is_refused_naming_why(zoo: Path, tmp_path: Path) -> None:
    other = tmp_path / "sd3"
    other.mkdir()
    (other / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusion3Pipeline"}))
    with pytest.raises(single_file.ConvertError, match="a StableDiffusion3Pipeline; only"):
        single_file.convert(other, tmp_path / "x.safetensors")
    with pytest.raises(single_file.ConvertError, match="no model_index.json"):
        single_file.convert(tmp_path, tmp_path / "x.safetensors")

    odd = tmp_path / "odd"
    shutil.copytree(zoo / "tiny-sd15", odd)
    weights = odd / "unet" / "diffusion_pytorch_model.safetensors"
    unet = load_file(weights)
    unet["class_embedding.linear_1.weight"] = torch.zeros(32, 32)  # a class-conditioned UNet
    save_file(unet, weights)
    with pytest.raises(single_file.ConvertError, match="unet: no original-layout name for class_"):
        single_file.convert(odd, tmp_path / "x.safetensors")
    weights.unlink()
    with pytest.raises(single_file.ConvertError, match="only safetensors weights"):
        single_file.convert(odd, tmp_path / "x.safetensors")
    assert not (tmp_path / "x.safetensors").exists()  # nothing half-written


def test_the_command_line_writes_the_file_or_exits_2(
    zoo: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "one.safetensors"
    assert single_file.main([str(zoo / "tiny-sd15"), str(out)]) == 0
    assert f"wrote {out} (sd15" in capsys.readouterr().err
    assert "model.diffusion_model.out.2.bias" in load_file(out)
    assert single_file.main([str(tmp_path), str(tmp_path / "two.safetensors")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "error:" in err and "no model_index.json" in err

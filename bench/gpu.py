"""GPU benchmark: an SDXL-architecture pipeline with random weights, through the worker's own
accelerator code (``imagegen_gpu_worker.adapters.accel``, ADR 0709).

    python -m bench gpu [--runs 5] [--compile] [--require-gpu] [--out FILE]
    python bench/gpu.py ...                     (the same, without the bench package)
    python -m bench gpu --device cpu --tiny     (the same code path on models/tiny-sdxl's configs)

What it builds: ``StableDiffusionXLPipeline`` from the SDXL base 1.0 component configs written
below (UNet 2.57 B parameters, VAE 83.7 M, CLIP ViT-L and OpenCLIP bigG text encoders; no
download, random weights drawn from ``--seed``), a local byte-level CLIP tokenizer, put on the
device in the dtype the worker's plan chooses (fp16 on CUDA), with the plan applied (SDPA
attention, channels_last, ``torch.compile`` with ``--compile``). ``--tiny`` reads the component
configs from ``models/tiny-sdxl`` (``make models``) instead; everything after is the same.

What it measures (medians over ``--runs``, each timed with the device synchronised):

- ``image_s``: one ``--size``² image, ``--steps`` steps, classifier-free guidance (the
  pipeline call: text encoding, denoising, VAE decode, PIL image), after warm-up runs;
- ``swap_out_s`` / ``swap_in_s``: the worker's RAM-tier moves (``accel.to_ram`` into pinned
  host memory, ``accel.to_device`` back), and ``swap_in_pageable_s`` for the same move back from
  pageable memory; ``swap_roundtrip_identical`` says whether an image after the swaps equals one
  before (``image_finite``: whether its pixels are finite; random fp16 weights may overflow,
  which changes no timing);
- LoRA (random, rank ``--lora-rank`` on the UNet's attention projections, diffusers' file
  format, loaded with ``load_lora_weights`` as the worker does): ``lora_load_s`` (the first),
  ``lora_switch_s`` (load a LoRA not loaded yet and make it the active one), ``lora_toggle_s``
  (``set_adapters`` between two loaded LoRAs: what the worker does per job, ADR 0704),
  ``image_after_lora_switch_s`` (the first image after: a compiled UNet recompiles here).

It prints one JSON document (and writes it to ``--out``): the figures, the goals (an H100-class
GPU: ≤ 1.5 s per image, swap ≤ 0.5 s, LoRA switch ≤ 0.3 s) and each median's ratio to its goal
(≤ 1 meets it). The goals apply to the full SDXL model on CUDA only; on ``--tiny`` or the CPU
they are printed for the shape of the report, marked ``goals_apply: false``.

Without CUDA (and without ``--device cpu --tiny``) it says so and exits 0, or 1 with
``--require-gpu``. It needs torch, diffusers, transformers (with tokenizers), peft and
safetensors, and imports the worker's accelerator module from this checkout when the worker
package is not installed (docs/gpu-bench.md: running it on the device machine).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
WORKER_SRC = ROOT / "services" / "gpu-worker" / "src"
TINY_MODEL = ROOT / "models" / "tiny-sdxl"
GOALS = {"image_s": 1.5, "swap_in_s": 0.5, "lora_switch_s": 0.3, "lora_toggle_s": 0.3}
PROMPT = "a lighthouse on a cliff at dusk, oil painting"
NEGATIVE = "blurry"
LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")
LORA_FILE = "pytorch_lora_weights.safetensors"

# stabilityai/stable-diffusion-xl-base-1.0: unet/config.json, vae/config.json,
# text_encoder/config.json, text_encoder_2/config.json, scheduler/scheduler_config.json
# (the values that differ from the classes' defaults, and the ones that define the sizes).
SDXL_UNET: dict[str, Any] = {
    "sample_size": 128,
    "in_channels": 4,
    "out_channels": 4,
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
    "block_out_channels": [320, 640, 1280],
    "layers_per_block": 2,
    "transformer_layers_per_block": [1, 2, 10],
    "attention_head_dim": [5, 10, 20],
    "cross_attention_dim": 2048,
    "use_linear_projection": True,
    "addition_embed_type": "text_time",
    "addition_time_embed_dim": 256,
    "projection_class_embeddings_input_dim": 2816,
    "norm_num_groups": 32,
    "act_fn": "silu",
    "flip_sin_to_cos": True,
    "freq_shift": 0,
}
SDXL_VAE: dict[str, Any] = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "block_out_channels": [128, 256, 512, 512],
    "layers_per_block": 2,
    "latent_channels": 4,
    "norm_num_groups": 32,
    "act_fn": "silu",
    "sample_size": 1024,
    "scaling_factor": 0.13025,
    "force_upcast": True,
}
SDXL_TEXT: dict[str, Any] = {  # CLIP ViT-L/14's text tower
    "vocab_size": 49408,
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "max_position_embeddings": 77,
    "hidden_act": "quick_gelu",
    "projection_dim": 768,
}
SDXL_TEXT_2: dict[str, Any] = {  # OpenCLIP ViT-bigG/14's text tower, with its projection
    "vocab_size": 49408,
    "hidden_size": 1280,
    "intermediate_size": 5120,
    "num_hidden_layers": 32,
    "num_attention_heads": 20,
    "max_position_embeddings": 77,
    "hidden_act": "gelu",
    "projection_dim": 1280,
}
SDXL_SCHEDULER: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "prediction_type": "epsilon",
    "steps_offset": 1,
    "timestep_spacing": "leading",
    "interpolation_type": "linear",
    "use_karras_sigmas": False,
}


def sdxl_configs() -> dict[str, dict[str, Any]]:
    """The SDXL base 1.0 component configs (copies)."""
    return {
        "unet": dict(SDXL_UNET),
        "vae": dict(SDXL_VAE),
        "text_encoder": dict(SDXL_TEXT),
        "text_encoder_2": dict(SDXL_TEXT_2),
        "scheduler": dict(SDXL_SCHEDULER),
    }


def tiny_configs(folder: Path) -> dict[str, dict[str, Any]]:
    """The component configs of a diffusers SDXL folder (``models/tiny-sdxl``)."""
    files = {
        "unet": "unet/config.json",
        "vae": "vae/config.json",
        "text_encoder": "text_encoder/config.json",
        "text_encoder_2": "text_encoder_2/config.json",
        "scheduler": "scheduler/scheduler_config.json",
    }
    missing = [name for name in files.values() if not (folder / name).is_file()]
    if missing:
        raise SystemExit(
            f"--tiny-model {folder}: {', '.join(missing)} not found; build it with `make models`"
        )
    return {key: json.loads((folder / name).read_text()) for key, name in files.items()}


def clip_tokenizer() -> Any:
    """A CLIP tokenizer over a byte-level BPE with no merges (514 tokens: every byte, with and
    without ``</w>``, and the two specials), padded to 77: the model zoo's, built here so the
    bench needs none of the project's packages."""
    from tokenizers import (
        Regex,
        Tokenizer,
        decoders,
        models,
        normalizers,
        pre_tokenizers,
        processors,
    )
    from transformers import CLIPTokenizer

    bos, eos = "<|startoftext|>", "<|endoftext|>"
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab: dict[str, int] = {}
    for token in [*alphabet, *(c + "</w>" for c in alphabet), bos, eos]:
        vocab.setdefault(token, len(vocab))
    tok = Tokenizer(
        models.BPE(
            vocab=vocab,
            merges=[],
            unk_token=eos,
            end_of_word_suffix="</w>",
            continuing_subword_prefix="",
        )
    )
    tok.normalizer = normalizers.Sequence(
        [normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()]
    )
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(
                Regex(r"""'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""),
                behavior="removed",
                invert=True,
            ),
            pre_tokenizers.ByteLevel(add_prefix_space=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A {eos}",
        pair=f"{bos} $A {eos} $B {eos}",
        special_tokens=[(bos, vocab[bos]), (eos, vocab[eos])],
    )
    return CLIPTokenizer(
        tokenizer_object=tok,
        bos_token=bos,
        eos_token=eos,
        unk_token=eos,
        pad_token=eos,
        model_max_length=77,
    )


def worker_modules() -> tuple[Any, Any, Any]:
    """(adapters.accel, adapters.cuda_memory, domain.accel) of the gpu-worker: the installed
    package, else this checkout's source (the device machine has none of our packages)."""
    try:
        import imagegen_gpu_worker  # noqa: F401
    except ImportError:
        sys.path.insert(0, str(WORKER_SRC))
    from imagegen_gpu_worker.adapters import accel, cuda_memory
    from imagegen_gpu_worker.domain import accel as domain_accel

    return accel, cuda_memory, domain_accel


def build_pipeline(configs: dict[str, dict[str, Any]], device: str, dtype: Any, seed: int) -> Any:
    """An SDXL pipeline from ``configs`` with random weights (seeded), made on ``device`` and
    cast to ``dtype``."""
    import torch
    from diffusers import (
        AutoencoderKL,
        EulerDiscreteScheduler,
        StableDiffusionXLPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    tokenizer, tokenizer_2 = clip_tokenizer(), clip_tokenizer()

    def seeded(offset: int, make: Callable[[], Any]) -> Any:
        torch.manual_seed(seed + offset)
        with torch.device(device):
            module = make()
        return module.to(dtype=dtype).eval()

    def text(config: dict[str, Any], cls: Any) -> Any:
        cfg = CLIPTextConfig.from_dict(config)
        cfg.bos_token_id, cfg.eos_token_id = tokenizer.bos_token_id, tokenizer.eos_token_id
        cfg.pad_token_id = tokenizer.pad_token_id
        if cfg.vocab_size < len(tokenizer):
            raise SystemExit(f"text encoder vocab_size {cfg.vocab_size} < {len(tokenizer)}")
        return cls(cfg)

    pipe = StableDiffusionXLPipeline(
        vae=seeded(1, lambda: AutoencoderKL.from_config(configs["vae"])),
        text_encoder=seeded(2, lambda: text(configs["text_encoder"], CLIPTextModel)),
        text_encoder_2=seeded(
            4, lambda: text(configs["text_encoder_2"], CLIPTextModelWithProjection)
        ),
        tokenizer=tokenizer,
        tokenizer_2=tokenizer_2,
        unet=seeded(3, lambda: UNet2DConditionModel.from_config(configs["unet"])),
        scheduler=EulerDiscreteScheduler.from_config(configs["scheduler"]),
        add_watermarker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def write_lora(unet: Any, rank: int, seed: int, folder: Path) -> int:
    """A random LoRA for ``unet`` (rank ``rank`` on every attention projection), written in
    diffusers' format (``unet.<module>.lora.down/up.weight``, as ``save_lora_weights`` writes
    it) to ``folder``; returns its bytes."""
    import torch
    from safetensors.torch import save_file

    generator = torch.Generator("cpu").manual_seed(seed)
    tensors: dict[str, Any] = {}
    for name, module in unet.named_modules():
        if not isinstance(module, torch.nn.Linear):
            continue
        if not any(name.endswith("." + t) for t in LORA_TARGETS):
            continue
        down = torch.randn(rank, module.in_features, generator=generator) / module.in_features**0.5
        up = torch.randn(module.out_features, rank, generator=generator) / rank**0.5 * 0.1
        dtype = module.weight.dtype
        tensors[f"unet.{name}.lora.down.weight"] = down.to(dtype).contiguous()
        tensors[f"unet.{name}.lora.up.weight"] = up.to(dtype).contiguous()
    folder.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(folder / LORA_FILE), metadata={"format": "pt"})
    return sum(t.numel() * t.element_size() for t in tensors.values())


def median(values: list[float]) -> float:
    return round(statistics.median(values), 4)


def run(args: argparse.Namespace) -> dict[str, Any]:  # noqa: C901 (a numbered script)
    """The measurements (see the module docstring); returns the report."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    accel, cuda_memory, domain_accel = worker_modules()
    import diffusers
    import torch
    import transformers

    device = args.device
    on_cuda = device.startswith("cuda")

    def sync() -> None:
        if on_cuda:
            torch.cuda.synchronize()

    def timed(fn: Callable[[], Any]) -> float:
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        return time.perf_counter() - t0

    # 1. The worker's plan for an sdxl model on this device, and the pipeline built to it.
    settings = domain_accel.AccelSettings(
        dtype=args.dtype, compile=args.compile, compile_mode=args.compile_mode
    )
    plan = accel.plan_for(device, "sdxl", settings)
    configs = tiny_configs(args.tiny_model) if args.tiny else sdxl_configs()
    dtype = getattr(torch, accel.TORCH_DTYPES[plan.dtype])
    t0 = time.perf_counter()
    pipe = build_pipeline(configs, device, dtype, args.seed)
    applied = accel.apply(pipe, plan)
    sync()
    build_s = time.perf_counter() - t0
    params = {
        name: sum(p.numel() for p in module.parameters())
        for name, module in pipe.components.items()
        if isinstance(module, torch.nn.Module)
    }
    weights_bytes = sum(
        p.numel() * p.element_size()
        for module in pipe.components.values()
        if isinstance(module, torch.nn.Module)
        for p in module.parameters()
    )

    def image(steps: int = args.steps, output_type: str = "pil") -> Any:
        accel.prepare_run(pipe, "sdxl", device, settings, args.size, args.size)
        generator = torch.Generator("cpu").manual_seed(args.seed)
        with torch.inference_mode():
            return pipe(
                prompt=PROMPT,
                negative_prompt=NEGATIVE,
                width=args.size,
                height=args.size,
                num_inference_steps=steps,
                guidance_scale=args.guidance,
                generator=generator,
                output_type=output_type,
            )

    # 2. Images: warm-up (compilation happens here), then timed runs.
    warmups = [timed(image) for _ in range(args.warmup)]
    images = [timed(image) for _ in range(args.runs)]
    peak_allocated = torch.cuda.max_memory_allocated() if on_cuda else 0

    # 3. Swaps through the worker's RAM-tier moves: pinned, then pageable for comparison.
    import numpy as np

    before = image(steps=2, output_type="np").images
    swap_out, swap_in = [], []
    for _ in range(args.runs):
        swap_out.append(timed(lambda: accel.to_ram(pipe, plan.pin_ram_tier)))
        swap_in.append(timed(lambda: accel.to_device(pipe, device)))
    after = image(steps=2, output_type="np").images
    pageable_in = []
    for _ in range(args.runs):
        accel.to_ram(pipe, False)
        pageable_in.append(timed(lambda: accel.to_device(pipe, device)))
    host_pinned: dict[str, Any] = {}
    if on_cuda:
        try:
            stats = torch.cuda.host_memory_stats()
            host_pinned = {k: v for k, v in stats.items() if "bytes" in k and "current" in k}
        except Exception as exc:  # an older torch: report why there is none
            host_pinned = {"error": repr(exc)}

    # 4. LoRAs, loaded as the worker loads them (load_lora_weights, then set_adapters).
    with tempfile.TemporaryDirectory(prefix="gpu-bench-lora-") as tmp:
        folders = [Path(tmp) / f"lora{i}" for i in range(args.runs + 1)]
        lora_bytes = [
            write_lora(pipe.unet, args.lora_rank, args.seed + i, f) for i, f in enumerate(folders)
        ]

        def load(i: int) -> None:
            pipe.load_lora_weights(str(folders[i]), weight_name=LORA_FILE, adapter_name=f"l{i}")
            pipe.set_adapters([f"l{i}"], adapter_weights=[1.0])

        lora_load = timed(lambda: load(0))
        switches = []
        for i in range(1, args.runs + 1):
            switches.append(timed(lambda i=i: load(i)))  # type: ignore[misc]
            if i < args.runs:  # keep l0 and the last one loaded for the toggles
                pipe.delete_adapters(f"l{i}")
                pipe.set_adapters(["l0"], adapter_weights=[1.0])
        last = f"l{args.runs}"
        toggles = []
        for k in range(2 * args.runs):
            name = "l0" if k % 2 == 0 else last
            toggles.append(timed(lambda n=name: pipe.set_adapters([n], adapter_weights=[1.0])))
        image_after_switch = timed(image)
        image_with_lora = timed(image)

    memory: dict[str, Any] = {}
    if on_cuda:
        state = cuda_memory.read(torch)
        memory = {
            "total_bytes": state.total,
            "peak_allocated_bytes_images": peak_allocated,
            "allocated_bytes": state.allocated,
            "reserved_free_bytes": state.reserved_free,
            "largest_free_block_bytes": state.largest_free_block,
            "fragmentation_ratio": round(state.fragmentation_ratio, 4),
            "pinned_host": host_pinned,
        }

    figures = {
        "image_s": median(images),
        "swap_out_s": median(swap_out),
        "swap_in_s": median(swap_in),
        "swap_in_pageable_s": median(pageable_in),
        "lora_load_s": round(lora_load, 4),
        "lora_switch_s": median(switches),
        "lora_toggle_s": median(toggles),
        "image_after_lora_switch_s": round(image_after_switch, 4),
        "image_with_lora_s": round(image_with_lora, 4),
    }
    goals_apply = on_cuda and not args.tiny
    return {
        "bench": "gpu",
        "ran": True,
        "model": f"tiny-sdxl (configs of {args.tiny_model})" if args.tiny else "sdxl",
        "device": torch.cuda.get_device_name() if on_cuda else "cpu",
        "versions": {
            "torch": torch.__version__,
            "diffusers": diffusers.__version__,
            "transformers": transformers.__version__,
        },
        "settings": {
            "size": args.size,
            "steps": args.steps,
            "guidance": args.guidance,
            "runs": args.runs,
            "warmup": args.warmup,
            "lora_rank": args.lora_rank,
            "seed": args.seed,
        },
        "plan": {**applied, "dtype_reason": plan.dtype_reason},
        "params": params,
        "weights_bytes": weights_bytes,
        "build_s": round(build_s, 3),
        "warmup_image_s": [round(x, 4) for x in warmups],
        "runs": {
            "image_s": [round(x, 4) for x in images],
            "swap_out_s": [round(x, 4) for x in swap_out],
            "swap_in_s": [round(x, 4) for x in swap_in],
            "swap_in_pageable_s": [round(x, 4) for x in pageable_in],
            "lora_switch_s": [round(x, 4) for x in switches],
            "lora_toggle_s": [round(x, 5) for x in toggles],
        },
        "figures": figures,
        # Random fp16 weights may give NaN pixels: equal NaNs count as equal.
        "swap_roundtrip_identical": bool(np.array_equal(before, after, equal_nan=True)),
        "image_finite": bool(np.isfinite(before).all()),
        "lora_bytes": lora_bytes[0],
        "memory": memory,
        "goals": GOALS,
        "goals_apply": goals_apply,
        "vs_goal": {name: round(figures[name] / goal, 3) for name, goal in GOALS.items()},
        "meets_goal": {name: figures[name] <= goal for name, goal in GOALS.items()},
    }


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m bench gpu",
        description="SDXL-architecture GPU benchmark (see bench/gpu.py's docstring).",
    )
    p.add_argument("--device", default="cuda", help="cuda (default), cuda:N, or cpu with --tiny")
    p.add_argument("--tiny", action="store_true", help="the tiny SDXL configs, not SDXL's")
    p.add_argument("--tiny-model", type=Path, default=TINY_MODEL, help="folder of --tiny")
    p.add_argument("--size", type=int, default=1024, help="image side in pixels")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--guidance", type=float, default=5.0)
    p.add_argument("--runs", type=int, default=5, help="timed runs per figure (medians)")
    p.add_argument(
        "--warmup", type=int, default=None, help="untimed images (default 1, 2 compiled)"
    )
    p.add_argument("--dtype", default="auto", choices=["auto", "fp32", "fp16", "bf16"])
    p.add_argument("--compile", action="store_true", help="torch.compile the UNet")
    p.add_argument(
        "--compile-mode",
        default="default",
        choices=["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"],
    )
    p.add_argument("--lora-rank", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--require-gpu", action="store_true", help="exit 1 when CUDA is missing")
    p.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    return p


def _fail(message: str) -> int:
    print(f"bench gpu: {message}", file=sys.stderr)
    return 2


def main(argv: list[str]) -> int:
    args = parser().parse_args(argv)
    for name in ("size", "steps", "runs", "lora_rank"):
        if getattr(args, name) < 1:
            return _fail(f"--{name.replace('_', '-')} must be at least 1")
    if args.size % 8:
        return _fail(f"--size must be a multiple of 8, got {args.size}")
    if args.warmup is None:
        args.warmup = 2 if args.compile else 1
    if args.device == "cpu" and not args.tiny:
        return _fail("--device cpu runs only with --tiny (full SDXL on a CPU would take hours)")
    if not (args.device == "cpu" or args.device.startswith("cuda")):
        return _fail(f"--device must be cuda, cuda:N or cpu, got {args.device!r}")
    try:
        import torch
    except ImportError as exc:
        return _fail(f"torch is not importable here ({exc})")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        reason = (
            "no CUDA device here (torch.cuda.is_available() is False): the GPU bench did not run"
        )
        print(f"bench gpu: {reason}", file=sys.stderr)
        report = {"bench": "gpu", "ran": False, "reason": reason, "goals": GOALS}
        print(json.dumps(report, indent=2))
        return 1 if args.require_gpu else 0
    report = run(args)
    text = json.dumps(report, indent=2)
    print(text)
    if args.out is not None:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))

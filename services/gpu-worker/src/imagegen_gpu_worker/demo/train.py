"""Train the shapes demo model from nothing, on CPU, reproducibly from a seed.

    python -m imagegen_gpu_worker.demo.train --out models/shapes-demo --seed 0

Steps:

1. Render the training scenes (held-out triples never appear, see ``scenes.is_held_out``).
2. Train the VAE (64 px image <-> 4 x 16 x 16 latent). Besides reconstruction, the first three
   latent channels are pulled towards the 4x-downsampled image, which keeps the latent space
   smooth and image-like, so the diffusion model has an easy target.
3. Encode every scene once; set the VAE's ``scaling_factor`` so latents have unit variance.
4. Train the UNet and the text encoder together on v-prediction, with a fresh caption variant of
   each scene every time it is drawn and 10 % empty captions (classifier-free guidance).
   An exponential moving average of the weights is what gets saved.
5. Save a StableDiffusionPipeline folder and its ``model.json`` (sha256 of every file).

The default step counts take about 22 minutes on two idle CPU cores (61 minutes when the
cores were shared with other work).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import random
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

# Before torch starts OpenMP: idle threads sleep instead of spinning. On a shared 2-core
# machine spinning threads made each step 8x slower whenever another process was busy.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from imagegen_gpu_worker.demo import build, registry, scenes

CFG_DROPOUT = 0.1  # share of captions replaced by "" so the model also learns p(image)
SAVE_EVERY = 100  # steps between resumable snapshots (the machine is shared; runs get killed)


class Snapshots:
    """Resumable training state under ``folder``: a killed run restarted with the same
    arguments continues bit-for-bit where the last snapshot left off."""

    def __init__(self, folder: Path | None, key: dict[str, Any]) -> None:
        self.folder, self.key = folder, key

        self.t0 = time.monotonic()  # moved back on resume, so timings count work, not downtime

    def load(self, name: str) -> Any:
        if self.folder is None or not (self.folder / name).exists():
            return None
        data = torch.load(self.folder / name, weights_only=False)
        if data["key"] != self.key:
            return None
        self.t0 = min(self.t0, time.monotonic() - data["elapsed"])
        return data["value"]

    def save(self, name: str, value: Any) -> None:
        if self.folder is None:
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        tmp = self.folder / (name + ".tmp")
        elapsed = time.monotonic() - self.t0
        torch.save({"key": self.key, "elapsed": elapsed, "value": value}, tmp)
        tmp.replace(self.folder / name)  # atomic: a kill mid-write keeps the previous snapshot


def log(message: str, started: float) -> None:
    print(f"[{time.monotonic() - started:7.1f}s] {message}", flush=True)


def render_dataset(seed: int, n: int) -> tuple[list[scenes.Scene], torch.Tensor]:
    rng = random.Random(seed)
    items = [scenes.sample_scene(rng, "train") for _ in range(n)]
    pixels = np.stack([scenes.render_array(s) for s in items])  # n, 64, 64, 3 uint8
    return items, torch.from_numpy(pixels).permute(0, 3, 1, 2).contiguous()


def to_unit(pixels: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] -> float [-1, 1]"""
    return pixels.float().div(127.5).sub(1.0)


def cosine_lr(step: int, total: int, peak: float, warmup: int) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return peak * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress)))


def train_vae(
    pixels: torch.Tensor,
    steps: int,
    batch: int,
    gen: torch.Generator,
    t0: float,
    resume: dict[str, Any] | None,
    save: Any,
) -> Any:
    vae = build.build_vae()
    opt = torch.optim.AdamW(vae.parameters(), lr=2e-3, weight_decay=0.0)
    start = 0
    if resume is not None:
        vae.load_state_dict(resume["vae"])
        opt.load_state_dict(resume["opt"])
        gen.set_state(resume["gen"])
        start = resume["step"]
        log(f"resumed vae at step {start}", t0)
    for step in range(start, steps):
        for group in opt.param_groups:
            group["lr"] = cosine_lr(step, steps, 2e-3, 50)
        idx = torch.randint(0, len(pixels), (batch,), generator=gen)
        x = to_unit(pixels[idx])
        posterior = vae.encode(x).latent_dist
        z = posterior.mean + posterior.std * torch.randn(posterior.mean.shape, generator=gen)
        recon = vae.decode(z).sample
        anchor = F.avg_pool2d(x, 4)
        loss_rec = F.mse_loss(recon, x) + 0.5 * F.l1_loss(recon, x)
        loss_anchor = F.mse_loss(posterior.mean[:, :3], anchor)
        loss = loss_rec + 0.1 * loss_anchor + 1e-6 * posterior.kl().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        if step % 100 == 0 or step == steps - 1:
            rec, anchored = loss_rec.item(), loss_anchor.item()
            log(f"vae step {step}/{steps} rec {rec:.4f} anchor {anchored:.4f}", t0)
        if (step + 1) % SAVE_EVERY == 0 and step + 1 < steps:
            save(
                {
                    "stage": "vae",
                    "step": step + 1,
                    "vae": vae.state_dict(),
                    "opt": opt.state_dict(),
                    "gen": gen.get_state(),
                }
            )
    return vae.eval()


@torch.no_grad()
def encode_all(vae: Any, pixels: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    out = []
    for start in range(0, len(pixels), 256):
        posterior = vae.encode(to_unit(pixels[start : start + 256])).latent_dist
        out.append(
            posterior.mean + posterior.std * torch.randn(posterior.mean.shape, generator=gen)
        )
    return torch.cat(out)


def train_denoiser(
    latents: torch.Tensor,
    items: list[scenes.Scene],
    tokenizer: Any,
    steps: int,
    batch: int,
    seed: int,
    gen: torch.Generator,
    t0: float,
    checkpoint: Any,
    resume: dict[str, Any] | None,
    save: Any,
) -> tuple[Any, Any]:
    torch.manual_seed(seed + 2)  # same initial weights whether or not the VAE stage was resumed
    text_encoder = build.build_text_encoder(tokenizer)
    unet = build.build_unet()
    scheduler = build.build_scheduler()
    alphas = scheduler.alphas_cumprod.float()
    ema_unet, ema_text = copy.deepcopy(unet).eval(), copy.deepcopy(text_encoder).eval()
    params = list(unet.parameters()) + list(text_encoder.parameters())
    opt = torch.optim.AdamW(params, lr=1e-3, weight_decay=1e-2)
    caption_rng = random.Random(seed + 1)
    start = 0
    if resume is not None and resume["stage"] == "unet":
        for name, module in (
            ("unet", unet),
            ("text", text_encoder),
            ("ema_unet", ema_unet),
            ("ema_text", ema_text),
        ):
            module.load_state_dict(resume[name])
        opt.load_state_dict(resume["opt"])
        gen.set_state(resume["gen"])
        caption_rng.setstate(resume["caption_rng"])
        start = resume["step"]
        log(f"resumed unet at step {start}", t0)
    for step in range(start, steps):
        for group in opt.param_groups:
            group["lr"] = cosine_lr(step, steps, 1e-3, 100)
        idx = torch.randint(0, len(latents), (batch,), generator=gen)
        captions = [
            "" if caption_rng.random() < CFG_DROPOUT else scenes.describe(items[i], caption_rng)
            for i in idx.tolist()
        ]
        ids = tokenizer(
            captions,
            padding="max_length",
            max_length=build.MAX_LENGTH,
            truncation=True,
            return_tensors="pt",
        ).input_ids
        x0 = latents[idx]
        t = torch.randint(0, scheduler.config.num_train_timesteps, (batch,), generator=gen)
        noise = torch.randn(x0.shape, generator=gen)
        a = alphas[t].sqrt().view(-1, 1, 1, 1)
        s = (1 - alphas[t]).sqrt().view(-1, 1, 1, 1)
        noisy = a * x0 + s * noise
        target = a * noise - s * x0  # v-prediction
        hidden = text_encoder(ids)[0]
        pred = unet(noisy, t, hidden).sample
        loss = F.mse_loss(pred, target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        decay = min(0.998, (1 + step) / (10 + step))
        with torch.no_grad():
            for model, ema in ((unet, ema_unet), (text_encoder, ema_text)):
                for p, e in zip(model.parameters(), ema.parameters(), strict=True):
                    e.lerp_(p, 1 - decay)
        if step % 100 == 0 or step == steps - 1:
            log(f"unet step {step}/{steps} loss {loss.item():.4f}", t0)
        if (step + 1) % 1000 == 0 and step + 1 < steps:
            checkpoint(step + 1, ema_unet, ema_text)
        if (step + 1) % SAVE_EVERY == 0 and step + 1 < steps:
            save(
                {
                    "stage": "unet",
                    "step": step + 1,
                    "unet": unet.state_dict(),
                    "text": text_encoder.state_dict(),
                    "ema_unet": ema_unet.state_dict(),
                    "ema_text": ema_text.state_dict(),
                    "opt": opt.state_dict(),
                    "gen": gen.get_state(),
                    "caption_rng": caption_rng.getstate(),
                }
            )
    return ema_unet, ema_text


def save_pipeline(out: Path, vae: Any, text_encoder: Any, tokenizer: Any, unet: Any) -> None:
    from diffusers import StableDiffusionPipeline

    if out.exists():
        shutil.rmtree(out)
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=build.build_scheduler(),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(out, safe_serialization=True)
    registry.write_manifest(out)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("models/shapes-demo"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--scenes", type=int, default=30000, help="distinct training scenes")
    parser.add_argument("--vae-steps", type=int, default=600)
    parser.add_argument("--unet-steps", type=int, default=3600)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument(
        "--report",
        type=Path,
        default=Path("out/demo-model/train_report.json"),
        help="where to write timings and settings",
    )
    parser.add_argument(
        "--state",
        type=Path,
        default=Path("out/demo-model/train-state"),
        help="resumable snapshots; a rerun with the same arguments continues from them",
    )
    parser.add_argument(
        "--checkpoints",
        type=Path,
        default=None,
        help="also save the pipeline every 1000 UNet steps under this folder",
    )
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)

    for signum in (
        signal.SIGTERM,
        signal.SIGHUP,
    ):  # say why a run stopped; resume with the same command
        signal.signal(signum, lambda n, _: sys.exit(f"stopped by signal {n}; rerun to resume"))
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)

    key = {
        k: v
        for k, v in vars(args).items()
        if k in ("seed", "scenes", "vae_steps", "unet_steps", "batch", "threads")
    }
    snaps = Snapshots(args.state, key)
    state, encoded = snaps.load("state.pt"), snaps.load("latents.pt")
    resumed = state is not None or encoded is not None
    t0 = snaps.t0
    items, pixels = render_dataset(args.seed, args.scenes)
    log(f"rendered {len(items)} training scenes", t0)
    if encoded is None:
        vae = train_vae(
            pixels,
            args.vae_steps,
            args.batch,
            gen,
            t0,
            state,
            lambda value: snaps.save("state.pt", value),
        )
        latents = encode_all(vae, pixels, gen)
        std = latents.std().item()
        encoded = {"vae": vae.state_dict(), "latents": latents, "std": std, "gen": gen.get_state()}
        snaps.save("latents.pt", encoded)
    else:
        log("resumed from encoded latents", t0)
    t_vae = time.monotonic() - t0
    vae = build.build_vae()
    vae.load_state_dict(encoded["vae"])
    vae.eval()
    gen.set_state(encoded["gen"])
    std = encoded["std"]
    vae.register_to_config(scaling_factor=1.0 / std)
    latents = encoded["latents"] / std
    log(f"encoded latents, std {std:.4f}", t0)

    tokenizer_dir = Path(tempfile.mkdtemp(prefix="shapes-demo-tokenizer-"))
    tokenizer = build.build_tokenizer(tokenizer_dir)

    def checkpoint(step: int, unet: Any, text_encoder: Any) -> None:
        if args.checkpoints is not None:
            save_pipeline(args.checkpoints / f"step-{step}", vae, text_encoder, tokenizer, unet)
            log(f"checkpoint at step {step}", t0)

    unet, text_encoder = train_denoiser(
        latents,
        items,
        tokenizer,
        args.unet_steps,
        args.batch,
        args.seed,
        gen,
        t0,
        checkpoint,
        state if state is not None and state["stage"] == "unet" else None,
        lambda value: snaps.save("state.pt", value),
    )
    save_pipeline(args.out, vae, text_encoder, tokenizer, unet)
    shutil.rmtree(tokenizer_dir, ignore_errors=True)
    if args.state is not None:
        shutil.rmtree(args.state, ignore_errors=True)
    total = time.monotonic() - t0
    log(f"saved {args.out}", t0)
    report = {
        "command": "python -m imagegen_gpu_worker.demo.train " + " ".join(argv),
        "seed": args.seed,
        "scenes": args.scenes,
        "vae_steps": args.vae_steps,
        "unet_steps": args.unet_steps,
        "batch": args.batch,
        "threads": args.threads,
        "vae_seconds": round(t_vae, 1),
        "total_seconds": round(total, 1),
        "resumed": resumed,
        "latent_std": std,
    }
    args.report.parent.mkdir(parents=True, exist_ok=True)
    args.report.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()

"""Train the shapes demo model from nothing, on CPU, reproducibly from a seed.

    python -m imagegen_demo_model.train --out models/shapes-demo --seed 0

Steps:

1. Render the training scenes (held-out triples never appear, see ``scenes.is_held_out``) and
   write each into its layout map (``layout.encode``, 18 x 8 x 8): the latent space is fixed.
2. Train the VAE: the decoder renders layout maps, made imperfect the way guided samples are
   (``imperfect_maps``), into pixels, scored by squared and absolute error plus a palette term
   that makes every pixel commit to one named color; the encoder learns pixels -> layout.
3. At the same time, in this process, train the UNet and the text encoder together on
   v-prediction (the VAE stage runs in a child process: the two share nothing until the end,
   and each uses one thread, see docs/adr/0207), with a fresh caption variant of
   each scene every time it is drawn, empty captions for 20 % of the one-object scenes (10 % of
   all; classifier-free guidance, docs/adr/0208) and 5 %
   keyword captions ("red", "a red star", "blue background", so negative prompts mean
   something). A small auxiliary head reads the caption's attributes back from the text
   encoder's pooled output, which teaches the text encoder the caption grammar early; the head
   is thrown away. An exponential moving average of the weights is what gets saved.
4. Save a StableDiffusionPipeline folder and its ``model.json`` (sha256 of every file).
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
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, NoReturn

# Before torch starts OpenMP: idle threads sleep instead of spinning. On a shared 2-core
# machine spinning threads made each step 8x slower whenever another process was busy.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from imagegen_demo_model import build, layout, model, scenes

# Share of one-object scenes whose caption is replaced by "", so the model also learns p(image)
# (10 % of all captions). Two-object scenes always keep a caption: the empty-caption prediction
# then has one object, like a caption that names one, and guidance no longer subtracts the
# object from prompts that leave its color and position open (docs/adr/0208).
CFG_DROPOUT = 0.2
KEYWORDS = 0.05  # share of captions that are bare keywords ("red"), for negative prompts
AUX_WEIGHT = 0.5  # weight of the caption-attribute head's loss (see CaptionHead)
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


def training_scenes(seed: int, n: int) -> list[scenes.Scene]:
    rng = random.Random(seed)
    return [scenes.sample_scene(rng, "train") for _ in range(n)]


def render_dataset(seed: int, n: int) -> tuple[list[scenes.Scene], torch.Tensor]:
    items = training_scenes(seed, n)
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


PALETTE_SHARPNESS = 20.0  # logits = -sharpness x squared distance to each named color
PALETTE_WEIGHT = 0.1  # weight of the palette term in the decoder's loss


def palette_loss(recon: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of "which named color is this pixel": 0 only when each output pixel is
    nearer its true color than any other, which is what keeps edges crisp."""
    palette = to_unit(torch.tensor(list(scenes.COLORS.values()))).view(1, -1, 3, 1, 1)
    logits = -PALETTE_SHARPNESS * ((recon.unsqueeze(1) - palette) ** 2).sum(2)
    labels = ((target.unsqueeze(1) - palette) ** 2).sum(2).argmin(1)
    return F.cross_entropy(logits, labels)


def imperfect_maps(z: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Layout maps ``z`` (batch, 18, 8, 8) made to look like what the denoiser hands the decoder.

    With guidance 5 the sampled maps overshoot: presence peaks at 1.2-1.6 instead of 1, the
    named shape's channel at 1.5-2, the other shapes' go negative, colors and the background
    drift. A decoder trained on exact maps only drew hybrids from those (a square at 2.0 came
    out a triangle). So each map gets: one gain on every object channel (0.7-1.9), a bias on each
    shape channel that keeps the true shape ahead (-0.2..0.5 on it, -0.6..0.3 on the others,
    times presence), color, size and rotation drift, a brighter background with a tint, and
    per-cell noise up to 0.1. The target stays the exact rendering. Measured on 160 generated
    held-out maps: fine-tuning the committed decoder this way for 400 steps took it from 96 to
    105 correct, with exact maps still 60/60 (docs/adr/0207)."""

    def uniform(shape: tuple[int, ...], low: float, high: float) -> torch.Tensor:
        return low + (high - low) * torch.rand(shape, generator=gen)

    n = z.shape[0]
    z = z.clone()
    presence = z[:, 3:4].clamp(min=0.0)
    shapes = z[:, 7:12]
    true = (shapes >= shapes.amax(1, keepdim=True) - 1e-6) & (presence > 0)
    z[:, 3:16] *= uniform((n, 1, 1, 1), 0.7, 1.9)
    bias = torch.where(true, uniform((n, 5, 1, 1), -0.2, 0.5), uniform((n, 5, 1, 1), -0.6, 0.3))
    z[:, 7:12] += (bias + 0.1 * torch.randn(shapes.shape, generator=gen)) * presence
    z[:, 4:7] += uniform((n, 3, 1, 1), -0.15, 0.15) * presence
    z[:, 0:3] = z[:, 0:3] * uniform((n, 1, 1, 1), 1.0, 1.4) + uniform((n, 3, 1, 1), -0.15, 0.15)
    z[:, 14:16] += uniform((n, 2, 1, 1), -0.3, 0.3) * presence
    scale = 0.1 * torch.rand(n, 1, 1, 1, generator=gen)
    z[:, :16] += scale * torch.randn(z[:, :16].shape, generator=gen)
    return z


def train_vae(
    pixels: torch.Tensor,
    layouts: torch.Tensor,
    steps: int,
    batch: int,
    gen: torch.Generator,
    t0: float,
    resume: dict[str, Any] | None,
    save: Any,
) -> Any:
    """Decoder: imperfect layout map (``imperfect_maps``) -> pixels; encoder: pixels -> map."""
    vae = build.build_vae()
    decoder_params = [*vae.decoder.parameters(), *vae.post_quant_conv.parameters()]
    encoder_params = [*vae.encoder.parameters(), *vae.quant_conv.parameters()]
    opt = torch.optim.AdamW(vae.parameters(), lr=2e-3, weight_decay=0.0, foreach=True)
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
        x, z = to_unit(pixels[idx]), layouts[idx]
        recon = vae.decode(imperfect_maps(z, gen)).sample
        loss_rec = F.mse_loss(recon, x) + 0.5 * F.l1_loss(recon, x)
        loss_pal = palette_loss(recon, x)
        posterior = vae.encode(x[: max(1, batch // 4)]).latent_dist  # regression: a few do
        loss_enc = F.mse_loss(posterior.mean, z[: max(1, batch // 4)]) + 0.01 * F.mse_loss(
            posterior.logvar, torch.full_like(posterior.logvar, -6.0)
        )
        loss = loss_rec + PALETTE_WEIGHT * loss_pal + loss_enc
        opt.zero_grad(set_to_none=True)
        loss.backward()
        for part in decoder_params, encoder_params:  # clipped apart: neither slows the other
            torch.nn.utils.clip_grad_norm_(part, 1.0)
        opt.step()
        if step % 100 == 0 or step == steps - 1:
            log(
                f"vae step {step}/{steps} rec {loss_rec.item():.4f} palette {loss_pal.item():.3f}"
                f" enc {loss_enc.item():.4f}",
                t0,
            )
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


class CaptionHead(torch.nn.Module):
    """Auxiliary training head: from the text encoder's pooled output, predict what the caption
    says about each of the five positions (color or none, shape or none, size) and the
    background. It gives the text encoder a direct, dense signal about the caption grammar;
    only the text encoder is kept."""

    SLOTS = list(scenes.POSITIONS)
    COLORS = list(scenes.COLORS)
    SIZES = list(scenes.SIZES)
    FIELDS = (len(COLORS) + 1, len(scenes.SHAPES) + 1, len(SIZES))  # "+1": nothing there

    def __init__(self, width: int) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(width, len(self.SLOTS) * sum(self.FIELDS) + len(self.COLORS))

    @classmethod
    def targets(cls, captions: list[str]) -> torch.Tensor:
        """(batch, slots x 3 + 1) class indices, -100 where the caption does not say."""
        out = torch.full((len(captions), len(cls.SLOTS) * 3 + 1), -100, dtype=torch.long)
        for row, caption in enumerate(captions):
            try:
                spec = scenes.parse_caption(caption)
            except ValueError:  # "" or a bare keyword: no object named
                continue
            if spec.background:
                out[row, -1] = cls.COLORS.index(spec.background)
            if not all(o.position for o in spec.objects):
                continue  # where the objects are is open: say nothing about slots
            for k in range(len(cls.SLOTS)):  # every slot empty unless an object is there
                out[row, 3 * k] = len(cls.COLORS)
                out[row, 3 * k + 1] = len(scenes.SHAPES)
            for o in spec.objects:
                assert o.position is not None
                k = cls.SLOTS.index(o.position)
                out[row, 3 * k] = cls.COLORS.index(o.color) if o.color else -100
                out[row, 3 * k + 1] = scenes.SHAPES.index(o.shape) if o.shape else -100
                out[row, 3 * k + 2] = cls.SIZES.index(o.size) if o.size else -100
        return out

    def loss(self, pooled: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        logits = self.linear(pooled)
        total, start, column = logits.new_zeros(()), 0, 0
        for _ in self.SLOTS:
            for n in self.FIELDS:
                total = total + _masked_ce(logits[:, start : start + n], targets[:, column])
                start, column = start + n, column + 1
        return total + _masked_ce(logits[:, start:], targets[:, -1])


def _masked_ce(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    if bool((target == -100).all()):
        return logits.new_zeros(())
    return F.cross_entropy(logits, target, ignore_index=-100)


def training_caption(scene: scenes.Scene, rng: random.Random) -> str:
    """What the denoiser is told about ``scene``: usually a caption that leaves some attributes
    out, sometimes nothing (for guidance), sometimes bare keywords (for negative prompts)."""
    roll = rng.random()
    if roll < CFG_DROPOUT:
        return "" if len(scene.objects) == 1 else scenes.describe(scene, rng)
    if roll < CFG_DROPOUT + KEYWORDS:
        return scenes.keywords(scene, rng)
    return scenes.describe(scene, rng)


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
    head = CaptionHead(text_encoder.config.hidden_size)
    params = [*unet.parameters(), *text_encoder.parameters(), *head.parameters()]
    opt = torch.optim.AdamW(params, lr=1e-3, weight_decay=1e-2, foreach=True)
    caption_rng = random.Random(seed + 1)
    live_params = [*unet.parameters(), *text_encoder.parameters()]
    ema_params = [*ema_unet.parameters(), *ema_text.parameters()]
    token_cache: dict[str, torch.Tensor] = {}

    def token_ids(caption: str) -> torch.Tensor:
        """The tokenizer is slow Python and captions repeat: cache each caption's ids."""
        if caption not in token_cache:
            token_cache[caption] = tokenizer(
                caption,
                padding="max_length",
                max_length=build.MAX_LENGTH,
                truncation=True,
                return_tensors="pt",
            ).input_ids[0]
        return token_cache[caption]

    start = 0
    if resume is not None and resume["stage"] == "unet":
        for name, module in (
            ("unet", unet),
            ("text", text_encoder),
            ("ema_unet", ema_unet),
            ("ema_text", ema_text),
            ("head", head),
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
        captions = [training_caption(items[i], caption_rng) for i in idx.tolist()]
        ids = torch.stack([token_ids(c) for c in captions])
        x0 = latents[idx]
        t = torch.randint(0, scheduler.config.num_train_timesteps, (batch,), generator=gen)
        noise = torch.randn(x0.shape, generator=gen)
        a = alphas[t].sqrt().view(-1, 1, 1, 1)
        s = (1 - alphas[t]).sqrt().view(-1, 1, 1, 1)
        noisy = a * x0 + s * noise
        target = a * noise - s * x0  # v-prediction
        encoded = text_encoder(ids)
        pred = unet(noisy, t, encoded[0]).sample
        loss_v = F.mse_loss(pred, target)
        loss_aux = head.loss(encoded[1], CaptionHead.targets(captions))
        loss = loss_v + AUX_WEIGHT * loss_aux
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        decay = min(0.998, (1 + step) / (10 + step))
        with torch.no_grad():
            torch._foreach_lerp_(ema_params, live_params, 1 - decay)
        if step % 100 == 0 or step == steps - 1:
            log(f"unet step {step}/{steps} loss {loss_v.item():.4f} aux {loss_aux.item():.3f}", t0)
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
                    "head": head.state_dict(),
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
    # Weights are stored as float16 (half the bytes, the 20 MB budget); loaders read them back
    # as float32 (model.load_pipeline), and what is evaluated is what is stored.
    pipe = StableDiffusionPipeline(
        vae=copy.deepcopy(vae).half(),
        text_encoder=copy.deepcopy(text_encoder).half(),
        tokenizer=tokenizer,
        unet=copy.deepcopy(unet).half(),
        scheduler=build.build_scheduler(),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(out, safe_serialization=True)
    model.write_manifest(out)


def vae_stage(args: argparse.Namespace, snaps: Snapshots, t0: float) -> dict[str, Any]:
    """Train the VAE (resuming from its snapshot, if any), save it as ``vae.pt`` and return
    its state dict."""
    items, pixels = render_dataset(args.seed, args.scenes)
    layouts = torch.from_numpy(layout.encode_batch(items))
    log(f"vae: rendered {len(items)} training scenes and their layout maps", t0)
    gen = torch.Generator().manual_seed(args.seed)
    vae = train_vae(
        pixels,
        layouts,
        args.vae_steps,
        args.batch,
        gen,
        t0,
        snaps.load("vae-state.pt"),
        lambda value: snaps.save("vae-state.pt", value),
    )
    trained = {"vae": vae.state_dict(), "seconds": round(time.monotonic() - t0, 1)}
    snaps.save("vae.pt", trained)
    return trained


def vae_failed(child: subprocess.Popen[bytes]) -> NoReturn:
    sys.exit(f"the VAE stage failed (exit {child.returncode}); rerun to resume")


def start_vae_process(argv: list[str]) -> subprocess.Popen[bytes]:
    """The VAE stage in a child process (same arguments, ``--stage vae``): the two stages share
    nothing until the end, and two one-thread processes get more from two cores than one
    two-thread process (small convolutions scale badly across threads)."""
    return subprocess.Popen(
        [sys.executable, "-m", "imagegen_demo_model.train", *argv, "--stage", "vae"],
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("models/shapes-demo"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--scenes", type=int, default=30000, help="distinct training scenes")
    parser.add_argument("--vae-steps", type=int, default=1650)
    parser.add_argument("--unet-steps", type=int, default=3200)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument(
        "--processes",
        type=int,
        choices=(1, 2),
        default=2,
        help="2: the VAE trains in a child process while the UNet trains here; 1: one after "
        "the other. Every stage uses one torch thread, so both give the same weights",
    )
    parser.add_argument("--stage", choices=("all", "vae"), default="all", help=argparse.SUPPRESS)
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
    # One thread per stage, always: thread count changes how float sums are split, so it
    # would change the weights; a fixed count keeps a seed's weights the same everywhere.
    torch.set_num_threads(1)
    torch.manual_seed(args.seed)

    key = {
        k: v
        for k, v in vars(args).items()
        if k in ("seed", "scenes", "vae_steps", "unet_steps", "batch")
    }
    snaps = Snapshots(args.state, key)
    if args.stage == "vae":
        vae_stage(args, snaps, snaps.t0)
        return
    stage_files = ("vae.pt", "vae-state.pt", "unet-state.pt")
    resumed = args.state is not None and any((args.state / n).exists() for n in stage_files)
    t0 = snaps.t0
    trained = snaps.load("vae.pt")  # the VAE of an earlier, interrupted run, if it finished
    child = None
    if trained is None and args.processes == 2:
        if args.state is None:
            sys.exit("--processes 2 needs --state (the VAE stage hands its weights over there)")
        child = start_vae_process(argv)

    def save_unet(value: Any) -> None:
        """Snapshot the UNet stage; and stop here as soon as the VAE process has failed, rather
        than after the whole UNet stage."""
        snaps.save("unet-state.pt", value)
        if child is not None and child.poll() not in (None, 0):
            vae_failed(child)

    try:
        if trained is None and child is None:
            trained = vae_stage(args, snaps, t0)
        items = training_scenes(args.seed, args.scenes)  # the UNet needs their maps only
        latents = torch.from_numpy(layout.encode_batch(items)) / layout.SCALE
        log(f"unet: rendered {len(items)} training scenes' layout maps", t0)

        tokenizer_dir = Path(tempfile.mkdtemp(prefix="shapes-demo-tokenizer-"))
        tokenizer = build.build_tokenizer(tokenizer_dir)
        checkpoints: list[tuple[int, Any, Any]] = []

        def checkpoint(step: int, unet: Any, text_encoder: Any) -> None:
            if args.checkpoints is not None:  # saved once the VAE is there
                checkpoints.append((step, copy.deepcopy(unet), copy.deepcopy(text_encoder)))

        unet, text_encoder = train_denoiser(
            latents,
            items,
            tokenizer,
            args.unet_steps,
            args.batch,
            args.seed,
            torch.Generator().manual_seed(args.seed + 3),
            t0,
            checkpoint,
            snaps.load("unet-state.pt"),
            save_unet,
        )
        t_unet = time.monotonic() - t0
        if child is not None:
            log("waiting for the VAE process", t0)
            if child.wait() != 0:
                vae_failed(child)
            child = None
            trained = snaps.load("vae.pt")
        assert trained is not None, "the VAE stage left no weights"
    finally:
        if child is not None:  # this process is stopping early: so does the VAE stage
            child.terminate()
            child.wait()
    vae = build.build_vae()
    vae.load_state_dict(trained["vae"])
    vae.eval()
    for step, ckpt_unet, ckpt_text in checkpoints:
        assert args.checkpoints is not None
        save_pipeline(args.checkpoints / f"step-{step}", vae, ckpt_text, tokenizer, ckpt_unet)
    save_pipeline(args.out, vae, text_encoder, tokenizer, unet)
    shutil.rmtree(tokenizer_dir, ignore_errors=True)
    if args.state is not None:
        shutil.rmtree(args.state, ignore_errors=True)
    total = time.monotonic() - t0
    log(f"saved {args.out}", t0)
    report = {
        "command": "python -m imagegen_demo_model.train " + " ".join(argv),
        "seed": args.seed,
        "scenes": args.scenes,
        "vae_steps": args.vae_steps,
        "unet_steps": args.unet_steps,
        "batch": args.batch,
        "processes": args.processes,
        "vae_seconds": trained.get("seconds"),
        "unet_seconds": round(t_unet, 1),
        "total_seconds": round(total, 1),
        "resumed": resumed,
    }
    args.report.parent.mkdir(parents=True, exist_ok=True)
    args.report.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()

"""The diffusers adapter: loads registered models once and runs one plan, step by step.

Readable over clever: ``run`` is a numbered script. Progress and cancellation go through
diffusers' ``callback_on_step_end``; the callback never changes the latents, so results are
bit-identical to a plain pipeline call with the same model, sampler, seed and parameters.
"""

from __future__ import annotations

import base64
import io
import json
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..domain.plan import RunPlan

# Sampler name -> (diffusers class name, extra config).
SAMPLERS: dict[str, tuple[str, dict[str, Any]]] = {
    "ddim": ("DDIMScheduler", {}),
    "pndm": ("PNDMScheduler", {}),
    "euler": ("EulerDiscreteScheduler", {}),
    "euler_a": ("EulerAncestralDiscreteScheduler", {}),
    "dpmpp_2m": ("DPMSolverMultistepScheduler", {}),
    "dpmpp_2m_karras": ("DPMSolverMultistepScheduler", {"use_karras_sigmas": True}),
    "unipc": ("UniPCMultistepScheduler", {}),
    "lcm": ("LCMScheduler", {}),
}

# Pipeline class per model family (the ``family`` of model.json).
FAMILIES = {"sd15": "StableDiffusionPipeline", "sdxl": "StableDiffusionXLPipeline"}

# SD-style latent -> RGB approximation for cheap previews (no VAE decode).
LATENT_RGB = [[0.298, 0.207, 0.208], [0.187, 0.286, 0.173], [-0.158, 0.189, 0.264],
              [-0.184, -0.271, -0.473]]


class Cancelled(Exception):
    """The job was cancelled; raised from the step callback to stop at a step boundary."""


@dataclass
class RunResult:
    images_png: list[bytes]  # one PNG per image, in batch order
    timings_ms: dict[str, float]  # load, denoise (incl. text encoding), encode_png
    steps_done: int


@dataclass
class LoadedModel:
    pipe: Any
    bytes: int
    load_ms: float


@dataclass
class DiffusersRunner:
    models_dir: Path
    device: str = "cpu"
    loaded: dict[str, LoadedModel] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def load(self, model_id: str) -> LoadedModel:
        """Load (once) a registered model after checking every file's sha256."""
        with self._lock:
            if model_id in self.loaded:
                return self.loaded[model_id]
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            import diffusers
            import torch

            from ..demo.registry import verify  # checks model.json's sha256 of every file

            folder = self.models_dir / model_id
            t0 = time.perf_counter()
            verify(folder)
            family = json.loads((folder / "model.json").read_text())["family"]
            cls = getattr(diffusers, FAMILIES[family])
            kwargs: dict[str, Any] = {"local_files_only": True}
            if not str(self.device).startswith("cuda"):
                kwargs["dtype"] = torch.float32  # weights may be stored as float16 (demo model)
            if family == "sd15":
                kwargs.update(safety_checker=None, requires_safety_checker=False)
            pipe = cls.from_pretrained(folder, **kwargs).to(self.device)
            pipe.set_progress_bar_config(disable=True)
            size = sum(p.numel() * p.element_size() for c in pipe.components.values()
                       if isinstance(c, torch.nn.Module) for p in c.parameters())
            self.loaded[model_id] = LoadedModel(pipe, size, (time.perf_counter() - t0) * 1000)
            return self.loaded[model_id]

    def warm_up(self, model_id: str | None) -> None:
        """Import the ML stack now (not on the first job) and load ``model_id`` if registered."""
        import diffusers  # noqa: F401
        import torch  # noqa: F401

        if model_id and (self.models_dir / model_id / "model.json").exists():
            self.load(model_id)

    def run(self, plan: RunPlan, on_step: Callable[[int, int, str | None], None],
            cancelled: Callable[[], bool]) -> RunResult:
        import diffusers
        import torch

        # 1. The model, warm or loaded now.
        t0 = time.perf_counter()
        warm = plan.model_id in self.loaded
        model = self.load(plan.model_id)
        load_ms = 0.0 if warm else model.load_ms
        pipe = model.pipe

        # 2. The sampler, from the model's own scheduler config.
        cls_name, extra = SAMPLERS[plan.scheduler]
        pipe.scheduler = getattr(diffusers, cls_name).from_config(pipe.scheduler.config, **extra)

        # 3. Progress and cancellation at step boundaries.
        def callback(p: Any, step: int, timestep: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
            if cancelled():
                raise Cancelled(plan.job_id)
            done = step + 1
            if done % plan.progress_every == 0 or done == plan.steps:
                on_step(done, plan.steps, preview_png_b64(kwargs["latents"]))
            return {}

        # 4. Denoise with a CPU generator: the same seed gives the same pixels everywhere.
        t1 = time.perf_counter()
        generator = torch.Generator("cpu").manual_seed(plan.seed)
        with torch.inference_mode():
            out = pipe(prompt=plan.prompt, negative_prompt=plan.negative_prompt or None,
                       width=plan.width, height=plan.height, num_inference_steps=plan.steps,
                       guidance_scale=plan.guidance_scale, num_images_per_prompt=plan.num_images,
                       generator=generator, callback_on_step_end=callback,
                       callback_on_step_end_tensor_inputs=["latents"])
        t2 = time.perf_counter()

        # 5. PNG bytes (deterministic encoder settings: same pixels, same bytes).
        pngs = [encode_png(image) for image in out.images]
        t3 = time.perf_counter()
        return RunResult(pngs, {"load": load_ms, "denoise": (t2 - t1) * 1000,
                                "encode_png": (t3 - t2) * 1000,
                                "total": (t3 - t0) * 1000}, plan.steps)


def encode_png(image: Any) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG", optimize=False, compress_level=6)
    return buf.getvalue()


def preview_png_b64(latents: Any, max_side: int = 32) -> str | None:
    """A small PNG of the current latents via a fixed linear latent->RGB map (no VAE)."""
    import torch
    from PIL import Image

    from ..demo import layout

    lat = latents[0].float()
    if lat.shape[0] == 4:
        rgb = torch.einsum("chw,cr->rhw", lat, torch.tensor(LATENT_RGB))
    elif lat.shape[0] == layout.CHANNELS:  # the shapes demo's layout map: paint it directly
        rgb = torch.from_numpy(layout.preview_rgb(lat.numpy()))
    else:
        rgb = lat[:3]
    lo, hi = rgb.amin(), rgb.amax()
    rgb = ((rgb - lo) / (hi - lo + 1e-6) * 255).clamp(0, 255).byte().permute(1, 2, 0).numpy()
    image = Image.fromarray(rgb)
    image.thumbnail((max_side, max_side))
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()

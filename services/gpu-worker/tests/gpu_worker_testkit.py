"""Helpers of the gpu-worker tests on the tiny zoo models (a unique module name: every service
has a conftest)."""

from __future__ import annotations

from imagegen_gpu_worker.domain.plan import RunPlan

# A sampler each tiny family runs with a 3-step schedule.
SAMPLER = {"tiny-sd15": "ddim", "tiny-sdxl": "euler", "tiny-sd3": "euler", "tiny-flux": "euler"}


def tiny_plan(model_id: str, loras: tuple[tuple[str, float], ...] = (), seed: int = 7) -> RunPlan:
    """A 3-step 64 px run of ``model_id`` with ``loras`` ((LoRA id, weight), ...)."""
    return RunPlan(
        job_id="j",
        fencing_token=1,
        attempt=1,
        model_id=model_id,
        prompt="a red circle on a blue background",
        negative_prompt="blurry",
        width=64,
        height=64,
        steps=3,
        guidance_scale=4.0,
        scheduler=SAMPLER[model_id],
        seed=seed,
        num_images=1,
        progress_every=1,
        loras=tuple(loras),
    )

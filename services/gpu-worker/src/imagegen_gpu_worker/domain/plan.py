"""What a worker will run for one assignment (pure, torch-free)."""

from __future__ import annotations

from dataclasses import dataclass

from imagegen_schemas.jobs import JobScheduled


@dataclass(frozen=True)
class RunPlan:
    job_id: str  # the job (aggregate id)
    fencing_token: int  # the assignment's token; every event of this run carries it
    attempt: int  # 1-based attempt number
    model_id: str  # registered model folder under models_dir
    prompt: str  # positive prompt
    negative_prompt: str  # "" for none
    width: int  # pixels, multiple of 8
    height: int  # pixels, multiple of 8
    steps: int  # denoising steps
    guidance_scale: float  # classifier-free guidance; <= 1 disables the unconditional pass
    scheduler: str  # sampler name from schemas.common.SCHEDULERS
    seed: int  # torch.Generator seed (CPU generator: identical on every device)
    num_images: int  # batch size
    progress_every: int  # publish a progress event every this many steps
    # LoRAs to apply, in request order: (registered LoRA id, weight); () for none.
    loras: tuple[tuple[str, float], ...] = ()


def plan_run(assignment: JobScheduled) -> RunPlan:
    """The run plan of an assignment; raises ValueError when it carries no parameters."""
    p = assignment.params
    if p is None:
        raise ValueError(f"assignment of {assignment.job_id} carries no generation parameters")
    return RunPlan(
        job_id=assignment.job_id,
        fencing_token=assignment.fencing_token,
        attempt=assignment.attempt,
        model_id=p.model,
        prompt=p.prompt,
        negative_prompt=p.negative_prompt,
        width=p.width,
        height=p.height,
        steps=p.steps,
        guidance_scale=p.guidance_scale,
        scheduler=p.scheduler,
        seed=p.seed,
        num_images=p.num_images,
        progress_every=max(1, p.steps // 5),
        loras=tuple((lora.name, lora.weight) for lora in p.loras),
    )

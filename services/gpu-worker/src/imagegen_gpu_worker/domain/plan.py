"""What a worker will run for one assignment (pure, torch-free)."""

from __future__ import annotations

from dataclasses import dataclass

from imagegen_schemas.jobs import JobScheduled


@dataclass(frozen=True)
class ControlNetUse:
    """One ControlNet of a plan (ADR 0706): the registered net of ``type`` for the model's
    family, conditioned on the control image ``image`` (a file id the API stored)."""

    type: str  # canny, scribble, tile, depth, ...
    image: str  # file-<32 hex digits of its sha256>, in the worker's files folder
    weight: float = 1.0  # controlnet_conditioning_scale
    start_percent: float = 0.0  # control_guidance_start, 0..1 of the steps
    end_percent: float = 1.0  # control_guidance_end


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
    # ControlNets to condition on, in request order; () for none.
    controlnets: tuple[ControlNetUse, ...] = ()
    # An out-of-memory retry's part of a split batch (ADR 0708): (index of its first image,
    # images in the whole batch). The run makes ``num_images`` images from that index on, from
    # the whole batch's initial noise; None: the whole batch.
    batch_part: tuple[int, int] | None = None


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
        controlnets=tuple(
            ControlNetUse(c.type, c.image_uri, c.weight, c.start_percent, c.end_percent)
            for c in p.controlnets
        ),
    )

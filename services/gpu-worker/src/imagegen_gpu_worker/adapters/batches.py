"""One part of a split batch, with the whole batch's noise (ADR 0708).

An out-of-memory retry runs a batch of ``n`` images as two smaller runs
(:func:`~imagegen_gpu_worker.domain.memory.split`). For their images to be the whole batch's,
byte for byte, each part must start from the whole batch's initial latents. Every family's
pipeline draws them in ``prepare_latents(batch_size, ...)`` (its first argument the batch size,
then channels, size, dtype, device, generator, latents), the run's first use of its generator;
:func:`batch_part` makes that call draw the whole batch (``n`` images, from the same generator,
as the unsplit run does) and hand the pipeline only the part's slice. Scaling by the sampler's
initial sigma is elementwise, so the slice is exactly what the unsplit run had for those images.
Samplers that draw more noise at every step are never split (``NOISY_SAMPLERS``).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from ..domain.plan import RunPlan


@contextmanager
def batch_part(pipe: Any, plan: RunPlan) -> Iterator[None]:
    """While open, ``pipe.prepare_latents`` draws ``plan``'s whole batch and returns the part's
    images only (a plan without ``batch_part``: nothing changes). Flux returns (latents, ids):
    the latents are sliced, the position ids are the same for every image."""
    if plan.batch_part is None:
        yield
        return
    first, whole = plan.batch_part
    count = plan.num_images
    if not (first >= 0 and count >= 1 and first + count <= whole):
        raise ValueError(
            f"batch_part {plan.batch_part} with num_images {count} is not a part of the batch"
        )
    original = pipe.prepare_latents  # the pipeline class's bound method

    def prepare_latents(batch_size: int, *args: Any, **kwargs: Any) -> Any:
        if batch_size != count:  # one prompt: batch_size is num_images_per_prompt
            raise ValueError(f"pipeline asked for {batch_size} latents, the part has {count}")
        if kwargs.get("latents", args[6] if len(args) > 6 else None) is not None:
            raise ValueError("a part of a split batch cannot start from given latents")
        out = original(whole, *args, **kwargs)
        if isinstance(out, tuple):
            return (out[0][first : first + count], *out[1:])
        return out[first : first + count]

    # DiffusionPipeline.__setattr__ registers modules and config; bypass it, as for samplers.
    object.__setattr__(pipe, "prepare_latents", prepare_latents)
    try:
        yield
    finally:
        object.__delattr__(pipe, "prepare_latents")

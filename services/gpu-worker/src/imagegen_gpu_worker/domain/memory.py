"""Out of memory on the worker: what counts as one, and the retry with the batch split
(pure, torch-free; ADR 0708).

A run that runs out of memory (our budget check, :class:`OutOfMemory`, or torch's
``torch.cuda.OutOfMemoryError``) is retried once, on the same worker, as two runs of half the
batch (``ceil(n/2)`` images, then the rest); their images, in order, are byte-identical to the
whole batch's because each part draws the whole batch's initial noise from the seed and keeps
its own slice (:attr:`RunPlan.batch_part`, honoured by the runner). A sampler that draws fresh
noise at every step (:data:`NOISY_SAMPLERS`) cannot be split that way: its parts would draw
other noise and give other images, so it is not split (the attempt fails, and the scheduler
retries it on another worker). Neither is a batch of one.
"""

from __future__ import annotations

from dataclasses import replace

from .plan import RunPlan
from .run import ModelDoesNotFit, RunResult

# Samplers whose ``step`` draws noise from the run's generator (ancestral Euler, LCM): the
# noise of image i at step t depends on the batch size, so a split run would differ.
NOISY_SAMPLERS: frozenset[str] = frozenset({"euler_a", "lcm"})


class OutOfMemory(RuntimeError):
    """A run that cannot fit this worker's memory: a job whose budgeted need exceeds what the
    budget leaves (raised before anything runs), or an out-of-memory error met while running."""


# What torch's RuntimeErrors say when an allocation fails: CUDA ("CUDA out of memory"), the CPU
# allocator ("DefaultCPUAllocator: not enough memory").
OOM_MESSAGES = ("out of memory", "not enough memory")


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` is an out-of-memory failure that a smaller batch may avoid: ours, torch's
    (``OutOfMemoryError``, or a RuntimeError saying so), Python's ``MemoryError``; not a model
    that cannot fit even alone (:class:`ModelDoesNotFit`: a smaller batch does not change that).
    """
    if isinstance(exc, ModelDoesNotFit):
        return False
    if isinstance(exc, OutOfMemory | MemoryError) or type(exc).__name__ == "OutOfMemoryError":
        return True
    message = str(exc).lower()
    return isinstance(exc, RuntimeError) and any(m in message for m in OOM_MESSAGES)


def why_not_split(plan: RunPlan) -> str | None:
    """Why ``plan`` cannot be retried split, or None when it can."""
    if plan.batch_part is not None:
        return "it is already a part of a split batch"
    if plan.num_images < 2:
        return "a batch of one image cannot be split"
    if plan.scheduler in NOISY_SAMPLERS:
        return (
            f"sampler {plan.scheduler!r} draws fresh noise at every step, so a split batch would"
            " give other images"
        )
    return None


def split(plan: RunPlan) -> list[RunPlan]:
    """The two parts of ``plan``'s batch: ``ceil(n/2)`` images, then the rest; each names its
    first image and the whole batch's size (``batch_part``), so the runner draws the whole
    batch's noise and keeps its slice. ValueError when the plan cannot be split."""
    why = why_not_split(plan)
    if why is not None:
        raise ValueError(f"plan of {plan.job_id} cannot be split: {why}")
    n = plan.num_images
    first = -(-n // 2)
    return [
        replace(plan, num_images=first, batch_part=(0, n)),
        replace(plan, num_images=n - first, batch_part=(first, n)),
    ]


def joined(parts: list[RunResult]) -> RunResult:
    """The result of a split batch: the parts' images in order, their timings and steps added."""
    timings: dict[str, float] = {}
    for part in parts:
        for key, ms in part.timings_ms.items():
            timings[key] = timings.get(key, 0.0) + ms
    return RunResult(
        [png for part in parts for png in part.images_png],
        timings,
        sum(part.steps_done for part in parts),
    )

"""The run contract between the worker loop and a runner (pure, torch-free).

The worker (``service_layer/worker.py``) hands a runner a :class:`~.plan.RunPlan`; the runner
(``adapters/diffusers_runner.py``, or a fake in tests) returns a :class:`RunResult` or stops
with :class:`Paused`, :class:`Cancelled`, :class:`ModelDoesNotFit` or
:class:`ModelUnavailable`. Nothing here imports
torch or diffusers, so the worker and its tests can use the contract without the ML stack.
"""

from __future__ import annotations

from dataclasses import dataclass

# Samplers whose pause + resume (even in a fresh runner) gives byte-identical images, checked by
# services/gpu-worker/tests/test_gpu_worker_pause_resume.py. A pause request for any other
# sampler is refused (the run goes on). dpmpp_2m_karras is left out: on the demo model's
# zero-terminal-SNR schedule it fails even without a pause (IndexError in diffusers).
RESUMABLE: frozenset[str] = frozenset(
    {"ddim", "pndm", "euler", "euler_a", "dpmpp_2m", "unipc", "lcm"}
)
# Model families whose runs can pause: only sd15, the family the pause/resume tests cover (the
# demo model). On any other family the runner never pauses (the run goes on to its end, as for a
# pause request that comes after the last step); the worker, which does not know a model's
# family, may still accept the request.
RESUMABLE_FAMILIES: frozenset[str] = frozenset({"sd15"})


@dataclass
class RunResult:
    images_png: list[bytes]  # one PNG per image, in batch order
    timings_ms: dict[str, float]  # load, denoise (incl. text encoding), encode_png, total
    steps_done: int  # denoising steps run in all (a resumed run counts the paused ones too)


class Cancelled(Exception):
    """The job was cancelled; raised from the step callback to stop at a step boundary."""


class Paused(Exception):
    """The job was paused at a step boundary; ``state`` (bytes) is what a resumed run needs."""

    def __init__(self, job_id: str, steps_done: int, total_steps: int, state: bytes) -> None:
        self.job_id, self.steps_done, self.total_steps, self.state = (
            job_id,
            steps_done,
            total_steps,
            state,
        )
        super().__init__(f"{job_id} paused after {steps_done}/{total_steps} steps")


class ModelUnavailable(RuntimeError):
    """The plan's model cannot be used on this worker: not registered here, or its files do not
    match their recorded sha256 (``adapters.registry.ChecksumError``)."""


class ModelNotRegistered(ModelUnavailable):
    """No model of that id is registered on this worker (no ``model.json`` in its folder)."""


class NotABaseModel(ModelUnavailable):
    """The id names a registered LoRA or ControlNet, not a base model: those are loaded with
    the base model a job runs (ADRs 0704, 0706), never on their own."""


class LoraMismatch(ModelUnavailable):
    """A LoRA the plan names is registered here but cannot apply to the plan's model: it is
    not a LoRA (another ``kind``), it is of another family, or its weights do not load."""


class ModelDoesNotFit(RuntimeError):
    """A model's estimated size exceeds the worker's memory budget, even with nothing else
    loaded; raised before anything is unloaded or loaded."""

    def __init__(self, model_id: str, need_bytes: int, budget_bytes: int) -> None:
        self.model_id, self.need_bytes, self.budget_bytes = model_id, need_bytes, budget_bytes
        super().__init__(
            f"model {model_id!r} needs about {need_bytes / 2**20:.1f} MiB (estimated from its"
            f" weight files), more than this worker's model memory budget of"
            f" {budget_bytes / 2**20:.1f} MiB (IMAGEGEN_GPU_WORKER_MODEL_MEMORY_BUDGET_MB):"
            " it cannot be loaded here even with every other model unloaded"
        )


class ModelBlockedByRun(ModelDoesNotFit):
    """A model fits the budget, but only with models unloaded that the running job is using;
    raised before anything is unloaded or loaded (a pool command's load during a run)."""

    def __init__(self, model_id: str, need_bytes: int, budget_bytes: int, busy: set[str]) -> None:
        super().__init__(model_id, need_bytes, budget_bytes)
        self.busy = frozenset(busy)
        self.args = (
            f"model {model_id!r} needs about {need_bytes / 2**20:.1f} MiB: it fits this worker's"
            f" budget of {budget_bytes / 2**20:.1f} MiB only with {sorted(busy)} unloaded, which"
            " the running job is using",
        )

"""Which sampler runs on which model family, as which diffusers scheduler (pure, torch-free).

``SAMPLERS[family][name]`` is ``(diffusers scheduler class name, config overrides)``: the
runner builds the sampler from the model's own scheduler config with these overrides
(``adapters/diffusers_runner.py``). A name missing from a family's table does not run on that
family: the runner refuses it (:class:`UnsupportedSampler`) and model manifests do not list it.

The table records what was proven, not what was hoped: ``test_gpu_worker_families.py`` runs
every sampler name on every family's tiny model and checks that exactly the pairs listed here
give valid images (reproducible from the seed), and that every pair left out fails in the way
:data:`EXCLUDED` says.

- ``sd15``, ``sdxl`` (noise-prediction UNets, discrete timesteps): all eight names.
- ``sd3``, ``flux`` (flow matching): ``euler`` is diffusers' ``FlowMatchEulerDiscreteScheduler``;
  ``dpmpp_2m`` and ``unipc`` are the multistep solvers in their flow-matching mode
  (``use_flow_sigmas=True, prediction_type="flow_prediction"``; the runner gives them the
  model's own ``shift`` as ``flow_shift``). Flux's pipeline always calls ``set_timesteps`` with
  ``mu`` (its resolution-dependent shift), which these take with ``use_dynamic_shifting``
  (carried over from the model's scheduler config).
"""

from __future__ import annotations

from types import MappingProxyType
from typing import Any

Sampler = tuple[str, dict[str, Any]]  # (diffusers scheduler class name, config overrides)

_DISCRETE: dict[str, Sampler] = {
    "ddim": ("DDIMScheduler", {}),
    "pndm": ("PNDMScheduler", {}),
    "euler": ("EulerDiscreteScheduler", {}),
    "euler_a": ("EulerAncestralDiscreteScheduler", {}),
    "dpmpp_2m": ("DPMSolverMultistepScheduler", {}),
    "dpmpp_2m_karras": ("DPMSolverMultistepScheduler", {"use_karras_sigmas": True}),
    "unipc": ("UniPCMultistepScheduler", {}),
    "lcm": ("LCMScheduler", {}),
}

_FLOW_SOLVER: dict[str, Any] = {"use_flow_sigmas": True, "prediction_type": "flow_prediction"}

_FLOW: dict[str, Sampler] = {
    "euler": ("FlowMatchEulerDiscreteScheduler", {}),
    "dpmpp_2m": ("DPMSolverMultistepScheduler", dict(_FLOW_SOLVER)),
    "unipc": ("UniPCMultistepScheduler", dict(_FLOW_SOLVER)),
}

SAMPLERS: MappingProxyType[str, MappingProxyType[str, Sampler]] = MappingProxyType(
    {
        "sd15": MappingProxyType(_DISCRETE),
        "sdxl": MappingProxyType(_DISCRETE),
        "sd3": MappingProxyType(_FLOW),
        "flux": MappingProxyType(_FLOW),
    }
)

FAMILIES: tuple[str, ...] = tuple(SAMPLERS)

# Why each name missing from a flow family's table is missing, as the matrix test checks it:
# "no_flow_schedule": the scheduler has no flow-matching mode, so on these models it either
# fails in the pipeline or steps the flow model's velocity as if it were noise (wrong math, and
# its sigmas leave [0, 1]); "not_seeded": it draws fresh noise in ``step`` and the pipeline
# passes no generator there, so the same seed does not give the same image.
EXCLUDED: MappingProxyType[str, MappingProxyType[str, tuple[Sampler, str]]] = MappingProxyType(
    {
        family: MappingProxyType(
            {
                "ddim": (("DDIMScheduler", {}), "no_flow_schedule"),
                "pndm": (("PNDMScheduler", {}), "no_flow_schedule"),
                "dpmpp_2m_karras": (
                    ("DPMSolverMultistepScheduler", {**_FLOW_SOLVER, "use_karras_sigmas": True}),
                    "no_flow_schedule",
                ),
                "euler_a": (
                    ("FlowMatchEulerDiscreteScheduler", {"stochastic_sampling": True}),
                    "not_seeded",
                ),
                "lcm": (("FlowMatchLCMScheduler", {}), "not_seeded"),
            }
        )
        for family in ("sd3", "flux")
    }
)


class UnsupportedSampler(ValueError):
    """A sampler name that does not run on the model's family."""

    def __init__(self, family: str, sampler: str) -> None:
        self.family, self.sampler = family, sampler
        names = ", ".join(supported(family)) or "none"
        super().__init__(
            f"sampler {sampler!r} does not run on {family!r} models (it runs: {names})"
        )


def supported(family: str) -> tuple[str, ...]:
    """The sampler names that run on ``family``, sorted; () for an unknown family."""
    return tuple(sorted(SAMPLERS.get(family, {})))


def sampler_for(family: str, name: str) -> Sampler:
    """``(class name, overrides)`` of sampler ``name`` on ``family``; raises
    :class:`UnsupportedSampler` when it does not run there."""
    try:
        cls_name, overrides = SAMPLERS[family][name]
    except KeyError:
        raise UnsupportedSampler(family, name) from None
    return cls_name, dict(overrides)


def class_names() -> tuple[str, ...]:
    """Every scheduler class any family uses (the worker imports them all at warm-up)."""
    return tuple(sorted({cls for table in SAMPLERS.values() for cls, _ in table.values()}))

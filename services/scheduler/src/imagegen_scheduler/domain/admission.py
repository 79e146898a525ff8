"""Admission: refuse at the door what no worker and model in the fleet can ever serve.

Checks, in order: the model is registered; every adapter is registered and made for the model's
family; batch and steps are positive; some worker class runs the family; the footprint fits the
largest budget among those classes. The first failing check is the reason.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from .model import JobRequest, ModelCatalog, WorkerView, footprint_gb


@dataclass(frozen=True, slots=True)
class WorkerClass:
    """Workers that are interchangeable for admission."""

    gpu_type: str  # e.g. "A100-80GB"
    budget_gb: float  # VRAM a job may use on one worker of the class
    capabilities: frozenset[str]  # model families it runs
    count: int  # how many such workers the fleet has (0 = none now, may scale up)


@dataclass(frozen=True, slots=True)
class FleetCapabilities:
    classes: tuple[WorkerClass, ...]  # every class the fleet has or can scale to

    @staticmethod
    def of(workers: Iterable[WorkerView]) -> FleetCapabilities:
        """Group worker views into classes by (gpu type, budget, capabilities)."""
        counts: dict[tuple[str, float, frozenset[str]], int] = {}
        for w in workers:
            key = (w.gpu_type, w.budget_gb, w.capabilities)
            counts[key] = counts.get(key, 0) + 1
        ordered = sorted(counts.items(), key=lambda item: (item[0][0], item[0][1]))
        return FleetCapabilities(tuple(WorkerClass(*key, n) for key, n in ordered))


@dataclass(frozen=True, slots=True)
class Admitted:
    footprint_gb: float  # VRAM the job needs
    gpu_types: tuple[str, ...]  # classes that can run it, for routing and ETA


@dataclass(frozen=True, slots=True)
class Refused:
    reason: str  # human-readable; says what to change


def admit(
    request: JobRequest, fleet: FleetCapabilities, catalog: ModelCatalog
) -> Admitted | Refused:
    model = catalog.models.get(request.model_id)
    if model is None:
        return Refused(f"unknown model {request.model_id!r}")
    for adapter_id in request.adapters:
        adapter = catalog.adapters.get(adapter_id)
        if adapter is None:
            return Refused(f"unknown adapter {adapter_id!r}")
        if adapter.family != model.family:
            return Refused(
                f"adapter {adapter_id!r} is for {adapter.family}, model {request.model_id!r} "
                f"is {model.family}"
            )
    if request.batch < 1 or request.steps < 1:
        return Refused("batch and steps must be at least 1")
    capable = [c for c in fleet.classes if model.family in c.capabilities]
    if not capable:
        return Refused(f"no worker in the fleet runs {model.family} models")
    need = footprint_gb(request, catalog)
    fitting = [c for c in capable if need <= c.budget_gb]
    if not fitting:
        largest = max(c.budget_gb for c in capable)
        if model.weights_gb > largest:  # no smaller request helps
            return Refused(
                f"model {request.model_id!r} takes {_size(model.weights_gb)} of GPU memory"
                f" loaded, the largest {model.family} worker has {_size(largest)}; it needs a"
                " worker with more memory"
            )
        return Refused(
            f"needs {_size(need)} of GPU memory, the largest {model.family} worker has "
            f"{_size(largest)}; lower the resolution, batch or number of adapters"
        )
    return Admitted(need, tuple(sorted({c.gpu_type for c in fitting})))


def _size(gb: float) -> str:
    """GB with one decimal; MB below 1 GB (a local fleet's tiny models need megabytes)."""
    return f"{gb:.1f} GB" if gb >= 1 else f"{gb * 1000:.1f} MB"

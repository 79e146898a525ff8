"""The worker's memory admission: a job runs only when the budget model says it fits (ADR 0708).

Before each run the worker asks :meth:`BudgetAdmission.admit` for the job's need by the shared
budget model (:mod:`imagegen_runtime.budget`: the model's weights, its LoRAs' workspace, a
reserve per ControlNet, activations for the resolution and batch) and compares it with the
runner's memory budget less its margin, counting every other model as evictable except those a
run is using. A job that does not fit raises
:class:`~imagegen_gpu_worker.domain.memory.OutOfMemory` naming its need and the budget, before
anything is loaded or run, the same verdict a device that ran out of memory mid-run gives (and
the same handling: the cache freed, one retry with the batch split). A job that fits gets room:
the least recently used models it does not use are unloaded until its whole need, margin
included, fits beside what stays (``DiffusersRunner.make_room``).

The inputs are what this worker knows: a resident model's measured size (else the runner's
estimate from its weight files, which counts float16 weights twice where they load as
float32), the denoiser's file size from the manifest's ``components`` (it scales the activation
estimate), a LoRA's measured or file size. The scheduler fills the same formula from the
manifests' file sizes (its catalog), so on CPU, where float16 weights load as float32, it counts
them at half what the worker counts.

Without a budget (CPU and no ``model_memory_budget_mb``) nothing is checked: there is no limit
to check against.
"""

from __future__ import annotations

import gc
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from imagegen_runtime import budget

from ..domain.memory import OutOfMemory
from ..domain.plan import RunPlan
from . import registry
from .diffusers_runner import DiffusersRunner, estimate_bytes, is_diffusers_component

log = logging.getLogger(__name__)
MIB = budget.MIB


@dataclass
class BudgetAdmission:
    runner: DiffusersRunner
    # model id -> (its manifest entry, its own activation_mb_per_mpix): read once, not per job
    _manifests: dict[str, tuple[registry.ModelEntry, float | None]] = field(default_factory=dict)

    def _manifest(self, folder: Path) -> tuple[registry.ModelEntry, float | None]:
        held = self._manifests.get(folder.name)
        if held is None:
            held = (
                registry.read_manifest(folder),
                _manifest_number(folder, "activation_mb_per_mpix"),
            )
            self._manifests[folder.name] = held
        return held

    def need(self, plan: RunPlan) -> budget.Need:
        """The job's need by the budget model (ModelNotRegistered for an unknown model)."""
        folder = self.runner.models_dir / plan.model_id
        entry, own = self._manifest(folder)
        resident = dict(self.runner.resident())
        if plan.model_id in resident:
            weights = resident[plan.model_id]
        else:
            on_cuda = self.runner.on_cuda
            weights = estimate_bytes(
                folder, upcast=lambda c: not on_cuda or is_diffusers_component(c)
            )
        components = entry.components or {}
        denoiser = budget.denoiser_mb(components)
        return budget.job_need_mb(
            weights / MIB,
            entry.family,
            plan.width,
            plan.height,
            plan.num_images,
            denoiser_mb=denoiser if denoiser else None,
            activation_per_mpix=own,
            loras_mb=[self._lora_mb(plan.model_id, name) for name, _ in plan.loras],
            controlnets_mb=[None for _ in getattr(plan, "controlnets", ()) or ()],
        )

    def _lora_mb(self, model_id: str, lora_id: str) -> float | None:
        """A LoRA's size: as loaded into the model, else its files; None when not registered."""
        for model, lora, size in self.runner.resident_loras():
            if (model, lora) == (model_id, lora_id):
                return size / MIB
        folder = self.runner.models_dir / lora_id
        files = sorted(folder.glob("*.safetensors")) if folder.is_dir() else []
        return sum(f.stat().st_size for f in files) / MIB if files else None

    def admit(self, plan: RunPlan) -> budget.Need:
        """The job's need, after making room for it; raises OutOfMemory when it cannot fit the
        budget (less its margin) even with every model no run is using unloaded."""
        need = self.need(plan)
        limit = self.runner.budget_bytes()
        if limit is None:
            return need
        budget_mb = limit / MIB
        busy = self.runner.in_use() - {plan.model_id}
        held_busy = sum(size for m, size in self.runner.resident() if m in busy) / MIB
        if not budget.fits(budget_mb, need.total_mb + held_busy):
            usable = budget.usable_mb(budget_mb)
            others = f" beside {held_busy:.1f} MiB of models in use" if held_busy else ""
            raise OutOfMemory(
                f"out of memory: {plan.num_images} image(s) of {plan.width}x{plan.height} on"
                f" {plan.model_id!r} need about {need}{others}, more than the {usable:.1f} MiB"
                f" this worker may use (its budget of {budget_mb:.1f} MiB less a"
                f" {budget_mb - usable:.1f} MiB margin)"
            )
        margin = budget.margin_mb(budget_mb)
        self.runner.make_room(plan.model_id, min(limit, int((need.total_mb + margin) * MIB)))
        return need

    def free_cache(self) -> None:
        """Give memory a failed run left behind back: garbage collection, and on CUDA the
        caching allocator's free blocks (``torch.cuda.empty_cache``)."""
        gc.collect()
        if self.runner.on_cuda:
            import torch

            torch.cuda.empty_cache()


def _manifest_number(folder: Path, key: str) -> float | None:
    """An optional number of ``model.json`` that :class:`registry.ModelEntry` does not carry."""
    import json

    try:
        value: Any = json.loads((folder / registry.MANIFEST).read_text()).get(key)
    except (OSError, ValueError):
        return None
    return float(value) if isinstance(value, int | float) and value >= 0 else None

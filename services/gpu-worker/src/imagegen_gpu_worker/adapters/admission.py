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
estimate), a LoRA's measured or file size, and for each ControlNet the plan uses (the
registered net of its type for the model's family, counted once however many uses name it) its
measured size when loaded, else the same estimate from its weight files as a model's (a plan
naming a type with no net fails here with ``ControlNetUnavailable``). Loaded ControlNets hold
the budget like models: the job's own stay (their size is in its need), the others are
evictable, before models (``DiffusersRunner.held``). The scheduler fills the same formula from the
manifests' file sizes (its catalog), so on CPU, where float16 weights load as float32, it counts
them at half what the worker counts until a worker has held the model: then it takes the size
the worker reports (heartbeats, ``ModelLoaded``; ADR 0715).

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
from .diffusers_runner import DiffusersRunner, estimate_bytes, is_diffusers_component, net_id_of

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
        if plan.model_id in resident:  # with its pre-merged LoRAs (issue 12), held beside it
            weights = resident[plan.model_id] + self.runner.premerged_bytes(plan.model_id)
        else:
            on_cuda = self.runner.on_cuda
            weights = estimate_bytes(
                folder, upcast=lambda c: not on_cuda or is_diffusers_component(c)
            )
        components = entry.components or {}
        denoiser = budget.denoiser_mb(components)
        nets = self._controlnets(entry.family, plan)
        return budget.job_need_mb(
            weights / MIB,
            entry.family,
            plan.width,
            plan.height,
            plan.num_images,
            denoiser_mb=denoiser if denoiser else None,
            activation_per_mpix=own,
            loras_mb=[self._lora_mb(plan.model_id, name) for name, _ in plan.loras],
            controlnets_mb=[self._net_mb(net_id) for net_id in nets],
        )

    def _controlnets(self, family: str, plan: RunPlan) -> list[str]:
        """The ids of the ControlNets ``plan`` runs with, each once (a use whose window is
        empty is left out, as the runner does); ControlNetUnavailable for a type without one."""
        uses = [u for u in plan.controlnets if u.start_percent < u.end_percent]
        return list(dict.fromkeys(self.runner.controlnet_id(family, u.type) for u in uses))

    def _net_mb(self, net_id: str) -> float:
        """A ControlNet's size: as loaded, else estimated from its weight files."""
        for held, size in self.runner.resident_controlnets():
            if held == net_id:
                return size / MIB
        on_cuda = self.runner.on_cuda
        folder = self.runner.models_dir / net_id
        return (
            estimate_bytes(folder, upcast=lambda c: not on_cuda or is_diffusers_component(c)) / MIB
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
        entry, _ = self._manifest(self.runner.models_dir / plan.model_id)
        nets = self._controlnets(entry.family, plan)
        # What other runs use stays (models and ControlNets); the job's own are in its need.
        busy = {
            name for name in self.runner.busy() - {plan.model_id} if net_id_of(name) not in nets
        }
        held_busy = sum(size for m, size in self.runner.held() if m in busy) / MIB
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
        self.runner.make_room(
            plan.model_id, min(limit, int((need.total_mb + margin) * MIB)), nets=nets
        )
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

"""The diffusers adapter: loads registered models once and runs one plan, step by step.

Readable over clever: ``run`` is a numbered script. Progress, cancellation and pausing go
through diffusers' ``callback_on_step_end``; the callback never changes the latents, so results
are bit-identical to a plain pipeline call with the same model, sampler, seed and parameters.

Pause and resume (ADR 0111): at a step boundary the callback saves the latents, the sampler's
state (step index, multistep history: every attribute of the diffusers scheduler object) and the
CPU generator's state, and stops the run with :class:`Paused`. A resumed run calls the same
pipeline with those latents and a thin view of the sampler (:class:`_ResumedSampler`) that
restores the saved state after ``set_timesteps`` and shows the pipeline only the remaining
timesteps, so the remaining steps execute exactly the operations of an uninterrupted run: the
images are byte-identical (tested for every sampler in :data:`RESUMABLE`).

Loaded pipelines live under a memory budget: before a model is loaded, the least recently used
ones are unloaded with the rule the fleet simulator's workers use
(:func:`imagegen_runtime.residency.evictions`), and a model that cannot fit even alone fails
its job with :class:`ModelDoesNotFit` instead of running the device out of memory. A model a
run is using is never unloaded for another (a pool command's load during a run fails with
:class:`ModelBlockedByRun` instead).

Residency (ADR 0702): every load and unload, and the answers to pool commands (:meth:`preload`,
:meth:`evict`), are reported to ``on_change`` as :mod:`~imagegen_gpu_worker.domain.residency`
facts, in the order they happen (under the load lock), in the calling thread; the service layer
publishes them. Nothing here knows Kafka. :meth:`defragment` compacts the device's memory.

LoRAs (ADR 0704): a plan's ``loras`` are registered folders with a ``kind: "lora"`` manifest of
the model's family. Each is verified (every sha256) and loaded into the model's pipeline once,
with ``load_lora_weights(folder, adapter_name=...)``, and stays there while the model is
resident (:attr:`LoadedModel.loras`: the cache is per (model, LoRA); unloading the model drops
its LoRAs). Every run sets its own adapters: ``set_adapters(names, adapter_weights)`` for the
plan's LoRAs (the same LoRA named twice counts once, its weights added), ``disable_lora()`` for
a plan with none, so a run without LoRAs computes exactly what a pipeline that never loaded one
computes (peft's disabled layers call the base layer alone; tested byte for byte). LoRAs are
toggled, never fused with diffusers' ``fuse_lora``: fuse then unfuse does not give the base
weights back bit for bit. On a tier-1 model the ``premerge.top`` most used LoRAs of its recent
jobs are pre-merged (:mod:`.lora_premerge`, ``_premerge_locked``): their weight deltas are kept
beside the model with a pristine copy of the weights they touch (counted with the model in
:meth:`DiffusersRunner.held`, dropped on unload); a job whose LoRAs are exactly one of them at a
non-zero weight runs with ``W0 + w * delta`` written into the base weights and the adapters off,
and any other job first gets the pristine weights copied back (bit for bit). A LoRA
not registered here fails the job with ``ModelNotRegistered``, one of another family (or not a
LoRA) with :class:`~imagegen_gpu_worker.domain.run.LoraMismatch`, both ``ModelUnavailable``.

RAM tier (ADR 0705): a model evicted from the device (to make room, or on an EvictModel command)
is kept in host RAM, in :attr:`DiffusersRunner.ram`, while the models there fit
``ram_cache_bytes`` (least recently used leaves first; 0 disables the tier: evicted pipelines
are freed, as before). On CUDA its pipeline is moved into pinned host memory and back with
asynchronous copies (``accel.to_ram`` / ``accel.to_device``, ADR 0709; pageable with
``pin_ram_tier`` off); on CPU the device is RAM, so the pipeline object
is only taken out of the device budget's accounting (``loaded``) and put back. A reload from RAM
reads nothing from disk (no sha256 check, no construction) and is reported
``Loaded(source="ram")``; the eviction is still reported ``Unloaded``. LoRAs loaded into the
pipeline stay in it while it sits in RAM (every run sets its adapters anyway). ``resident()``
(the heartbeat) lists only device-resident models.

Integrity (ADR 0707): a disk load checks the model's (or LoRA's) files with :attr:`integrity`
(hashed, or trusted by size and mtime since they were); bad files are reported as
``Corrupted`` facts, repaired from the manifest's ``source`` and checked again before anything
is read, or the load fails with ``registry.RepairFailed``. :meth:`discard` drops a model the
periodic check found corrupted from the device (``Unloaded(corrupted)``) and the RAM tier.

ControlNets (ADR 0706): a plan's ``controlnets`` name a type and a control image (a file id in
``files_dir``). The images are read, checked against their ids and preprocessed first
(:mod:`.controlnets`, :mod:`.control_preprocess`); then the registered net of each type for the
model's family is verified and loaded once per worker (:attr:`DiffusersRunner.control_nets`, in
the model's dtype), and the run goes through the family's ControlNet pipeline built around the
model's own components (one net, or diffusers' multi-ControlNet), each net with its weight and
start/end percent (a net whose window is empty, start >= end, is left out: it would change
nothing, and diffusers refuses it). A net at weight 0 is run like the others: diffusers adds
its residuals times 0, and the bytes equal a run without it (tested). SD3 and Flux ControlNet
pipelines VAE-encode the control image; its latents are the encoder's mode, so no random number
is drawn for them (:func:`controlnets.control_latents_by_mode`). Runs with ControlNets never
pause.

ControlNets in the memory budget (ADR 0706, 0708): a loaded net's measured bytes hold the
budget like a model's (:meth:`DiffusersRunner.held`: the nets, least recently used first, then
the models). A net is loaded only after room is made for its estimate (its weight files, as a
model's), and making room unloads nets before base models: the eviction order is the nets by
least recent use, then the models by least recent use (:func:`evictions` then gives back,
newest first, whatever need not go). A net a run is using is never unloaded
(:meth:`DiffusersRunner.busy`). When the last device-resident model of a family is unloaded,
that family's nets no run is using are unloaded with it (same reason): they only serve that
family. Nets are freed when unloaded (no RAM tier). Loads and unloads of nets are reported as
``Loaded(kind="controlnet")`` / ``Unloaded`` facts under the net's id, the id heartbeats list it
by (:meth:`DiffusersRunner.resident_controlnets`).

The contract with the worker loop (``RunResult``, ``Paused``, ``Cancelled``, ``ModelDoesNotFit``,
``RESUMABLE``) is torch-free and lives in ``domain/run.py``; models are verified and opened by
the registry (``adapters/registry.py``).

Families (``model.json``'s ``family``): sd15, sdxl, sd3 and flux all run through :meth:`run`.
The sampler comes from the family's table (``domain/samplers.py``; a name not in it fails the
job with :class:`~imagegen_gpu_worker.domain.samplers.UnsupportedSampler`); flow-matching
solvers get the model's own ``shift`` as their ``flow_shift``. What each pipeline is given:

- sd15, sdxl, sd3: the prompt, the negative prompt, and ``guidance_scale`` as classifier-free
  guidance (an unconditional pass when it is above 1);
- flux (``FluxPipeline``, guidance-distilled like FLUX.1-dev): ``guidance_scale`` is the
  distilled guidance the transformer takes as an input (one pass per step, no unconditional
  one); the negative prompt is not passed (it would switch the pipeline to "true CFG", a second
  pass per step with a separate scale the plan does not carry), so it has no effect.

Pausing is limited to :data:`~imagegen_gpu_worker.domain.run.RESUMABLE_FAMILIES` (sd15):
on other families a pause request is not honoured and the run goes on to its end. Step
previews paint 4-D latents as before; Flux's packed (batch, tokens, channels) latents are
unpacked to (channels, h, w) first, and any latents with more than three channels and no
``preview`` in the manifest show their first three channels.
"""

from __future__ import annotations

import base64
import functools
import gc
import io
import json
import logging
import struct
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from opentelemetry import trace

from imagegen_runtime.budget import MARGIN_FRACTION
from imagegen_runtime.residency import evictions

from ..domain import samplers
from ..domain.accel import AccelSettings
from ..domain.fragmentation import DefragOutcome, MemoryState
from ..domain.lora_usage import LoraUsage, PremergeSettings, fused_choice
from ..domain.plan import ControlNetUse, RunPlan
from ..domain.residency import (
    COMMAND,
    CORRUPTED,
    MAKE_ROOM,
    NOT_RESIDENT,
    OOM,
    RAM,
    RESIDENT,
    Corrupted,
    Loaded,
    ResidencyChange,
    Unloaded,
)
from ..domain.run import (
    RESUMABLE,
    RESUMABLE_FAMILIES,
    Cancelled,
    LoraMismatch,
    ModelBlockedByRun,
    ModelDoesNotFit,
    NotABaseModel,
    Paused,
    RunResult,
)
from ..metrics import COLD_LOADS, MODEL_EVICTIONS, PIN_OVERRIDES, WARM_HITS, StepTimer
from . import accel, controlnets, cuda_memory, registry
from .batches import batch_part
from .lora_premerge import NotMergeable, Premerged
from .ml import diffusers_class, import_all, torch_module

log = logging.getLogger(__name__)
tracer = trace.get_tracer("imagegen.gpu_worker")

# Sampler name -> (diffusers class name, extra config) of the sd15 family (the per-family
# tables are in domain/samplers.py).
SAMPLERS = samplers.SAMPLERS["sd15"]

STATE_FORMAT = 1  # version of the saved pause state

# SD-style latent -> RGB approximation for cheap previews (no VAE decode).
LATENT_RGB = [
    [0.298, 0.207, 0.208],
    [0.187, 0.286, 0.173],
    [-0.158, 0.189, 0.264],
    [-0.184, -0.271, -0.473],
]


class BadResumeState(ValueError):
    """Saved pause state that does not belong to this plan, or that this code cannot restore."""


@dataclass
class LoadedLora:
    adapter: str  # the adapter name in the model's pipeline ("lora0", "lora1", ...)
    bytes: int  # the LoRA's weights (from its safetensors headers)
    load_ms: float  # verify + load_lora_weights


@dataclass
class LoadedModel:
    pipe: Any
    bytes: int
    load_ms: float  # its latest load: from disk, or back from the RAM tier
    # The model's own sampler config: every run builds its sampler from this one, never from the
    # previous run's (whose extra settings, e.g. use_karras_sigmas, would otherwise carry over).
    scheduler_config: Any = None
    preview: dict[str, Any] | None = None  # model.json's "preview" (how previews paint latents)
    family: str = "sd15"  # model.json's "family": the sampler table and call arguments used
    kind: str = "base"  # model.json's "kind"
    # LoRA id -> its adapter in ``pipe``, loaded once (ADR 0704); gone with the model.
    loras: dict[str, LoadedLora] = field(default_factory=dict)
    tier: int = 2  # model.json's "tier": only tier-1 models pre-merge LoRAs
    # The pre-merged LoRAs' deltas and pristine weights (tier 1 only; dropped on unload).
    premerged: Premerged | None = None
    # LoRA ids whose adapters cannot be merged (they stay on the adapter path)
    unmergeable: set[str] = field(default_factory=set)
    # Adapters ever loaded into ``pipe``: the next one's name ("lora<n>"), never reused (an
    # evicted LoRA's name could otherwise be given again while another adapter holds it).
    adapters_made: int = 0

    @property
    def held_bytes(self) -> int:
        """What the model holds in the budget: its weights and its pre-merged LoRAs."""
        return self.bytes + (0 if self.premerged is None else self.premerged.bytes)


@dataclass
class DiffusersRunner:
    models_dir: Path
    device: str = "cpu"
    # Bytes the loaded pipelines may use together; None: 90% of the device's memory on CUDA,
    # no limit on CPU.
    memory_budget_bytes: int | None = None
    # Least recently used first: a load hit and every run move the model to the end.
    loaded: OrderedDict[str, LoadedModel] = field(default_factory=OrderedDict)
    _lock: threading.Lock = field(default_factory=threading.Lock)  # one load at a time
    # Guards ``loaded`` itself, held only for a mutation or a copy: the heartbeat reads it from
    # the event loop while a load holds ``_lock`` for seconds.
    _index_lock: threading.Lock = field(default_factory=threading.Lock)
    # Called with every residency fact, in order, in the thread that caused it (ADR 0702).
    on_change: Callable[[ResidencyChange], None] | None = None
    # Model id -> runs using it now (guarded by ``_index_lock``): never unloaded meanwhile.
    _in_use: Counter[str] = field(default_factory=Counter)
    # Bytes the RAM tier may hold (models evicted from the device, kept in host RAM); 0: none,
    # an evicted pipeline is freed (ADR 0705).
    ram_cache_bytes: int = 0
    # The RAM tier, least recently used first (guarded by ``_index_lock`` like ``loaded``).
    ram: OrderedDict[str, LoadedModel] = field(default_factory=OrderedDict)
    # dtype, attention, compile, VAE tiling, pinned RAM tier (ADR 0709; adapters/accel.py).
    accel: AccelSettings = field(default_factory=AccelSettings)
    # Checks (and repairs) model files before a disk load: hashed, or trusted by size and mtime
    # since they were (ADR 0707); shared with the periodic check.
    integrity: registry.Integrity = field(default_factory=registry.Integrity)
    # Where the API stores control images (file ids): a folder, or the object store's files/;
    # None: plans with ControlNets fail (ADR 0706).
    files_dir: Path | controlnets.ControlFiles | None = None
    # (ControlNet id, dtype) -> the net, least recently used first (guarded by ``_index_lock``);
    # counted in the budget, unloaded to make room (before models) and with its family.
    control_nets: OrderedDict[tuple[str, str], controlnets.LoadedControlNet] = field(
        default_factory=OrderedDict
    )
    # (ControlNet id, dtype) -> runs using it now (guarded by ``_index_lock``): never unloaded.
    _nets_in_use: Counter[tuple[str, str]] = field(default_factory=Counter)
    # (family, ControlNet type) -> the registered net's id, found once (controlnets.find)
    _net_ids: dict[tuple[str, str], str] = field(default_factory=dict)
    # Pre-merging the most used LoRAs of tier-1 models (issue 12; ADR 0704's last section).
    premerge: PremergeSettings = field(default_factory=PremergeSettings)
    # The LoRAs each tier-1 model's recent jobs used (kept across unloads: job history).
    lora_usage: LoraUsage | None = None
    clock: Callable[[], float] = time.monotonic  # the usage window's clock
    # Models the pool-manager pinned here (LoadModel with pin, tier 1; guarded by
    # ``_index_lock``): while resident, the eviction that makes room passes them over unless
    # nothing else can go. A pin outlives an unload (the model is protected again once loaded
    # again); an EvictModel for the model removes it (ADR 0711).
    pinned: set[str] = field(default_factory=set)

    def __post_init__(self) -> None:
        if self.lora_usage is None:
            self.lora_usage = LoraUsage(self.premerge)

    @property
    def on_cuda(self) -> bool:
        return str(self.device).startswith("cuda")

    def resident(self) -> list[tuple[str, int]]:
        """(model id, bytes) of the loaded models, least recently used first (a copy)."""
        with self._index_lock:
            return [(model_id, m.bytes) for model_id, m in self.loaded.items()]

    def in_ram(self) -> list[tuple[str, int]]:
        """(model id, bytes) of the models in the RAM tier, least recently used first."""
        with self._index_lock:
            return [(model_id, m.bytes) for model_id, m in self.ram.items()]

    def resident_loras(self) -> list[tuple[str, str, int]]:
        """(model id, LoRA id, bytes) of the LoRAs loaded into resident models (a copy)."""
        with self._index_lock:
            return [
                (model_id, lora_id, lora.bytes)
                for model_id, m in self.loaded.items()
                for lora_id, lora in list(m.loras.items())
            ]

    def premerged(self) -> list[tuple[str, str, int]]:
        """(model id, LoRA id, bytes of its deltas) of the pre-merged LoRAs of resident models
        (their pristine copies: :meth:`premerged_bytes`), in order of computation (a copy)."""
        with self._index_lock:
            return [
                (model_id, lora_id, m.premerged.lora_bytes(lora_id))
                for model_id, m in self.loaded.items()
                if m.premerged is not None
                for lora_id in list(m.premerged.deltas)
            ]

    def premerged_bytes(self, model_id: str) -> int:
        """Bytes a resident model's pre-merged LoRAs hold (deltas and pristine copies; they
        count in the budget with the model: :meth:`held`)."""
        with self._index_lock:
            m = self.loaded.get(model_id)
            return 0 if m is None or m.premerged is None else m.premerged.bytes

    def resident_controlnets(self) -> list[tuple[str, int]]:
        """(ControlNet id, bytes) of the loaded ControlNets, each once (a copy)."""
        with self._index_lock:
            held: dict[str, int] = {}
            for (net_id, _), net in self.control_nets.items():
                held[net_id] = held.get(net_id, 0) + net.bytes
            return sorted(held.items())

    def in_use(self) -> set[str]:
        """The models a run is using now."""
        with self._index_lock:
            return set(self._in_use)

    def held(self) -> list[tuple[str, int]]:
        """(name, bytes) of everything that holds the memory budget, in eviction order: the
        loaded ControlNets (named :func:`net_name`) least recently used first, then the resident
        models least recently used first, each with its pre-merged LoRAs' deltas and pristine
        copies (a copy)."""
        with self._index_lock:
            nets = [(net_name(key), net.bytes) for key, net in self.control_nets.items()]
            return nets + [(model_id, m.held_bytes) for model_id, m in self.loaded.items()]

    def busy(self) -> set[str]:
        """The names in :meth:`held` that a run is using now (never unloaded)."""
        with self._index_lock:
            return set(self._in_use) | {net_name(key) for key in self._nets_in_use}

    def controlnet_id(self, family: str, control_type: str) -> str:
        """The registered ControlNet of ``control_type`` for ``family`` (manifests read once
        per pair); ControlNetUnavailable when there is none."""
        with self._index_lock:
            net_id = self._net_ids.get((family, control_type))
        if net_id is None:
            net_id = controlnets.find(self.models_dir, family, control_type)
            with self._index_lock:
                self._net_ids[(family, control_type)] = net_id
        return net_id

    def _report(self, change: ResidencyChange) -> None:
        if self.on_change is None:
            return
        try:
            self.on_change(change)
        except Exception:  # a reporting bug must not break a load or a run
            log.exception("residency change not reported", extra={"change": repr(change)})

    def budget_bytes(self) -> int | None:
        """The memory budget in bytes, or None for no limit (CPU without a setting)."""
        if self.memory_budget_bytes is not None:
            return self.memory_budget_bytes
        if not self.on_cuda:
            return None
        import torch

        return int(0.9 * torch.cuda.get_device_properties(torch.device(self.device)).total_memory)

    def load(self, model_id: str) -> LoadedModel:
        """Load (once) a registered model after checking its files (ADR 0707), unloading the
        least recently used models first when it would not fit the budget beside them."""
        with self._lock:
            return self._load_locked(model_id)

    def preload(self, model_id: str, pin: bool = False) -> None:
        """:meth:`load` for a LoadModel command: a model already resident is reported too
        (``Loaded(source="resident")``; it becomes the most recently used). With ``pin`` the
        model is pinned once resident (:attr:`pinned`); a load that fails pins nothing."""
        with self._lock:
            with self._index_lock:
                hit = self.loaded.get(model_id)
                if hit is not None:
                    self.loaded.move_to_end(model_id)
                    if pin:
                        self.pinned.add(model_id)
            if hit is not None:
                self._report(Loaded(model_id, hit.kind, hit.bytes, 0.0, RESIDENT))
                return
            self._load_locked(model_id)
            if pin:
                with self._index_lock:
                    self.pinned.add(model_id)

    def pins(self) -> list[str]:
        """The pinned models, by id, resident or not (the heartbeat's ``pinned``)."""
        with self._index_lock:
            return sorted(self.pinned)

    def make_room(self, model_id: str, need_bytes: int, nets: Collection[str] = ()) -> None:
        """Unload what must go (ControlNets, then models, each least recently used first,
        never one a run is using) for a run of ``model_id`` that needs ``need_bytes`` in all,
        its own weights and those of its ControlNets ``nets`` (ids) included: the worker's
        budget admission (ADR 0708) reserves its activations this way."""
        with self._lock:
            self._make_room(model_id, self.models_dir / model_id, need=need_bytes, keep_nets=nets)

    def evict(self, model_id: str) -> str:
        """Unload ``model_id`` for an EvictModel command, unless a run is using it: a resident
        model, or a loaded ControlNet named by its registry id (the id heartbeats and its
        ``Loaded(kind="controlnet")`` fact give it; every dtype copy of it goes). Returns
        ``"evicted"`` (reported ``Unloaded(command)``), ``"not_resident"`` (reported
        ``Unloaded(not_resident)``: nothing to do) or ``"in_use"`` (nothing done or reported;
        for a net: a run uses one of its copies). A LoRA's id (as heartbeats list it,
        ``kind="lora"``) unloads it from every resident model that holds it (its adapter
        deleted, its pre-merged deltas dropped), reported ``Unloaded(command, kind="lora")``
        once; ``"in_use"`` while a run uses one of those models (ADR 0704). Whatever the
        outcome, the model is no longer pinned here."""
        with self._lock:
            with self._index_lock:
                self.pinned.discard(model_id)
                present = model_id in self.loaded
                busy = self._in_use[model_id] > 0
                nets = [key for key in self.control_nets if key[0] == model_id]
                nets_busy = any(self._nets_in_use[key] > 0 for key in nets)
                holders = [(m_id, m) for m_id, m in self.loaded.items() if model_id in m.loras]
                holders_busy = any(self._in_use[m_id] > 0 for m_id, _ in holders)
            if not present and nets:  # ids are folder names: a model's or a net's, never both
                if nets_busy:
                    return "in_use"
                for key in nets:  # reported Unloaded(command) once, with the last copy
                    self._unload_net(net_name(key), reason=COMMAND)
                return "evicted"
            if not present and holders:  # a LoRA's id
                if holders_busy:
                    return "in_use"
                for m_id, m in holders:
                    self._unload_lora(m_id, m, model_id)
                self._report(Unloaded(model_id, COMMAND, kind="lora"))
                return "evicted"
            if not present:
                self._report(Unloaded(model_id, NOT_RESIDENT))
                return "not_resident"
            if busy:
                return "in_use"
            self._unload(model_id, reason=COMMAND)
            return "evicted"

    def unpin(self, model_id: str) -> str:
        """Drop the pin on ``model_id`` and keep it loaded (an EvictModel with
        ``keep_resident``: the pool releases a pin, ADR 0714); the worker's own eviction
        decides later when it leaves. Returns ``"resident"`` (reported ``Loaded(source=
        "resident")``, as a LoadModel of a resident model: it stays where it was in the LRU
        order) or ``"not_resident"`` (reported ``Unloaded(not_resident)``). A run using the
        model does not matter: nothing is unloaded."""
        with self._lock:
            with self._index_lock:
                self.pinned.discard(model_id)
                hit = self.loaded.get(model_id)
            if hit is None:
                self._report(Unloaded(model_id, NOT_RESIDENT))
                return "not_resident"
            self._report(Loaded(model_id, hit.kind, hit.bytes, 0.0, RESIDENT))
            return "resident"

    def defragment(self) -> DefragOutcome:
        """Compact the device's memory: on CUDA every resident pipeline no run is using goes
        to the CPU (pageable memory: a rare, bulk move that should not leave pinned blocks
        behind), the caching allocator's free blocks go back to the device
        (``torch.cuda.empty_cache``), and the pipelines come back, least recently used first,
        so they are allocated anew side by side. One that cannot come back is unloaded
        (reported ``Unloaded(oom)``). On CPU there is nothing to compact: garbage collection
        only (``compacted=False``). Returns what was done, with the device's memory before and
        after on CUDA (ADR 0709)."""
        t0 = time.perf_counter()
        with self._lock:
            gc.collect()
            if not self.on_cuda:
                return DefragOutcome("cpu", False, ms=(time.perf_counter() - t0) * 1000)
            torch = torch_module()
            before = self._memory_state(torch)
            busy = self.in_use()
            with self._index_lock:
                idle = [(m, model) for m, model in self.loaded.items() if m not in busy]
                skipped = tuple(m for m in self.loaded if m in busy)
            for _, model in idle:
                self._drop_premerged(model)  # recomputed by the next fused run
                accel.to_ram(model.pipe, pin=False)
            gc.collect()
            torch.cuda.empty_cache()
            moved: list[str] = []
            unloaded: list[str] = []
            for model_id, model in idle:
                try:
                    accel.to_device(model.pipe, self.device)
                    moved.append(model_id)
                except Exception as exc:  # e.g. out of memory: it cannot stay resident
                    log.error(
                        "model not moved back after defragmenting; unloading it",
                        extra={"model_id": model_id, "error": repr(exc)[:500]},
                    )
                    self._unload(model_id, reason=OOM)
                    unloaded.append(model_id)
            return DefragOutcome(
                "cuda",
                True,
                tuple(moved),
                skipped,
                tuple(unloaded),
                before,
                self._memory_state(torch),
                (time.perf_counter() - t0) * 1000,
            )

    def _memory_state(self, torch: Any) -> MemoryState | None:
        """The CUDA device's memory now, or None when it cannot be read (logged)."""
        try:
            return cuda_memory.read(torch, torch.device(self.device))
        except Exception as exc:  # reading is a report: never fail the defragmentation
            log.warning("device memory not read", extra={"error": repr(exc)[:500]})
            return None

    def _acquire(
        self, model_id: str, loras: tuple[tuple[str, float], ...] = ()
    ) -> tuple[LoadedModel, float, bool]:
        """:meth:`load` for a run, with ``loras`` ((id, weight), ...) loaded into it: the model
        is in use (never unloaded) until :meth:`_release`. Returns the model, the ms spent
        loading LoRAs and computing deltas, and whether the run is fused (:meth:`_premerge_locked`:
        the base weights hold its LoRA; else they are pristine)."""
        with self._lock:
            model = self._load_locked(model_id)
            with self._index_lock:
                self._in_use[model_id] += 1
            try:
                names = dict.fromkeys(name for name, _ in loras)
                lora_ms = sum(self._load_lora_locked(model_id, model, lora) for lora in names)
                fused, delta_ms = self._premerge_locked(model_id, model, loras)
            except BaseException:
                self._release(model_id)
                raise
            return model, lora_ms + delta_ms, fused

    def _premerge_locked(
        self, model_id: str, model: LoadedModel, loras: tuple[tuple[str, float], ...]
    ) -> tuple[bool, float]:
        """Prepare ``model``'s base weights for a run with ``loras`` (``_lock`` held): on a tier-1
        model with pre-merging on, the job is counted in the model's LoRA usage; a job whose
        LoRAs are exactly one of the ``top`` most used at a non-zero weight gets that LoRA fused
        (its deltas computed now if they are not yet: the ms are returned); any other job gets
        the pristine weights back. Deltas of LoRAs that left the top are dropped. Pre-merging
        never evicts: a LoRA whose deltas would not fit the budget beside what is held stays on
        the adapter path. Returns (fused, ms spent computing deltas)."""
        state = model.premerged
        if not self.premerge.enabled or model.tier != 1 or self.lora_usage is None:
            if state is not None:  # never on such a model; restore for safety
                state.restore()
            return False, 0.0
        now = self.clock()
        self.lora_usage.record(model_id, loras, now)
        top = self.lora_usage.top(model_id, now)
        if state is not None:
            for gone in [lora for lora in state.deltas if lora not in top]:
                state.drop(gone)
                log.info("LoRA no longer pre-merged", extra={"model_id": model_id, "lora_id": gone})
        choice = fused_choice(loras)
        if choice is None or choice[0] not in top or choice[0] in model.unmergeable:
            if state is not None:
                state.restore()
            return False, 0.0
        lora_id, weight = choice
        if state is None:
            state = Premerged()
        ms = 0.0
        if lora_id not in state.deltas:
            state.restore()  # deltas and pristine copies come from the loaded weights
            adapter = model.loras[lora_id].adapter
            try:
                extra = state.extra_bytes(model.pipe, adapter)
            except NotMergeable as exc:
                model.unmergeable.add(lora_id)
                log.warning(
                    "LoRA not mergeable; it runs as an adapter",
                    extra={"model_id": model_id, "lora_id": lora_id, "error": str(exc)},
                )
                return False, 0.0
            limit = self.budget_bytes()
            held = sum(size for _, size in self.held())
            if limit is not None and held + extra > limit * (1 - MARGIN_FRACTION):
                log.info(
                    "LoRA not pre-merged: its deltas do not fit the budget",
                    extra={"model_id": model_id, "lora_id": lora_id, "bytes": extra},
                )
                return False, 0.0
            ms = state.add(lora_id, model.pipe, adapter)
            with self._index_lock:
                model.premerged = state
            log.info(
                "LoRA pre-merged",
                extra={"model_id": model_id, "lora_id": lora_id, "bytes": extra, "delta_ms": ms},
            )
        state.fuse(lora_id, weight)
        return True, ms

    def _load_lora_locked(self, model_id: str, model: LoadedModel, lora_id: str) -> float:
        """Load LoRA ``lora_id`` into ``model``'s pipeline unless it is there (``_lock`` held);
        the ms it took (0 when cached). Raises ModelNotRegistered, ChecksumError or
        LoraMismatch."""
        if lora_id in model.loras:
            return 0.0
        t0 = time.perf_counter()
        folder = self.models_dir / lora_id
        entry = self._verified_locked(lora_id, folder)  # before anything is read (ADR 0707)
        if entry.kind != "lora":
            raise LoraMismatch(f"{lora_id!r} is registered as a {entry.kind!r}, not a LoRA")
        if entry.family != model.family:
            raise LoraMismatch(
                f"LoRA {lora_id!r} is for {entry.family!r} models; {model_id!r} is {model.family!r}"
            )
        weights = sorted(name for name in entry.files if name.endswith(".safetensors"))
        if len(weights) != 1 or "/" in weights[0]:
            raise LoraMismatch(
                f"LoRA {lora_id!r} must hold one top-level .safetensors file, has {weights}"
            )
        adapter = f"lora{model.adapters_made}"
        model.adapters_made += 1
        try:
            model.pipe.load_lora_weights(folder, weight_name=weights[0], adapter_name=adapter)
        except Exception as exc:  # e.g. shapes of another architecture of the same family
            try:
                model.pipe.delete_adapters(adapter)  # whatever part of it was loaded
            except Exception:
                log.warning("partly loaded LoRA not deleted", extra={"lora_id": lora_id})
            raise LoraMismatch(
                f"LoRA {lora_id!r} does not load into {model_id!r}: {exc!r}"
            ) from exc
        size = sum(n for _, n in safetensors_tensors(folder / weights[0]))
        ms = (time.perf_counter() - t0) * 1000
        with self._index_lock:
            model.loras[lora_id] = LoadedLora(adapter, size, ms)
        log.info(
            "LoRA loaded",
            extra={"model_id": model_id, "lora_id": lora_id, "bytes": size, "load_ms": ms},
        )
        return ms

    def _verified_locked(self, model_id: str, folder: Path) -> registry.ModelEntry:
        """``folder``'s entry once its files check out (``_lock`` held; ADR 0707): trusted by
        size and mtime where they equal the trust record, hashed otherwise. Bad files are
        reported (``Corrupted``, one per file), repaired from the manifest's ``source`` and
        checked again; raises ``registry.RepairFailed`` (a ChecksumError) when they cannot be."""
        try:
            return self.integrity.verify(folder)
        except registry.Corrupted as bad:
            self._repair_locked(model_id, folder, bad)
            return self.integrity.verify(folder)

    def _repair_locked(self, model_id: str, folder: Path, bad: registry.Corrupted) -> None:
        """Report ``bad``'s files, then repair them (raises ``registry.RepairFailed``)."""
        for m in bad.mismatches:
            self._report(Corrupted(model_id, m.file, m.expected, m.actual))
        log.error(
            "model files corrupted; repairing from the source",
            extra={"model_id": model_id, "files": [m.file for m in bad.mismatches]},
        )
        self.integrity.repair(folder, bad)

    def discard(self, model_id: str) -> set[str]:
        """Drop ``model_id``, found corrupted (ADR 0707), and for a LoRA every model that holds
        it, from the device (reported ``Unloaded(corrupted)``) and from the RAM tier, so the
        next load reads the repaired files. A model a run is using stays; returns those."""
        with self._lock:
            with self._index_lock:
                held = [*self.loaded.items(), *self.ram.items()]
                holders = {model_id} | {m for m, lm in held if model_id in lm.loras}
                busy = {m for m in holders if self._in_use[m] > 0}
                for m in holders - busy:
                    self.ram.pop(m, None)
                resident = sorted(m for m in holders - busy if m in self.loaded)
            for m in resident:
                self._unload(m, reason=CORRUPTED)
            return busy

    def _unload_lora(self, model_id: str, model: LoadedModel, lora_id: str) -> None:
        """Delete LoRA ``lora_id``'s adapter from ``model``'s pipeline (``_lock`` held, no run
        using the model), with its pre-merged deltas (the base weights restored first when it
        is the fused one); the next job naming it loads it again."""
        state = model.premerged
        if state is not None and lora_id in state.deltas:
            state.drop(lora_id)
            with self._index_lock:
                if not state.deltas:
                    model.premerged = None
        lora = model.loras[lora_id]
        model.pipe.delete_adapters(lora.adapter)
        with self._index_lock:
            del model.loras[lora_id]
        model.unmergeable.discard(lora_id)
        log.info(
            "LoRA evicted",
            extra={"model_id": model_id, "lora_id": lora_id, "bytes_freed": lora.bytes},
        )

    def _drop_premerged(self, model: LoadedModel) -> None:
        """Restore ``model``'s base weights and drop its pre-merged deltas and pristine copies
        (no run is using it)."""
        with self._index_lock:
            premerged, model.premerged = model.premerged, None
        if premerged is not None:
            premerged.clear()

    def _release(self, model_id: str) -> None:
        with self._index_lock:
            self._in_use[model_id] -= 1
            if self._in_use[model_id] <= 0:
                del self._in_use[model_id]

    def _load_locked(self, model_id: str) -> LoadedModel:
        """:meth:`load` with ``_lock`` held."""
        with self._index_lock:
            hit = self.loaded.get(model_id)
            if hit is not None:
                self.loaded.move_to_end(model_id)
                return hit
            kept = self.ram.pop(model_id, None)
        if kept is not None:
            return self._reload_from_ram_locked(model_id, kept)
        torch = torch_module()
        folder = self.models_dir / model_id
        t0 = time.perf_counter()
        entry = self._verified_locked(model_id, folder)  # before anything is read (ADR 0707)
        if entry.kind != "base":  # before anything is unloaded for it
            raise NotABaseModel(f"{model_id} is a registered {entry.kind}, not a base model")
        self._make_room(model_id, folder)
        pipe = accel.open_pipeline(folder, entry, self.device, self.accel)  # ADR 0709
        size = sum(
            p.numel() * p.element_size()
            for c in pipe.components.values()
            if isinstance(c, torch.nn.Module)
            for p in c.parameters()
        )
        model = LoadedModel(
            pipe,
            size,
            (time.perf_counter() - t0) * 1000,
            pipe.scheduler.config,
            entry.preview,
            entry.family,
            entry.kind,
            tier=entry.tier,
        )
        with self._index_lock:
            self.loaded[model_id] = model
        self._report(Loaded(model_id, entry.kind, size, model.load_ms))
        return model

    def _reload_from_ram_locked(self, model_id: str, model: LoadedModel) -> LoadedModel:
        """Move ``model`` (just taken out of the RAM tier) back to the device (``_lock`` held):
        room is made for its measured size, nothing is read from disk. When it cannot come back
        (no room beside models in use: it goes back to the RAM tier; the move failed: it is
        freed) the error is raised as a disk load's would be."""
        t0 = time.perf_counter()
        try:
            self._make_room(model_id, self.models_dir / model_id, need=model.bytes)
        except BaseException:
            self._keep_in_ram(model_id, model)
            raise
        if self.on_cuda:
            try:
                accel.to_device(model.pipe, self.device)  # from pinned memory (ADR 0709)
            except BaseException:
                log.error("model not moved back from RAM; freed", extra={"model_id": model_id})
                del model
                gc.collect()
                torch_module().cuda.empty_cache()
                raise
        model.load_ms = (time.perf_counter() - t0) * 1000
        with self._index_lock:
            self.loaded[model_id] = model
        log.info(
            "model reloaded from RAM",
            extra={"model_id": model_id, "bytes": model.bytes, "load_ms": model.load_ms},
        )
        self._report(Loaded(model_id, model.kind, model.bytes, model.load_ms, RAM))
        return model

    def _keep_in_ram(self, model_id: str, model: LoadedModel) -> bool:
        """Put ``model`` (off the device) into the RAM tier as its most recently used, freeing
        the least recently used ones until the tier fits ``ram_cache_bytes``; False (nothing
        kept) when the tier is off or the model alone is larger."""
        if model.bytes > self.ram_cache_bytes:
            return False
        with self._index_lock:
            self.ram[model_id] = model
            self.ram.move_to_end(model_id)
            dropped = []
            while sum(m.bytes for m in self.ram.values()) > self.ram_cache_bytes:
                dropped.append(self.ram.popitem(last=False)[0])
        for gone in dropped:
            log.info("model dropped from RAM", extra={"model_id": gone, "for_model": model_id})
        return True

    def _make_room(
        self,
        model_id: str,
        folder: Path,
        need: int | None = None,
        keep_nets: Collection[str] = (),
    ) -> None:
        """Unload what must go for ``model_id`` (a model, or a ControlNet's :func:`net_name`) to
        fit the budget (ControlNets first, then models, each least recently used first, only
        what must go, never one a run is using, nor the nets ``keep_nets`` whose weights
        ``need`` already counts); raise ModelDoesNotFit, unloading nothing, when it cannot fit
        even alone, ModelBlockedByRun when it could only with something in use unloaded."""
        budget = self.budget_bytes()
        if budget is None:
            return
        # On CPU the pipeline is loaded with dtype=float32, so float16 weights (the demo model's)
        # take twice their file size; on CUDA no dtype is passed and diffusers still builds its
        # own components (UNet, VAE) in float32 while transformers components (text encoder) keep
        # their stored dtype (measured loading the demo without dtype, diffusers 0.42.1 /
        # transformers 5.23.0: 27.8 MB against 14.1 MB of files). The estimate reads each
        # safetensors header's dtypes rather than assuming a factor.
        if need is None:  # a reload from RAM passes its measured size (no file is read)
            need = estimate_bytes(
                folder,
                upcast=lambda component: not self.on_cuda or is_diffusers_component(component),
            )
        if need > budget:
            raise ModelDoesNotFit(model_id, need, budget)
        held = self.held()  # nets, then models: nets are unloaded first
        own = {name for name, _ in held if net_id_of(name) in keep_nets}
        busy = self.busy() - {model_id} - own
        held_busy = sum(size for m, size in held if m in busy)
        with self._index_lock:
            pins = {m for m, _ in held if m in self.pinned} - busy - {model_id}
        held_pins = sum(size for m, size in held if m in pins)
        # What runs are using stays: it counts as part of what must fit (``keep``); so do the
        # pinned models while the rest can make room (ADR 0711).
        victims = evictions(
            held, {model_id} | busy | own | pins, need + held_busy + held_pins, budget
        )
        if victims is None and pins:
            victims = evictions(held, {model_id} | busy | own, need + held_busy, budget)
            overridden = [v for v in victims or () if v in pins]
            if overridden:
                PIN_OVERRIDES.inc(len(overridden))
                log.warning(
                    "pinned model unloaded: the load cannot fit beside it",
                    extra={"model_id": model_id, "pinned": overridden, "need_bytes": need},
                )
        if victims is None:
            raise ModelBlockedByRun(model_id, need, budget, busy)
        for victim in victims:
            if is_net_name(victim):
                self._unload_net(victim, reason=MAKE_ROOM, for_model=model_id)
            else:
                self._unload(victim, reason=MAKE_ROOM, for_model=model_id)

    def _unload(self, model_id: str, *, reason: str, for_model: str | None = None) -> None:
        """Unload a resident model (``_lock`` held) and report it: into the RAM tier when it was
        evicted to make room or on a command and the tier takes it (on CUDA moved to the CPU
        first), else freed."""
        with self._index_lock:
            gone = self.loaded.pop(model_id)
        freed = gone.held_bytes
        self._drop_premerged(gone)  # its deltas and pristine copies go with it, weights restored
        to_ram = reason in (MAKE_ROOM, COMMAND) and 0 < gone.bytes <= self.ram_cache_bytes
        if to_ram and self.on_cuda:
            try:
                accel.to_ram(gone.pipe, self.accel.pin_ram_tier)  # pinned (ADR 0709)
            except Exception as exc:  # e.g. host memory: free it as without a RAM tier
                log.warning(
                    "model not moved to RAM; freed",
                    extra={"model_id": model_id, "error": repr(exc)[:500]},
                )
                to_ram = False
        if to_ram:
            self._keep_in_ram(model_id, gone)
        del gone  # a run still holding the pipeline keeps it alive until it returns
        gc.collect()
        if self.on_cuda:
            import torch

            torch.cuda.empty_cache()
        if reason == MAKE_ROOM:
            MODEL_EVICTIONS.inc()
        log.info(
            "model evicted",
            extra={
                "model_id": model_id,
                "bytes_freed": freed,
                "for_model": for_model,
                "reason": reason,
                "to_ram": to_ram,
            },
        )
        self._report(Unloaded(model_id, reason, for_model))
        self._unload_orphan_nets(reason, for_model)

    def _unload_orphan_nets(self, reason: str, for_model: str | None) -> None:
        """Unload the ControlNets no run is using whose family has no device-resident model
        left (``_lock`` held): they serve that family only."""
        with self._index_lock:
            families = {m.family for m in self.loaded.values()}
            orphans = [
                net_name(key)
                for key, net in self.control_nets.items()
                if net.family not in families and self._nets_in_use[key] <= 0
            ]
        for name in orphans:
            self._unload_net(name, reason=reason, for_model=for_model)

    def _unload_net(self, name: str, *, reason: str, for_model: str | None = None) -> None:
        """Unload the ControlNet ``name`` (a :func:`net_name`; ``_lock`` held) and free it;
        reported ``Unloaded`` under its id once no copy of it (in another dtype) is left."""
        with self._index_lock:
            key = next((k for k in self.control_nets if net_name(k) == name), None)
            if key is None:  # already gone with its family's last model
                return
            gone = self.control_nets.pop(key)
            self._nets_in_use.pop(key, None)
            last = all(k[0] != key[0] for k in self.control_nets)
        freed = gone.bytes
        del gone
        gc.collect()
        if self.on_cuda:
            torch_module().cuda.empty_cache()
        if reason == MAKE_ROOM:
            MODEL_EVICTIONS.inc()
        log.info(
            "ControlNet evicted",
            extra={
                "controlnet_id": key[0],
                "bytes_freed": freed,
                "for_model": for_model,
                "reason": reason,
            },
        )
        if last:
            self._report(Unloaded(key[0], reason, for_model, kind="controlnet"))

    def warm_up(self, model_id: str | None) -> None:
        """Import the ML stack and every sampler class now (not on the first job), then load
        ``model_id`` if registered. A job that starts meanwhile waits for the import (ml.py)."""
        import_all(samplers.class_names())

        if model_id and (self.models_dir / model_id / "model.json").exists():
            try:
                self.load(model_id)
            except ModelDoesNotFit as exc:  # a small worker of a fleet: start cold, take work
                log.warning("preload skipped: %s", exc, extra={"model_id": model_id})

    def run(
        self,
        plan: RunPlan,
        on_step: Callable[[int, int, str | None], None],
        cancelled: Callable[[], bool],
        pause: Callable[[], bool] | None = None,
        resume_state: bytes | None = None,
    ) -> RunResult:
        """Run ``plan``; with ``pause``, stop at the first step boundary where it returns True
        (raising :class:`Paused`, never after the last step; only for
        :data:`~imagegen_gpu_worker.domain.run.RESUMABLE`
        samplers); with ``resume_state`` (from a :class:`Paused`), run only the steps left."""
        torch_module()  # the ML stack, imported under its lock (ml.py)
        saved = load_state(resume_state, plan) if resume_state is not None else None

        # 1. The model, warm or loaded now (either way now the most recently used).
        t0 = time.perf_counter()
        warm = plan.model_id in self.loaded
        (WARM_HITS if warm else COLD_LOADS).inc()  # the cache-miss rate's two counts
        # In use (never unloaded) until the run returns; the plan's LoRAs loaded into it.
        # The control images first (ADR 0706): a missing one fails the run before any load.
        # A net whose window is empty (start >= end percent) would change nothing (diffusers
        # refuses it): it is left out.
        uses = tuple(u for u in plan.controlnets if u.start_percent < u.end_percent)
        images = controlnets.control_images(self.files_dir, uses, plan.width, plan.height)
        with tracer.start_as_current_span(
            "model load",
            attributes={
                "imagegen.model_id": plan.model_id,
                "imagegen.model.warm": warm,
                "imagegen.loras": len(plan.loras),
            },
        ):
            model, lora_ms, fused = self._acquire(plan.model_id, plan.loras)
        nets: list[tuple[str, str]] = []  # the nets this run uses (in use until it returns)
        try:
            # fused: its one LoRA is in the base weights, the adapters are off
            set_adapters(model, () if fused else plan.loras)
            control = self._control(uses, model, images, nets) if uses else None
            return self._run(
                plan, model, warm, t0, on_step, cancelled, pause, saved, lora_ms, control
            )
        finally:
            self._release_nets(nets)
            self._release(plan.model_id)

    def _release_nets(self, keys: list[tuple[str, str]]) -> None:
        with self._index_lock:
            for key in keys:
                self._nets_in_use[key] -= 1
                if self._nets_in_use[key] <= 0:
                    del self._nets_in_use[key]

    def _control(
        self,
        uses: tuple[ControlNetUse, ...],
        model: LoadedModel,
        images: list[Any],
        in_use: list[tuple[str, str]],
    ) -> tuple[Any, dict[str, Any], float]:
        """The ControlNet pipeline for ``uses`` around ``model``'s components, its call
        arguments and the ms spent loading nets: each registered net of a use's type for the
        model's family is verified and loaded once (in the model's dtype), under the load lock,
        after room is made for it in the budget (ADR 0706, 0708). Each net is appended to
        ``in_use`` (the caller releases them) as soon as it is held."""
        denoiser = getattr(model.pipe, "unet", None)
        dtype = (model.pipe.transformer if denoiser is None else denoiser).dtype
        nets, load_ms = [], 0.0
        with self._lock:
            for use in uses:
                net_id = self.controlnet_id(model.family, use.type)
                key = (net_id, str(dtype))
                with self._index_lock:
                    held = self.control_nets.get(key)
                    if held is not None:
                        self.control_nets.move_to_end(key)
                if held is None:
                    folder = self.models_dir / net_id
                    self._make_room(net_name(key), folder)  # for its files' estimate
                    held = controlnets.load(
                        self.models_dir,
                        net_id,
                        model.family,
                        self.device,
                        dtype,
                        verify=functools.partial(self._verified_locked, net_id),
                    )
                    load_ms += held.load_ms
                    with self._index_lock:
                        self.control_nets[key] = held
                    self._report(Loaded(net_id, "controlnet", held.bytes, held.load_ms))
                with self._index_lock:
                    self._nets_in_use[key] += 1
                in_use.append(key)
                nets.append(held.net)
        pipe = controlnets.pipeline(model.family, model.pipe, nets)
        return pipe, controlnets.call_kwargs(model.family, uses, images), load_ms

    def _run(
        self,
        plan: RunPlan,
        model: LoadedModel,
        warm: bool,
        t0: float,
        on_step: Callable[[int, int, str | None], None],
        cancelled: Callable[[], bool],
        pause: Callable[[], bool] | None,
        saved: dict[str, Any] | None,
        lora_ms: float = 0.0,
        control: tuple[Any, dict[str, Any], float] | None = None,
    ) -> RunResult:
        """Steps 2 to 6 of :meth:`run`, with ``model`` loaded and in use, its adapters set;
        with ``control`` (:meth:`_control`), through the ControlNet pipeline."""
        torch = torch_module()
        load_ms = (0.0 if warm else model.load_ms) + lora_ms
        pipe = model.pipe if control is None else control[0]
        extra: dict[str, Any] = {} if control is None else control[1]
        load_ms += 0.0 if control is None else control[2]
        # A run with ControlNets never pauses: resumed, the pipeline would count their
        # start/end percent over the remaining steps only (ADR 0706).
        resumable = (
            control is None and plan.scheduler in RESUMABLE and model.family in RESUMABLE_FAMILIES
        )
        pausing = pause if resumable else None

        # 2. The sampler, from the model's own scheduler config and its family's table.
        base = pipe.scheduler.config if model.scheduler_config is None else model.scheduler_config
        sampler = make_sampler(model.family, plan.scheduler, base)
        pipe.scheduler = sampler
        skip = 0 if saved is None else int(saved["steps_done"])

        # 3. A CPU generator (the same seed gives the same pixels everywhere) and, for a resumed
        # run, the latents where the paused run stopped.
        generator = torch.Generator("cpu").manual_seed(plan.seed)
        latents = None
        if saved is not None:  # continue where the paused run stopped
            generator.set_state(saved["generator"])
            latents = saved["latents"].to(self.device)

        # Each step is timed from its first denoiser call to the step callback (metrics.py).
        steps = StepTimer(model.family)

        # 4. Progress, cancellation and pausing at step boundaries (``step`` counts the steps
        # of this call; a resumed call starts after ``skip``).
        def callback(p: Any, step: int, timestep: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
            steps.ended()  # imagegen_denoise_step_seconds{family}
            if cancelled():
                raise Cancelled(plan.job_id)
            done = skip + step + 1
            trace.get_current_span().add_event("step", {"imagegen.step": done})
            if done % plan.progress_every == 0 or done == plan.steps:
                lat = image_latents(pipe, kwargs["latents"], plan)
                on_step(done, plan.steps, preview_png_b64(lat, model.preview))
            total = len(sampler.timesteps)
            if pausing is not None and done < total and pausing():
                raise Paused(
                    plan.job_id,
                    done,
                    total,
                    save_state(plan, done, total, kwargs["latents"], sampler, generator),
                )
            return {}

        # 5. Denoise (the VAE decodes in tiles above the plan's size on CUDA, ADR 0709).
        accel.prepare_run(pipe, model.family, self.device, self.accel, plan.width, plan.height)
        t1 = time.perf_counter()
        if saved is not None:
            # The pipeline sees the saved sampler state and only the remaining timesteps.
            object.__setattr__(
                pipe, "scheduler", _ResumedSampler(sampler, skip, saved["scheduler"], self.device)
            )
        denoiser = getattr(pipe, "unet", None)
        denoiser = getattr(pipe, "transformer", None) if denoiser is None else denoiser
        hook = getattr(denoiser, "register_forward_pre_hook", None)
        timing = hook(steps.started) if hook is not None else None
        denoise: dict[str, str | int] = {  # one span for the loop, an event per step (ADR 0800)
            "imagegen.model_id": plan.model_id,
            "imagegen.family": model.family,
            "imagegen.steps": plan.steps,
            "imagegen.steps_skipped": skip,
            "imagegen.sampler": plan.scheduler,
            "imagegen.num_images": plan.num_images,
            "imagegen.width": plan.width,
            "imagegen.height": plan.height,
            "imagegen.controlnets": 0 if control is None else len(plan.controlnets),
        }
        try:
            # batch_part: an out-of-memory retry's part of a split batch (ADR 0708).
            with (
                tracer.start_as_current_span("denoise", attributes=denoise),
                torch.inference_mode(),
                batch_part(pipe, plan),
                controlnets.control_latents_by_mode(model.family if control else "", pipe),
            ):
                out = pipe(
                    **call_kwargs(model.family, plan),
                    **extra,
                    generator=generator,
                    latents=latents,
                    callback_on_step_end=callback,
                    callback_on_step_end_tensor_inputs=["latents"],
                )
        finally:
            object.__setattr__(pipe, "scheduler", sampler)
            if timing is not None:
                timing.remove()
        t2 = time.perf_counter()

        # 6. PNG bytes (deterministic encoder settings: same pixels, same bytes).
        pngs = [encode_png(image) for image in out.images]
        t3 = time.perf_counter()
        return RunResult(
            pngs,
            {
                "load": load_ms,
                "denoise": (t2 - t1) * 1000,
                "encode_png": (t3 - t2) * 1000,
                "total": (t3 - t0) * 1000,
            },
            plan.steps,
        )


NET_PREFIX = "controlnet:"  # how a ControlNet is named among the models in the budget


def net_name(key: tuple[str, str]) -> str:
    """The name of the loaded ControlNet ``(id, dtype)`` in :meth:`DiffusersRunner.held`
    (never a model id: ids are folder names, without a colon)."""
    return f"{NET_PREFIX}{key[0]}@{key[1]}"


def is_net_name(name: str) -> bool:
    return name.startswith(NET_PREFIX)


def net_id_of(name: str) -> str | None:
    """The ControlNet id in a :func:`net_name`, None for a model's name."""
    if not is_net_name(name):
        return None
    return name.removeprefix(NET_PREFIX).rsplit("@", 1)[0]


def set_adapters(model: LoadedModel, loras: tuple[tuple[str, float], ...]) -> None:
    """Activate exactly the plan's LoRAs (loaded into ``model``), each with its weight; none
    (``disable_lora``, the base model's exact computation) for a plan without LoRAs."""
    if not model.loras:
        return  # never had one: nothing to switch off
    if not loras:
        model.pipe.disable_lora()
        return
    weights: dict[str, float] = {}
    for name, weight in loras:  # the same LoRA twice: one adapter, the weights added
        adapter = model.loras[name].adapter
        weights[adapter] = weights.get(adapter, 0.0) + float(weight)
    model.pipe.enable_lora()
    model.pipe.set_adapters(list(weights), adapter_weights=list(weights.values()))


def make_sampler(family: str, name: str, base_config: Any) -> Any:
    """Sampler ``name`` of ``family``'s table, built from the model's own scheduler config
    (raises UnsupportedSampler when the family does not run it). A flow-matching solver
    (``use_flow_sigmas``) gets the model's ``shift`` as its ``flow_shift`` unless the table
    sets one, so its schedule is the model's."""
    cls_name, extra = samplers.sampler_for(family, name)
    if extra.get("use_flow_sigmas") and "flow_shift" not in extra:
        extra["flow_shift"] = float(base_config.get("shift", 1.0))
    return diffusers_class(cls_name).from_config(base_config, **extra)


def call_kwargs(family: str, plan: RunPlan) -> dict[str, Any]:
    """The pipeline arguments of ``plan`` for ``family`` (see the module docstring)."""
    kwargs: dict[str, Any] = {
        "prompt": plan.prompt,
        "width": plan.width,
        "height": plan.height,
        "num_inference_steps": plan.steps,
        "guidance_scale": plan.guidance_scale,
        "num_images_per_prompt": plan.num_images,
    }
    if family != "flux":
        kwargs["negative_prompt"] = plan.negative_prompt or None
    return kwargs


def image_latents(pipe: Any, latents: Any, plan: RunPlan) -> Any:
    """``latents`` as (batch, channels, h, w): Flux's packed (batch, tokens, channels) ones
    unpacked with the pipeline's own function; others as they are."""
    unpack = getattr(pipe, "_unpack_latents", None)
    if latents.dim() == 3 and unpack is not None:
        return unpack(latents, plan.height, plan.width, pipe.vae_scale_factor)
    return latents


class _ResumedSampler:
    """The pipeline's view of a sampler resumed after ``skip`` steps.

    ``set_timesteps`` runs the sampler's own, then puts back the saved state (step index,
    multistep history, ...); ``timesteps`` are only the remaining ones, so the pipeline's loop
    starts at step ``skip``; ``init_noise_sigma`` is 1 because the saved latents are already
    scaled (the pipeline multiplies passed latents by it; x * 1.0 == x exactly). Everything else
    (``step``, ``scale_model_input``, ``order``, ``config``) is the sampler's own.
    """

    def __init__(self, inner: Any, skip: int, state: dict[str, Any], device: str) -> None:
        self._inner, self._skip, self._state, self._device = inner, skip, state, device

    def set_timesteps(self, *args: Any, **kwargs: Any) -> None:
        self._inner.set_timesteps(*args, **kwargs)
        for name, value in self._state.items():
            setattr(
                self._inner, name, _to_device(value, getattr(self._inner, name, None), self._device)
            )

    @property
    def timesteps(self) -> Any:
        return self._inner.timesteps[self._skip :]

    @property
    def init_noise_sigma(self) -> float:
        return 1.0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


def _plain(value: Any) -> bool:
    """Whether a sampler attribute can be saved and loaded with ``torch.load(weights_only)``."""
    import torch

    if value is None or isinstance(value, bool | int | float | str | torch.Tensor):
        return True
    return isinstance(value, list | tuple) and all(_plain(v) for v in value)


def _detach(value: Any) -> Any:
    import torch

    if isinstance(value, torch.Tensor):
        return value.detach().to("cpu", copy=True)
    if isinstance(value, list | tuple):
        return type(value)(_detach(v) for v in value)
    return value


def _to_device(value: Any, current: Any, device: str) -> Any:
    """A loaded value on the device of the attribute it replaces (the run's device if none)."""
    import torch

    if isinstance(value, torch.Tensor):
        where = current.device if isinstance(current, torch.Tensor) else device
        return value.to(where)
    if isinstance(value, list | tuple):
        return type(value)(_to_device(v, None, device) for v in value)
    return value


def save_state(
    plan: RunPlan, done: int, total: int, latents: Any, sampler: Any, generator: Any
) -> bytes:
    """The bytes a resumed run needs: latents, sampler state and generator state after
    ``done`` steps, with the plan's identity to check against on resume."""
    import numpy as np
    import torch

    sampler_state: dict[str, Any] = {}
    for name, value in vars(sampler).items():
        if name == "_internal_dict" or isinstance(value, np.ndarray):
            continue  # the config, and arrays that set_timesteps recomputes (never stepped)
        if not _plain(value):
            raise BadResumeState(
                f"sampler attribute {name} ({type(value).__name__}) cannot be saved"
            )
        sampler_state[name] = _detach(value)
    doc = {
        "format": STATE_FORMAT,
        "job_id": plan.job_id,
        "sampler": plan.scheduler,
        "identity": _identity(plan),
        "steps_done": done,
        "total_steps": total,
        "latents": _detach(latents),
        "generator": generator.get_state(),
        "scheduler": sampler_state,
    }
    buf = io.BytesIO()
    torch.save(doc, buf)
    return buf.getvalue()


def load_state(data: bytes, plan: RunPlan) -> dict[str, Any]:
    """The saved state (tensors and plain values only: ``weights_only``), checked against the
    plan it is resumed for."""
    import torch

    try:
        doc: dict[str, Any] = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise BadResumeState(f"unreadable pause state: {exc!r}") from exc
    if doc.get("format") != STATE_FORMAT:
        raise BadResumeState(f"pause state format {doc.get('format')!r}, not {STATE_FORMAT}")
    if doc.get("job_id") != plan.job_id or doc.get("identity") != _identity(plan):
        raise BadResumeState(f"pause state of {doc.get('job_id')!r} does not match this plan")
    return doc


def _identity(plan: RunPlan) -> list[Any]:
    """What must be equal between the paused and the resumed run for the images to be equal
    (the LoRAs only when there are some, so states saved before LoRAs existed still match)."""
    loras = [[name, float(weight)] for name, weight in plan.loras]
    identity: list[Any] = [
        plan.model_id,
        plan.prompt,
        plan.negative_prompt,
        plan.width,
        plan.height,
        plan.steps,
        float(plan.guidance_scale),
        plan.scheduler,
        plan.seed,
        plan.num_images,
    ]
    return [*identity, loras] if loras else identity


HALF_DTYPES = {"F16", "BF16"}  # safetensors dtype names that an upcast to float32 doubles


def estimate_bytes(folder: Path, upcast: Callable[[Path], bool]) -> int:
    """Memory a model's weights take once loaded, from its weight files alone (no torch).

    ``*.safetensors``: the tensors listed in each file's header, float16/bfloat16 ones counted
    twice when ``upcast(component folder)`` (they are loaded as float32). ``*.bin`` (pickles,
    dtypes unknown without unpickling): the file size, doubled when ``upcast`` (an upper bound).
    """
    total = 0
    for path in sorted(folder.rglob("*")):
        if not path.is_file() or path.suffix not in (".safetensors", ".bin"):
            continue
        factor = 2 if upcast(path.parent) else 1
        if path.suffix == ".safetensors":
            for dtype, nbytes in safetensors_tensors(path):
                total += nbytes * (factor if dtype in HALF_DTYPES else 1)
        else:
            total += path.stat().st_size * factor
    return total


def safetensors_tensors(path: Path) -> list[tuple[str, int]]:
    """(dtype, bytes) of every tensor of a safetensors file, read from its header only."""
    with path.open("rb") as f:
        (header_len,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(header_len))
    return [
        (t["dtype"], t["data_offsets"][1] - t["data_offsets"][0])
        for name, t in header.items()
        if name != "__metadata__"
    ]


def is_diffusers_component(component: Path) -> bool:
    """Whether a component folder holds a diffusers model (its config names a diffusers
    version) rather than a transformers one."""
    config = component / "config.json"
    return config.is_file() and "_diffusers_version" in json.loads(config.read_text())


def encode_png(image: Any) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG", optimize=False, compress_level=6)
    return buf.getvalue()


def preview_rgb(lat: Any, preview: dict[str, Any] | None) -> Any:
    """(3, h, w) colours of one image's latents (c, h, w), painted as model.json's ``preview``
    says (see :mod:`.registry`); without one, SD's linear factors for 4 channels, else the
    first three channels (grey from the first when there are fewer)."""
    import torch

    spec = preview or {}
    if spec.get("kind") == "layout":  # a designed layout map: the object over the background
        presence = lat[int(spec["presence"])].clamp(0.0, 1.0)
        return lat[list(spec["background"])] * (1.0 - presence) + lat[list(spec["color"])]
    if spec.get("kind") == "linear":
        factors = torch.tensor(spec["latent_rgb"], dtype=lat.dtype)
        return torch.einsum("chw,cr->rhw", lat, factors)
    if lat.shape[0] == 4:
        return torch.einsum("chw,cr->rhw", lat, torch.tensor(LATENT_RGB))
    if lat.shape[0] < 3:  # grey from the first channel
        return lat[:1].expand(3, -1, -1)
    return lat[:3]


def preview_png_b64(
    latents: Any, preview: dict[str, Any] | None = None, max_side: int = 32
) -> str | None:
    """A small PNG of the current latents (no VAE), coloured by :func:`preview_rgb`; None for
    latents it cannot paint (neither (batch, c, h, w) nor packed square (batch, tokens, c))."""
    import math

    from PIL import Image

    lat = latents[0].float()
    if lat.dim() == 2:  # packed (tokens, channels): a square grid of tokens, if it is one
        side = math.isqrt(lat.shape[0])
        if side * side != lat.shape[0]:
            return None
        lat = lat.T.reshape(lat.shape[1], side, side)
    if lat.dim() != 3:
        return None
    rgb = preview_rgb(lat, preview)
    lo, hi = rgb.amin(), rgb.amax()
    rgb = ((rgb - lo) / (hi - lo + 1e-6) * 255).clamp(0, 255).byte().permute(1, 2, 0).numpy()
    image = Image.fromarray(rgb)
    image.thumbnail((max_side, max_side))
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()

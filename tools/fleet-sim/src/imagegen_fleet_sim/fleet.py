"""Simulated GPU workers: VRAM with an LRU of resident weights, loads, denoising, pausing.

Eviction is the gpu-worker's own (``imagegen_runtime.residency.evictions``): least recently
used first, only what must go. With the pool policy (``--pool ours``) the engine swaps in the
pool's eviction (``imagegen_pool_manager.domain.policy.pick_victims``), pins tier-1 models and
starts preloads (``begin_load``): a preload occupies the worker (not accepting) for its load
time and counts as a cold load."""

from __future__ import annotations

import math
import random
from collections import OrderedDict, deque
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass

from imagegen_runtime.residency import evictions
from imagegen_scheduler.domain import (
    JobRequest,
    ModelCatalog,
    WorkerView,
    denoise_s,
    footprint_gb,
)

from .scenario import GpuType

# (resident (id, GB) least recent first, keep, need, budget) -> ids to unload, or None
Evict = Callable[[Iterable[tuple[str, float]], Collection[str], float, float], list[str] | None]
USES_WINDOW_S = 24 * 3600.0

LATENT_SAVE_S = 0.3  # writing latents at a step boundary when paused
JITTER_SIGMA = 0.08  # log-normal spread of real denoising time around the estimate


@dataclass(slots=True)
class Run:
    """The job a worker is running."""

    request: JobRequest
    token: int  # fencing token of the assignment
    steps: int  # steps this run must do
    assigned_at: float
    denoise_start: float  # after loads
    end: float  # when it finishes if not paused
    paused_at: float | None = None  # set when a preemption is scheduled


@dataclass(slots=True)
class StartInfo:
    cold: bool  # the base model had to be loaded
    warm_full: bool  # nothing had to be loaded
    base_loads: int
    adapter_loads: int
    end: float


class SimWorker:
    def __init__(
        self,
        worker_id: str,
        gpu: GpuType,
        catalog: ModelCatalog,
        load_samples: Mapping[str, Sequence[float]] | None = None,
    ) -> None:
        """``load_samples``: load times measured on a real fleet, per model or adapter id, drawn
        from as they are (a replay, ADR 0713); an item without samples draws uniformly from its
        catalog range ``load_s``."""
        self.worker_id = worker_id
        self.gpu = gpu
        self.catalog = catalog
        self.load_samples: Mapping[str, Sequence[float]] = load_samples or {}
        self.resident: OrderedDict[str, float] = OrderedDict()  # id -> GB, least recent first
        self.run: Run | None = None
        self.denoise_s_total = 0.0  # time spent denoising inside the measured window
        self.evict: Evict = evictions
        # pool policy only (--pool ours): what the eviction score reads, pins, a preload
        self.track = False
        self.last_used: dict[str, float] = {}
        self.uses: dict[str, deque[float]] = {}
        self.pinned: frozenset[str] = frozenset()
        self.loading: tuple[str, float] | None = None  # (model, done at) while preloading

    def view(self) -> WorkerView:
        return WorkerView(
            self.worker_id,
            self.gpu.name,
            self.gpu.budget_gb,
            self.gpu.speed,
            self.gpu.capabilities,
            frozenset(self.resident),
            self.loading is None,
        )

    def pin(self, models: frozenset[str]) -> None:
        self.pinned = models

    def uses_24h(self, key: str, now: float) -> int:
        times = self.uses.get(key)
        if not times:
            return 0
        while times and times[0] <= now - USES_WINDOW_S:
            times.popleft()
        return len(times)

    def _touch(self, key: str, now: float, used: bool) -> None:
        if self.track:
            self.last_used[key] = now
            if used:
                self.uses.setdefault(key, deque()).append(now)

    def begin_load(self, model_id: str, now: float, rng: random.Random) -> float | None:
        """Start a preload: make room (the pool's eviction), occupy the worker for the load time.

        Returns when it is done, or None when the model cannot fit."""
        assert self.run is None and self.loading is None, f"{self.worker_id} is not idle"
        spec = self.catalog.models[model_id]
        victims = self.evict(
            self.resident.items(), {model_id}, spec.weights_gb, self.gpu.residency_gb
        )
        if victims is None:
            return None
        for key in victims:
            del self.resident[key]
        self.resident[model_id] = spec.weights_gb
        self._touch(model_id, now, used=False)
        done = now + self._load_s(model_id, spec.load_s, rng)
        self.loading = (model_id, done)
        return done

    def _load_s(self, key: str, span: tuple[float, float], rng: random.Random) -> float:
        samples = self.load_samples.get(key)
        return rng.choice(samples) if samples else rng.uniform(*span)

    def _sizes(self, request: JobRequest) -> dict[str, float]:
        sizes = {request.model_id: self.catalog.models[request.model_id].weights_gb}
        for a in request.adapters:
            sizes[a] = self.catalog.adapters[a].weights_gb
        return sizes

    def preload(self, request: JobRequest, now: float = 0.0) -> None:
        """Make a job's weights resident without counting a load (initial warm pool)."""
        self._make_room(request, job=False)
        for key, gb in self._sizes(request).items():
            self.resident[key] = gb
            self.resident.move_to_end(key)
            self._touch(key, now, used=False)

    def _make_room(self, request: JobRequest, *, job: bool) -> None:
        """Unload what must go for ``request``'s weights (the eviction's order, only what must go).

        A job on a worker whose memory is larger than its budget (a replayed CPU worker, ADR
        0713) is admitted as the real worker admits it (``BudgetAdmission.admit``, ADR 0708):
        what stays beside the job's need by the budget formula (``footprint_gb``) must fit the
        budget, the memory less the margin. Only weights made resident without a job (a pool
        load, the state a replay starts from) may fill the whole memory. Elsewhere (the seed's
        GPU classes: one budget) the weights and the job's activations fit the budget."""
        sizes = self._sizes(request)
        if job and self.gpu.memory_gb is not None:
            need, limit = footprint_gb(request, self.catalog), self.gpu.budget_gb
        else:
            model = self.catalog.models[request.model_id]
            activations = model.activation_gb_per_mpix * request.megapixels * request.batch
            need, limit = sum(sizes.values()) + activations, self.gpu.residency_gb
        victims = self.evict(self.resident.items(), sizes, need, limit)
        if victims is None:
            raise AssertionError(f"{request.job_id} cannot fit {self.worker_id}: policy bug")
        for key in victims:
            del self.resident[key]

    def start(
        self, request: JobRequest, steps: int, token: int, now: float, rng: random.Random
    ) -> StartInfo:
        assert self.run is None, f"{self.worker_id} is busy: policy assigned twice"
        assert self.loading is None, f"{self.worker_id} is preloading: not accepting"
        self._make_room(request, job=True)
        load = 0.0
        base_loads = adapter_loads = 0
        for key, gb in self._sizes(request).items():
            if key not in self.resident:
                spec = self.catalog.models.get(key) or self.catalog.adapters[key]
                load += self._load_s(key, spec.load_s, rng)
                if key == request.model_id:
                    base_loads += 1
                else:
                    adapter_loads += 1
                self.resident[key] = gb
            self.resident.move_to_end(key)
            self._touch(key, now, used=True)
        work = denoise_s(request, steps, self.gpu.speed, self.catalog)
        work *= math.exp(rng.gauss(0.0, JITTER_SIGMA))
        end = now + load + work
        self.run = Run(request, token, steps, now, now + load, end)
        return StartInfo(
            base_loads > 0, base_loads + adapter_loads == 0, base_loads, adapter_loads, end
        )

    def pause_point(self, now: float) -> tuple[float, int] | None:
        """When the running job reaches its next step boundary, and steps done by then.

        None when it would finish first (nothing to pause).
        """
        run = self.run
        assert run is not None
        step = (run.end - run.denoise_start) / run.steps
        done = math.ceil(max(0.0, now - run.denoise_start) / step)
        if done >= run.steps:
            return None
        return run.denoise_start + done * step + LATENT_SAVE_S, done

    def account_until(self, window_end: float) -> None:
        """Add the denoising a still-running job did inside the window (end of simulation)."""
        if self.run is not None:
            start, end = max(self.run.denoise_start, 0.0), min(self.run.end, window_end)
            self.denoise_s_total += max(0.0, end - start)

    def stop(self, now: float, window_end: float) -> Run:
        """End the current run at ``now`` (finished or paused); account its denoising time."""
        run = self.run
        assert run is not None
        self.run = None
        # a replayed turnaround (PlatformLatency) may stop it after its end: not denoising
        start, end = run.denoise_start, min(now, run.end, window_end)
        if end > start:
            self.denoise_s_total += end - max(start, 0.0)
        return run

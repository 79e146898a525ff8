"""One decision round: the overlay a policy builds on top of the state it must not mutate."""

from __future__ import annotations

import functools
import heapq
import math
from collections.abc import Iterator

from .events import Assign, Decision, Reason
from .model import TIERS, Tier, WorkerView, fits
from .queues import QueuedJob
from .state import SchedulerState

Shape = tuple[float, frozenset[str]]  # a worker class: (memory budget GB, model families)


class Round:
    """Jobs taken and workers used so far in one ``decide`` call, and the tokens handed out."""

    def __init__(self, state: SchedulerState, now: float) -> None:
        self.state = state
        self.now = now
        self.taken: set[str] = set()
        self.assigned_by_tier: dict[Tier, int] = dict.fromkeys(TIERS, 0)
        self.decisions: list[Decision] = []
        self._next_token = state.last_token + 1
        self.assigned_by_user: dict[tuple[Tier, str], int] = {}
        accepting = state.accepting_workers()
        self.reserve_slots = math.ceil(state.config.relax_reserve_fraction * accepting)
        self.user_cap = state.user_cap()
        self._orders: dict[tuple[Tier, bool], tuple[list[QueuedJob], Iterator[QueuedJob]]] = {}
        # (budget, capabilities) of the accepting workers: the classes of the fleet.
        self._smaller: dict[float, list[Shape]] = {}
        self._own_heads: dict[tuple[float, frozenset[str]], QueuedJob | None] = {}
        self._shapes = {
            (w.budget_gb, w.capabilities) for w in state.workers.values() if w.accepting
        }

    def smaller_shapes(self, worker: WorkerView) -> list[Shape]:
        """Worker classes with a smaller memory budget than ``worker`` (empty when it is among the
        smallest, or when pool preference is off)."""
        if not self.state.config.pool_preference:
            return []
        return [shape for shape in self._shapes if shape[0] < worker.budget_gb]

    def left_to_smaller(
        self, job: QueuedJob, smaller: list[Shape], worker: WorkerView | None = None
    ) -> bool:
        """Pool preference: whether a large worker leaves ``job`` to the smaller workers for now.

        True while a smaller worker class can run the job and it has waited less than its tier's
        wait target; after that every worker it fits may take it. Relax pool balance (with
        ``worker``): a relax job is released instead once it is at least as old as the oldest
        relax candidate that only ``worker``'s class can run (when there is one), before or
        after the target, so the large workers serve the relax work of both pools oldest first.
        """
        if not any(job.family in caps and job.footprint_gb <= budget for budget, caps in smaller):
            return False
        config = self.state.config
        tier = job.request.tier
        if tier is Tier.RELAX and config.relax_pool_balance and worker is not None:
            head = self._own_relax_head(smaller, worker)
            if head is not None:
                return job.due_since > head.due_since
        return self.now - job.due_since < config.wait_targets_s[tier]

    def _own_relax_head(self, smaller: list[Shape], worker: WorkerView) -> QueuedJob | None:
        """The oldest relax candidate only ``worker``'s class (no smaller class) can run."""
        key = (worker.budget_gb, worker.capabilities)
        if key in self._own_heads:
            cached = self._own_heads[key]
            if cached is None or cached.job_id not in self.taken:
                return cached
        capped = functools.partial(self._user_at_cap, Tier.RELAX)
        found: QueuedJob | None = None
        for index, job in enumerate(self.state.queues[Tier.RELAX].in_order(capped)):
            if index >= self.state.config.max_scan:
                break
            if job.job_id in self.taken or not fits(job.family, job.footprint_gb, worker):
                continue
            if worker.worker_id in job.request.avoid:
                continue
            if not any(job.family in c and job.footprint_gb <= b for b, c in smaller):
                found = job
                break
        self._own_heads[key] = found
        return found

    def leaves(self, job: QueuedJob, worker: WorkerView) -> bool:
        """Whether ``worker`` leaves ``job`` to smaller workers for now (pool preference)."""
        smaller = self._smaller.get(worker.budget_gb)
        if smaller is None:
            smaller = self._smaller[worker.budget_gb] = self.smaller_shapes(worker)
        return bool(smaller) and self.left_to_smaller(job, smaller, worker)

    def free_workers(self) -> list[WorkerView]:
        """Idle accepting workers, smallest budget first, then by id.

        Small workers choose first so that jobs only large workers can hold still find one.
        """
        workers = [self.state.workers[w] for w in self.state.idle if w in self.state.workers]
        return sorted(workers, key=lambda w: (w.budget_gb, w.worker_id))

    def assign(self, job: QueuedJob, worker: WorkerView, reason: Reason) -> None:
        self.decisions.append(Assign(job.job_id, worker.worker_id, self._next_token, reason))
        self._next_token += 1
        self.taken.add(job.job_id)
        self.assigned_by_tier[job.request.tier] += 1
        user = (job.request.tier, job.request.user_id)
        self.assigned_by_user[user] = self.assigned_by_user.get(user, 0) + 1

    def at_cap(self, job: QueuedJob) -> bool:
        """Whether the job's user already occupies ``user_share`` of the workers in its tier."""
        return self._user_at_cap(job.request.tier, job.request.user_id)

    def _user_at_cap(self, tier: Tier, user_id: str) -> bool:
        user = (tier, user_id)
        running = self.state.running_by_user.get(user, 0) + self.assigned_by_user.get(user, 0)
        return running >= self.user_cap

    def relax_running(self) -> int:
        """Relax jobs running or just assigned, not counting those being paused."""
        state = self.state
        pausing = sum(
            1 for j in state.preempting if state.running[j].job.request.tier is Tier.RELAX
        )
        return state.running_by_tier[Tier.RELAX] - pausing + self.assigned_by_tier[Tier.RELAX]

    def relax_below_reserve(self) -> bool:
        return self.relax_running() < self.reserve_slots

    def fitting(
        self, tier: Tier, worker: WorkerView, smaller: list[Shape] | None = None
    ) -> Iterator[QueuedJob]:
        """Candidates: untaken jobs of ``tier`` that fit ``worker`` and whose user is under the
        cap, oldest first; with ``smaller`` (``smaller_shapes``), without the jobs the worker
        leaves to smaller workers (``left_to_smaller``).

        Scans at most ``config.max_scan`` queued jobs, which bounds the cost of a decision. The
        queue order is read once per round and shared by every worker that chooses in it.
        """
        return self._candidates(tier, worker, smaller, rotate=False)

    def rotating(
        self, tier: Tier, worker: WorkerView, smaller: list[Shape] | None = None
    ) -> Iterator[QueuedJob]:
        """The same candidates as ``fitting``, in per-user rotation order (``TierQueue.in_order``
        with ``rotate``): the user served least recently in the tier first (ADR 0620)."""
        return self._candidates(tier, worker, smaller, rotate=True)

    def _candidates(
        self, tier: Tier, worker: WorkerView, smaller: list[Shape] | None, *, rotate: bool
    ) -> Iterator[QueuedJob]:
        key = (tier, rotate)
        if key not in self._orders:
            capped = functools.partial(self._user_at_cap, tier)
            self._orders[key] = ([], self.state.queues[tier].in_order(capped, rotate=rotate))
        seen, rest = self._orders[key]
        caps, budget = worker.capabilities, worker.budget_gb
        for index in range(self.state.config.max_scan):
            if index == len(seen):
                job = next(rest, None)
                if job is None:
                    return
                seen.append(job)
            job = seen[index]
            if (
                job.family in caps
                and job.footprint_gb <= budget
                and job.job_id not in self.taken
                and worker.worker_id not in job.request.avoid
                and not self.at_cap(job)
                and not (smaller and self.left_to_smaller(job, smaller, worker))
            ):
                yield job

    def warm_candidates(
        self, tier: Tier, worker: WorkerView, smaller: list[Shape] | None = None
    ) -> Iterator[QueuedJob]:
        """Candidates of ``tier`` whose base model ``worker`` holds, oldest first, at most
        ``config.lookahead`` of them: the look-ahead of warm-model affinity. ``smaller`` as in
        ``fitting``."""
        queue = self.state.queues[tier]
        lines = [queue.by_model[m].values() for m in worker.resident if m in queue.by_model]
        found = 0
        for job in heapq.merge(*lines, key=lambda j: (j.due_since, j.seq)):
            if (
                job.footprint_gb <= worker.budget_gb
                and job.family in worker.capabilities
                and job.job_id not in self.taken
                and worker.worker_id not in job.request.avoid
                and not self.at_cap(job)
                and not (smaller and self.left_to_smaller(job, smaller, worker))
            ):
                yield job
                found += 1
                if found == self.state.config.lookahead:
                    return

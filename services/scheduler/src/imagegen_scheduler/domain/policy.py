"""Our tier policy: pool preference, weighted aging, user caps, relax reserve, warm affinity,
preemption.

``decide(state, now)`` offers each idle worker, smallest budget first (then by id), one job;
a worker whose pick another idle worker holds warmer steps back once and chooses after it.
Candidates are queued jobs that fit the worker and whose user holds fewer than ``user_share``
of the workers in that tier (no user monopolises a tier).

0. Pool preference: a worker leaves a candidate that a worker class with a smaller memory
   budget can also run to those smaller workers until it has waited its tier's wait target
   (``wait_targets_s``: 15 / 60 / 300 s), so that large workers (A100) serve first the jobs only
   they can hold (Flux, SDXL with ControlNets, 1536 px batches). When that leaves the worker no
   candidate at all, every job that fits it is a candidate again (the worker never idles while
   work it can run waits). ADR 0106. Relax pool balance: a relax job is released to the larger
   worker instead once it is at least as old as the oldest relax candidate only that worker's
   class can run (earlier or later than 300 s), so both pools' relax work is served oldest
   first together on the large workers. ADR 0108.

1. Held: a worker freed by a preemption goes to the job it was freed for.
2. Reserved: while relax runs on fewer than ``relax_reserve_fraction`` of the accepting workers
   and a relax job fits the worker, relax gets it.
3. Urgency: otherwise the tier whose oldest candidate is most urgent wins (with per-user
   rotation, step 3a: the candidate whose turn is first, its wait counted from its turn), with
   ``urgency = weight x (1 + wait / tau)``; ties go to the higher tier. Weights 10/5/1 by
   default; ``tau`` (33.3 s) makes a relax job that has waited ``promote_after_s`` exactly as
   urgent as a turbo job that just arrived (promotion). Under overload the waits settle where
   the urgencies meet, so each tier's extra wait is shared in proportion 1/weight.
3a. Per-user rotation (``user_rotation``, ADR 0620): the chosen tier's head is the candidate
   with the earliest turn, ``max(due_since, latest time a job of its user in that tier
   finished on its worker)`` (``TierQueue.in_order(rotate=True)``): a flooder whose job just
   finished ranks behind every job that arrived before that, so a flood interleaves with
   other users' jobs. The turn counts only for users who queue more jobs in the tier than the
   per-user cap lets them run at once; the others keep age order (``TierQueue.turn``). If step
   4 leaves that head unsettled (briefly waiting for a warmer
   worker), step 4 runs again from the tier's oldest candidate, as without rotation.
4. Warm affinity: the worker may take a warmer job among the chosen tier's first ``lookahead``
   candidates whose base model it holds (model and adapters resident beats model resident
   beats cold; ties keep queue order). If the pick would be less than fully warm while the
   tier's oldest candidate is within its ``affinity_patience_s`` and another worker holds that
   candidate warmer, the worker is offered to the next tier in urgency order instead (reason
   ``affinity``), and stays idle if no tier has a settled pick: a short wait for a warm worker
   costs less than an 8-20 s load. Past its patience (turbo 5 s, fast 30 s) the head is still
   passed over while a worker that holds it warmer and would take it is idle or expected to
   finish its job before the head has waited ``warm_wait_s`` (turbo 10 s, fast 45 s; at most its
   wait target): a load is not started for a job a warm worker will start in time anyway
   (ADR 0107). After that it is passed over only by workers that hold it less warm than some
   other worker does, so cold jobs are not starved (``_warmest``). A larger worker that leaves
   the job to smaller ones (step 0) never counts as holding it warm. Among picks equally warm,
   the one with fewer adapters to load wins (adapter affinity), and a relax head that has
   waited ``relax_cold_after_s`` (270 s) is not passed over for a pick that arrived
   ``relax_cold_gap_s`` (90 s) or more after it: the worker loads the head's model (cold
   deadline; models with few holders do not fall behind the others). ADR 0108. *Relax adapter
   wait*: past its warm wait (120 s), a relax head on a worker that holds its model but not all its
   adapters is passed over for a worker holding those too only while such a worker is idle or
   expected to finish within ``relax_adapter_wait_s`` (10 s); otherwise it is taken here and
   its adapters loaded. ADR 0109. *Switch guard* (``guard_switches``, ADR 0712): a cold head
   that another worker holds warmer (busy now) is not loaded here, up to its wait target
   rather than its warm wait, when the load would unload a base model with at least as many
   queued jobs per holder as the head's model would have with this worker added: the holders
   of a model in demand are not switched away one at a time for a model in less demand.

After assigning, turbo jobs that would still miss their wait target may pause relax jobs
(``preemption.preemptions``).
"""

from __future__ import annotations

from collections import deque

from .events import Decision, Reason
from .model import TIER_RANK, TIERS, Tier, WarmLevel, WorkerView, fits, warm_level
from .plan import Round, Shape
from .preemption import preemptions
from .queues import QueuedJob
from .state import SchedulerState


def decide(state: SchedulerState, now: float) -> list[Decision]:
    """Assignments for idle workers, then preemptions; apply them with ``as_event``/``evolve``."""
    plan = Round(state, now)
    waiting = deque(plan.free_workers())
    waiting_ids = {w.worker_id for w in waiting}
    yielded: set[str] = set()
    while waiting:
        worker = waiting.popleft()
        waiting_ids.discard(worker.worker_id)
        held = _held_job(plan, worker)
        if held is not None:
            plan.assign(held, worker, Reason.HELD)
            continue
        choice = _choose(plan, worker)
        if choice is None:
            continue
        job, reason = choice
        if worker.worker_id not in yielded and _idle_warmer(state, job, worker, waiting_ids):
            yielded.add(worker.worker_id)  # once: let the warmer idle worker choose first
            waiting.append(worker)
            waiting_ids.add(worker.worker_id)
            continue
        plan.assign(job, worker, reason)
    plan.decisions.extend(preemptions(plan))
    return plan.decisions


def _idle_warmer(
    state: SchedulerState, job: QueuedJob, worker: WorkerView, idle_ids: set[str]
) -> bool:
    """Whether another idle worker still to choose holds ``job`` warmer than ``worker``.

    Only workers that hold the job's base model can be warmer, so only those among the idle
    ones are looked at (not every idle worker: a large idle fleet costs nothing here)."""
    level = warm_level(job.request, worker)
    if level == WarmLevel.FULL:
        return False
    holders = state.holders.get(job.request.model_id, set()) & idle_ids
    return any(
        warm_level(job.request, other) > level and fits(job.family, job.footprint_gb, other)
        for other in (state.workers[w] for w in holders if w in state.workers)
    )


def urgency(state: SchedulerState, job: QueuedJob, now: float) -> float:
    """The ordering key between tiers; larger is served first (``SchedulerConfig.urgency``)."""
    return state.config.urgency(job.request.tier, now - job.due_since)


def _held_job(plan: Round, worker: WorkerView) -> QueuedJob | None:
    job_id = plan.state.held.get(worker.worker_id)
    job = plan.state.queued.get(job_id) if job_id is not None else None
    if job is None or job.job_id in plan.taken or not fits(job.family, job.footprint_gb, worker):
        return None
    if worker.worker_id in job.request.avoid:
        return None
    return job


def _choose(plan: Round, worker: WorkerView) -> tuple[QueuedJob, Reason] | None:
    state = plan.state
    smaller = plan.smaller_shapes(worker)
    firsts = _firsts(plan, worker, smaller)
    if not firsts and smaller:  # nothing only this class can run: serve the others' jobs
        smaller = []
        firsts = _firsts(plan, worker, smaller)
    if not firsts:
        return None
    rotation = state.config.user_rotation
    # Per-user rotation (ADR 0620): each tier offers the candidate whose turn is first, and its
    # urgency counts from the earlier turn of that job and the tier's oldest candidate (a
    # flooder served a moment ago is not waiting; without finishes it is the oldest's wait).
    turns = (
        {t: next(plan.rotating(t, worker, smaller), firsts[t]) for t in firsts}
        if rotation
        else firsts
    )

    def tier_urgency(tier: Tier) -> float:
        if not rotation:
            return urgency(state, firsts[tier], plan.now)
        queue = state.queues[tier]  # the earlier turn of the turn's job and the oldest job
        since = min(queue.turn(turns[tier]), queue.turn(firsts[tier]))
        return state.config.urgency(tier, plan.now - since)

    if Tier.RELAX in firsts and plan.relax_below_reserve():
        order, reason = [Tier.RELAX], Reason.RESERVED
    else:
        order = sorted(firsts, key=lambda t: (-tier_urgency(t), TIER_RANK[t]))
        reason = Reason.URGENCY
    for index, tier in enumerate(order):
        oldest, turn = firsts[tier], turns[tier]
        job, settled = _warmest(plan, tier, turn, worker, smaller)
        if not settled and turn is not oldest:
            # the turn's job waits briefly for a warmer worker: the tier's oldest job may still
            # take this one, under the same bounds as without rotation
            job, settled = _warmest(plan, tier, oldest, worker, smaller)
        if settled:
            return job, reason if index == 0 else Reason.AFFINITY
    return None  # every candidate is briefly waiting for a worker that holds it warmer


def _firsts(plan: Round, worker: WorkerView, smaller: list[Shape]) -> dict[Tier, QueuedJob]:
    """Each tier's oldest candidate for ``worker`` (tiers without one left out)."""
    firsts: dict[Tier, QueuedJob] = {}
    for tier in TIERS:
        first = next(plan.fitting(tier, worker, smaller), None)
        if first is not None:
            firsts[tier] = first
    return firsts


def _warmest(
    plan: Round, tier: Tier, head: QueuedJob, worker: WorkerView, smaller: list[Shape]
) -> tuple[QueuedJob, bool]:
    """Warm affinity with a bounded look-ahead that cannot starve a cold job.

    ``head`` is the tier's oldest candidate for this worker. Returns the pick and whether it is
    settled. The pick is the head if it is fully warm here; otherwise the warmest of the head and
    the tier's first ``lookahead`` candidates whose base model this worker holds, oldest first
    on ties. Bound: once the head has been due for ``affinity_patience_s``, it is taken here
    unless another worker it fits holds it warmer (that worker will take it, so passing it over
    here cannot starve it). A pick short of fully warm is unsettled while the head is within its
    patience and another worker holds the head warmer than this pick: the caller then offers the
    worker to the next tier, and leaves it idle if no tier has a settled pick. Relax adapter
    wait: past its warm wait, a relax head this worker holds model-warm is passed over for a
    fully warm worker only while one is idle or expected to finish within
    ``relax_adapter_wait_s``.
    """
    level = warm_level(head.request, worker)
    if level == WarmLevel.FULL:
        return head, True
    config = plan.state.config
    waited = plan.now - head.due_since
    patient = waited < config.affinity_patience_s[tier]
    if patient:
        elsewhere = _warmest_elsewhere(plan, head, worker)
    elif waited < config.warm_wait_s[tier]:
        # past its patience: wait only for a warmer worker that is free before the limit
        by = head.due_since + config.warm_wait_s[tier]
        elsewhere = _warmest_elsewhere(plan, head, worker, by)
        patient = elsewhere > level
        if not patient:
            elsewhere = _warmest_elsewhere(plan, head, worker)
    else:
        elsewhere = _warmest_elsewhere(plan, head, worker)
        adapter_wait = config.relax_adapter_wait_s
        if (
            tier is Tier.RELAX
            and adapter_wait is not None
            and level == WarmLevel.BASE
            and elsewhere == WarmLevel.FULL
            and _warmest_elsewhere(plan, head, worker, plan.now + adapter_wait) < WarmLevel.FULL
        ):
            # relax adapter wait: no fully warm worker is free soon; load the adapters here
            elsewhere = WarmLevel.BASE
    if not patient and elsewhere <= level:
        return head, True
    best, best_level, best_missing = head, level, _missing(head, worker)
    for job in plan.warm_candidates(tier, worker, smaller):
        job_level, missing = warm_level(job.request, worker), _missing(job, worker)
        if (job_level, -missing) > (best_level, -best_missing):  # fewer adapter loads on ties
            best, best_level, best_missing = job, job_level, missing
            if best_level == WarmLevel.FULL:
                break
    after = config.relax_cold_after_s
    if (
        tier is Tier.RELAX
        and after is not None
        and waited >= after
        and best.due_since - head.due_since >= config.relax_cold_gap_s
    ):
        return head, True  # relax cold deadline: load the head rather than take a much younger job
    settled = best_level == WarmLevel.FULL or not patient or elsewhere <= best_level
    if (
        settled
        and best_level == WarmLevel.COLD  # the head itself: no warmer pick here
        and elsewhere > WarmLevel.COLD  # a worker it fits holds its model (busy now)
        and config.guard_switches
        and waited < config.wait_targets_s[tier]
        and _unloads_for(
            plan.state, head, worker, _pressure(plan.state, head.request.model_id, extra=1)
        )
    ):
        return head, False  # switch guard (ADR 0712): wait for a holder of its model
    return best, settled


def _pressure(state: SchedulerState, model_id: str, extra: int = 0) -> float:
    """Queued jobs of ``model_id`` per worker holding it (``extra`` holders added)."""
    holders = len(state.holders.get(model_id, ())) + extra
    return state.queued_by_model.get(model_id, 0) / max(1, holders)


def _unloads_for(state: SchedulerState, job: QueuedJob, worker: WorkerView, want: float) -> bool:
    """Whether a cold start of ``job`` on ``worker`` would unload a resident base model whose
    pressure is at least ``want`` (the job does not fit beside the resident base models)."""
    models = state.catalog.models
    resident = [m for m in worker.resident if m in models]
    if not resident or job.request.model_id in worker.resident:
        return False
    held = sum(models[m].weights_gb for m in resident)
    if held + job.footprint_gb <= worker.budget_gb:
        return False  # fits beside them: nothing unloaded
    return any(_pressure(state, m) >= want for m in resident)


def _warmest_elsewhere(
    plan: Round, job: QueuedJob, worker: WorkerView, by: float | None = None
) -> int:
    """The best ``WarmLevel`` of the job on another accepting worker that it fits and that would
    take it now (a larger worker that leaves it to smaller ones does not count); with ``by``, only
    among workers that are idle or expected to finish their job by then (not held for another
    job's preemption)."""
    state = plan.state
    holders = state.holders.get(job.request.model_id, set()) - {worker.worker_id}
    usable = {
        w
        for w in holders
        if state.workers[w].accepting
        and fits(job.family, job.footprint_gb, state.workers[w])
        and not plan.leaves(job, state.workers[w])
        and (by is None or _free_by(state, w, by))
    }
    if not usable:
        return WarmLevel.COLD
    for adapter_id in job.request.adapters:
        usable &= state.holders.get(adapter_id, set())
    return WarmLevel.FULL if usable else WarmLevel.BASE


def _free_by(state: SchedulerState, worker_id: str, by: float) -> bool:
    """Whether a worker is idle, or expected to finish its running job by ``by``, and not held
    for a preempting turbo job."""
    if worker_id in state.held:
        return False
    job_id = state.running_on.get(worker_id)
    return job_id is None or state.running[job_id].expected_end <= by


def _missing(job: QueuedJob, worker: WorkerView) -> int:
    """How many of the job's adapters (LoRAs, ControlNets) ``worker`` would have to load."""
    return sum(1 for a in job.request.adapters if a not in worker.resident)

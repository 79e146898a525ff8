"""When a turbo job may pause a running relax job.

After a round's assignments, for each still-queued turbo job in queue order (the rotation's
order with ``user_rotation``, its wait then counted from its turn, ADR 0620; at most
``_MAX_PER_ROUND``) that has waited past its affinity patience (before that the policy may be
holding it back on purpose), is not the target of a pending preemption and whose user is under
the cap:

* predicted wait = waited so far + time until the earliest expected finish among busy workers
  it fits (held workers excluded). If that is within the turbo wait target, nothing happens.
* Otherwise it may pause one relax job running on a worker it fits, unless that job has been in
  the system for ``promote_after_s`` (it would re-enter the queue promoted, as urgent as the
  turbo job: pausing it only churns, and under overload that churn delays fast jobs): the one
  with the latest expected end (most work left), ties by worker id. The worker is then held for the
  turbo job.
* Never below the reserve: relax keeps at least ``relax_reserve_fraction`` of the workers, so
  preemption only takes relax jobs beyond that share.

The paused job saves its latents at the next step boundary and re-enters the queue, first in its
user's line, with its remaining steps (``JobPreempted``).
"""

from __future__ import annotations

from .events import Preempt
from .model import Tier, fits
from .plan import Round
from .queues import QueuedJob
from .state import RunningJob, SchedulerState

_MAX_PER_ROUND = 8


def preemptions(plan: Round) -> list[Preempt]:
    state = plan.state
    turbo = state.queues[Tier.TURBO]
    oldest = turbo.oldest_due()
    patience = state.config.affinity_patience_s[Tier.TURBO]
    if not state.config.preemption or oldest is None or plan.now - oldest < patience:
        return []
    spare = plan.relax_running() - plan.reserve_slots
    if spare <= 0:
        return []
    target = state.config.wait_targets_s[Tier.TURBO]
    awaited = set(state.held.values())
    by_end = sorted(state.running.values(), key=lambda r: r.expected_end)
    victims: list[RunningJob] | None = None
    out: list[Preempt] = []
    considered = 0
    rotation = state.config.user_rotation
    for job in turbo.in_order(rotate=rotation):
        if considered >= _MAX_PER_ROUND or spare <= 0:
            break
        # With per-user rotation (ADR 0620) a job waits from its turn: a flooder's next job
        # does not pause relax work ahead of the other users' jobs the rotation serves first.
        since = turbo.turn(job) if rotation else job.due_since
        if plan.now - since < patience:
            continue  # still within its affinity patience: the policy may be holding it back
        if job.job_id in plan.taken or job.job_id in awaited or plan.at_cap(job):
            continue
        considered += 1
        soonest = next(
            (
                r.expected_end
                for r in by_end
                if r.worker_id not in state.held and _fits_on(state, job, r.worker_id)
            ),
            float("inf"),
        )
        waited = (
            job.wait_s(plan.now) if not rotation else min(job.wait_s(plan.now), plan.now - since)
        )
        if waited + max(0.0, soonest - plan.now) <= target:
            continue
        if victims is None:
            victims = sorted(
                (
                    r
                    for r in state.running.values()
                    if r.job.request.tier is Tier.RELAX and r.job.job_id not in state.preempting
                ),
                key=lambda r: (-r.expected_end, r.worker_id),
            )
        promote_after = state.config.promote_after_s
        for victim in victims:
            promoted = plan.now - victim.job.due_since >= promote_after
            if not promoted and _fits_on(state, job, victim.worker_id):
                victims.remove(victim)
                out.append(
                    Preempt(victim.job.job_id, victim.worker_id, victim.fencing_token, job.job_id)
                )
                spare -= 1
                break
    return out


def _fits_on(state: SchedulerState, job: QueuedJob, worker_id: str) -> bool:
    worker = state.workers.get(worker_id)
    return (
        worker is not None
        and fits(job.family, job.footprint_gb, worker)
        and worker_id not in job.request.avoid
    )

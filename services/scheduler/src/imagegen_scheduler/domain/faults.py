"""Every accepted job ends by a deadline: checks the scheduler runs on its folded log (ADR 0112).

Pure: ``now`` is passed in. Each returns the terminal ``GenerationFailed`` events to publish;
the service folds them at once (the job leaves the queue or frees its worker) and publishes them.

* ``overdue``: a job still queued ``queue_s[tier]`` after its prompt was allowed, or an
  assignment running ``run_s`` without a result (revoked first), ends as ``timeout``.
* ``unservable``: a queued job that no worker seen in the fleet can run (its model family, or its
  footprint above every budget of that family: ``admit``) ends as ``no_capable_worker``. The
  service calls it only once the fleet has been observed for a grace period.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from imagegen_schemas import Payload
from imagegen_schemas import jobs as ev

from .admission import FleetCapabilities, Refused, admit
from .log import Log
from .model import Tier


@dataclass(frozen=True, slots=True)
class Deadlines:
    queue_s: Mapping[Tier, float]  # per tier: longest time from allowed to assigned
    run_s: float  # longest time from an assignment to its result


def overdue(log: Log, now: float, deadlines: Deadlines) -> list[Payload]:
    """Timeouts at ``now``: queued jobs past their tier's deadline, runs past the run deadline
    (its assignment revoked first, then the job failed)."""
    out: list[Payload] = []
    for job_id, queued in log.state.queued.items():
        since = log.jobs[job_id].allowed_at
        limit = deadlines.queue_s[queued.request.tier]
        if since is not None and now - since > limit:
            out.append(
                ev.GenerationFailed(
                    job_id=job_id,
                    reason=ev.FailureReason.TIMEOUT,
                    message=f"queued {now - since:.0f} s without a worker; the "
                    f"{queued.request.tier.value} queue deadline is {limit:.0f} s",
                    attempt=max(1, log.jobs[job_id].next_attempt() - 1),
                    terminal=True,
                )
            )
    for job_id, running in log.state.running.items():
        if now - running.started_at > deadlines.run_s:
            # revoked first, in the result's partition: a late result is void for every consumer
            out.append(
                ev.AssignmentRevoked(
                    job_id=job_id,
                    worker_id=running.worker_id,
                    fencing_token=running.fencing_token,
                    reason="run deadline",
                )
            )
            out.append(
                ev.GenerationFailed(
                    job_id=job_id,
                    reason=ev.FailureReason.TIMEOUT,
                    message=f"no result from {running.worker_id} {now - running.started_at:.0f} s"
                    f" after it was assigned; the run deadline is {deadlines.run_s:.0f} s",
                    attempt=_attempt(log, job_id),
                    terminal=True,
                    worker_id=running.worker_id,
                    fencing_token=running.fencing_token,
                )
            )
    return out


def unservable(
    log: Log, fleet: FleetCapabilities, skip: set[str] | None = None
) -> tuple[list[ev.GenerationFailed], list[str]]:
    """Queued jobs that no worker class of ``fleet`` can run, and the ids of those it can (so a
    caller may skip them until the fleet changes). ``skip``: job ids already admitted."""
    refused, admitted = [], []
    for job_id, queued in log.state.queued.items():
        if skip is not None and job_id in skip:
            continue
        verdict = admit(queued.request, fleet, log.state.catalog)
        if isinstance(verdict, Refused):
            refused.append(
                ev.GenerationFailed(
                    job_id=job_id,
                    reason=ev.FailureReason.NO_CAPABLE_WORKER,
                    message=verdict.reason,
                    attempt=max(1, log.jobs[job_id].next_attempt() - 1),
                    terminal=True,
                )
            )
        else:
            admitted.append(job_id)
    return refused, admitted


def _attempt(log: Log, job_id: str) -> int:
    a = log.jobs[job_id].assignment
    return 1 if a is None else a.attempt

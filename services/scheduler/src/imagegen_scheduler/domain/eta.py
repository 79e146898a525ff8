"""An estimate of the wait left for every queued job.

A projection of ``policy.decide`` without new arrivals: whenever a worker is expected to be free
(idle now, busy until its running job's expected end), the most urgent tier at that time sends
its oldest job there, which then occupies the worker for its warm denoising time. It ignores
memory fit, the relax reserve, user caps and warm affinity, so it is a guide for clients
("about 40 s"), not a promise; the simulator measures its error.
"""

from __future__ import annotations

import heapq
from collections import deque

from .model import TIERS, denoise_s
from .state import SchedulerState


def estimate_waits(state: SchedulerState, now: float) -> dict[str, float]:
    """Seconds from ``now`` until each queued job is expected to be assigned."""
    free: list[tuple[float, str, float]] = []  # (free at, worker id, speed)
    for worker in state.workers.values():
        if not worker.accepting:
            continue
        job_id = state.running_on.get(worker.worker_id)
        at = now if job_id is None else max(now, state.running[job_id].expected_end)
        free.append((at, worker.worker_id, worker.speed))
    if not free:
        return {job_id: float("inf") for job_id in state.queued}
    heapq.heapify(free)
    lines = {
        tier: deque(
            sorted(state.queues[tier].arrivals.values(), key=lambda j: (j.due_since, j.seq))
        )
        for tier in TIERS
    }
    config = state.config
    etas: dict[str, float] = {}
    while any(lines.values()):
        at, worker_id, speed = heapq.heappop(free)
        tier = max(
            (t for t in TIERS if lines[t]),
            key=lambda t: (config.urgency(t, at - lines[t][0].due_since), -TIERS.index(t)),
        )
        job = lines[tier].popleft()
        etas[job.job_id] = at - now
        service = denoise_s(job.request, job.remaining_steps, speed, state.catalog)
        heapq.heappush(free, (at + service, worker_id, speed))
    return etas

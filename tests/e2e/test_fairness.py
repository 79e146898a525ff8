"""Fairness between users through the real stack (issue #14, ADR 0620): during one user's flood,
another user's job starts as soon as a worker frees.

Measured on the event log, not on wall time: B's job is schedulable from its allowed prompt
verdict (``imagegen.prompt.moderated``); a flood job counts as *ahead* of it when its first
assignment (``imagegen.job.scheduled``) comes after that verdict and before B's own first
assignment. Without per-user rotation every flood job still queued at that point is ahead (the
finding: 85 of them); with it at most two per worker (a worker that frees while the scheduler
has not yet read B's verdict, or has not yet read the result of the job that freed it).
"""

from __future__ import annotations

import contextlib
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime

import httpx
import pytest

from imagegen_api.domain.limits import DEFAULT_LIMITS
from imagegen_schemas import Plan

from .conftest import RunningStack
from .test_generation import MODEL, read_topic

pytestmark = pytest.mark.e2e

FLOOD = 60
PLAN = "turbo"  # its active-jobs limit admits the whole flood (the free plan's does not)
MIN_QUEUED = 10  # flood jobs that must still be queued when B's job arrives, or nothing is shown


def _first(events: list[dict], kind: str) -> dict[str, datetime]:  # type: ignore[type-arg]
    """The earliest event of type ``kind`` per job."""
    first: dict[str, datetime] = {}
    for e in events:
        if e["type"] != kind:
            continue
        if kind == "imagegen.prompt.moderated" and e["data"].get("verdict") != "allowed":
            continue
        at = datetime.fromisoformat(e["occurred_at"])
        job = e["correlation_id"]
        if job not in first or at < first[job]:
            first[job] = at
    return first


def test_another_users_job_starts_as_soon_as_a_worker_frees_during_a_flood(
    stack: RunningStack,
) -> None:
    limit = DEFAULT_LIMITS[Plan(PLAN)].active_jobs
    assert limit >= FLOOD, f"the {PLAN} plan admits {limit} active jobs, the flood needs {FLOOD}"
    flooder, other = stack.new_key(PLAN), stack.new_key(PLAN)
    workers = int(stack.env.get("IMAGEGEN_STACK_WORKERS", "1"))

    def flood_one(i: int) -> str:
        body = {"prompt": f"a blue square, flood {i}", "model": MODEL, "steps": 20, "seed": i}
        with stack.client(flooder) as c:
            r = c.post("/v1/generations", json=body, headers={"Idempotency-Key": uuid.uuid4().hex})
        assert r.status_code == 202, r.text
        return str(r.json()["id"])

    with ThreadPoolExecutor(max_workers=8) as pool:
        flood = list(pool.map(flood_one, range(FLOOD)))
    with stack.client(other) as c:
        r = c.post(
            "/v1/generations",
            json={"prompt": "a red circle", "model": MODEL, "steps": 2, "seed": 1},
        )
    assert r.status_code == 202, r.text
    mine = str(r.json()["id"])
    try:
        done = stack.wait_terminal(mine, timeout_s=300, key=other)
        assert done["status"] == "delivered", done

        allowed = _first(read_topic(stack, "imagegen.jobs.moderated"), "imagegen.prompt.moderated")
        assigned = _first(read_topic(stack, "imagegen.jobs.scheduled"), "imagegen.job.scheduled")
        arrived, started = allowed[mine], assigned[mine]
        still_queued = [j for j in flood if j not in assigned or assigned[j] > arrived]
        ahead = [j for j in still_queued if j in assigned and assigned[j] < started]
        assert len(still_queued) >= MIN_QUEUED, (
            f"only {len(still_queued)} flood jobs were queued when the other user's job arrived;"
            " the flood drained too fast to show anything"
        )
        assert len(ahead) <= 2 * workers, (
            f"{len(ahead)} of the {len(still_queued)} flood jobs queued when the other user's"
            f" job arrived started before it ({workers} worker(s))"
        )
    finally:
        with stack.client(flooder) as c:  # leave no flood behind for the next tests
            for job_id in flood:
                with contextlib.suppress(httpx.TransportError):
                    c.delete(f"/v1/generations/{job_id}")

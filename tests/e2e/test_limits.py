"""Limits per plan through the running stack (issue 14, ADR 0640): a free key's flood is cut at
its active-jobs limit with 429s naming it, every answer carries the RateLimit headers, and the
slots come back when the jobs end."""

from __future__ import annotations

import time

import pytest

from imagegen_api.domain.limits import DEFAULT_LIMITS
from imagegen_schemas import Plan

from .conftest import RunningStack

pytestmark = pytest.mark.e2e
MODEL = "tiny-random"


def test_a_free_flood_is_cut_at_the_active_jobs_limit(stack: RunningStack) -> None:
    free = DEFAULT_LIMITS[Plan.FREE]
    key = stack.new_key("free")
    body = {"prompt": "a red circle", "model": MODEL, "steps": 30, "seed": 1}
    with stack.client(key) as c:
        answers = [c.post("/v1/generations", json=body) for _ in range(free.active_jobs + 3)]
    codes = [a.status_code for a in answers]
    # the flood goes out in milliseconds; the relax tier's jobs take seconds each
    assert codes[: free.active_jobs] == [202] * free.active_jobs, [a.text for a in answers]
    assert codes[free.active_jobs :] == [429] * 3
    refused = answers[-1]
    assert refused.json()["limit"] == "active_jobs"
    assert int(refused.headers["Retry-After"]) > 0
    for a in answers:
        assert a.headers["RateLimit-Limit"] == str(free.burst)
        assert int(a.headers["RateLimit-Remaining"]) < free.burst
    accepted = [a.json()["id"] for a in answers if a.status_code == 202]
    ends = [stack.wait_terminal(j, key=key)["status"] for j in accepted]
    assert ends == ["delivered"] * len(accepted)
    # their slots are free again (waiting polls may have emptied the request bucket meanwhile:
    # a refusal for that says when to come back, and it is never the active-jobs limit)
    with stack.client(key) as c:
        for _ in range(3):
            again = c.post("/v1/generations", json={**body, "steps": 2})
            if again.status_code != 429:
                break
            assert again.json()["limit"] == "requests_per_minute", again.text
            time.sleep(int(again.headers["Retry-After"]))  # as the answer asks
    assert again.status_code == 202, again.text

"""Limits and quotas per plan, and the rules that apply them (pure; ADR 0640).

The one place the values live (``docs/limits.md`` shows the same table; a deployment overrides
any of them with ``IMAGEGEN_API_LIMITS``, a JSON object ``{plan: {field: value}}``):

========  ===================  =====  ===========  ==============
plan      requests_per_minute  burst  active_jobs  images_per_day
========  ===================  =====  ===========  ==============
free                       60     20            4             200
pro                       300     60           16           5,000
turbo                    1200    200           64          50,000
========  ===================  =====  ===========  ==============

- **Requests per minute**: a token bucket per user over every authenticated request; it holds
  ``burst`` tokens and refills at ``requests_per_minute / 60`` per second. A request takes one.
- **Active jobs**: the user's jobs accepted and not yet terminal (queued plus running). A
  submission that would exceed it is refused.
- **Images per day**: images requested by the user's submissions accepted since 00:00 UTC.

Over a limit the answer is 429 with ``Retry-After`` (whole seconds) and a body naming the
limit. Every authenticated answer carries ``RateLimit-Limit``, ``RateLimit-Remaining`` and
``RateLimit-Reset`` (the request bucket: its size, the whole tokens left, the seconds until it is
full again).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from datetime import date, datetime, timedelta
from typing import Any

from imagegen_schemas import Plan

REQUESTS, ACTIVE, IMAGES = "requests_per_minute", "active_jobs", "images_per_day"


@dataclass(frozen=True)
class Limits:
    requests_per_minute: float  # refill rate of the request bucket, per minute
    burst: int  # size of the request bucket
    active_jobs: int  # queued plus running jobs at once
    images_per_day: int  # images requested per UTC day

    @property
    def refill_per_s(self) -> float:
        return self.requests_per_minute / 60.0


DEFAULT_LIMITS: dict[Plan, Limits] = {
    Plan.FREE: Limits(60, burst=20, active_jobs=4, images_per_day=200),
    Plan.PRO: Limits(300, burst=60, active_jobs=16, images_per_day=5_000),
    Plan.TURBO: Limits(1200, burst=200, active_jobs=64, images_per_day=50_000),
}


class LimitsError(ValueError):
    """An override names an unknown plan or field, or a value that is not a positive number."""


def with_overrides(overrides: Mapping[str, Mapping[str, Any]]) -> dict[Plan, Limits]:
    """The defaults with ``overrides`` (``{plan: {field: value}}``) applied; raises LimitsError."""
    names = {f.name for f in fields(Limits)}
    out = dict(DEFAULT_LIMITS)
    for plan_name, values in overrides.items():
        try:
            plan = Plan(plan_name)
        except ValueError:
            raise LimitsError(f"unknown plan {plan_name!r}; plans: free, pro, turbo") from None
        for name, value in values.items():
            if name not in names:
                raise LimitsError(f"{plan_name}.{name}: unknown limit; limits: {sorted(names)}")
            if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
                raise LimitsError(f"{plan_name}.{name}: must be a positive number, not {value!r}")
        out[plan] = replace(
            out[plan], **{k: (v if k == REQUESTS else int(v)) for k, v in values.items()}
        )
    return out


@dataclass(frozen=True)
class Bucket:
    """A user's request bucket as stored: tokens at ``at``."""

    tokens: float
    at: datetime


@dataclass(frozen=True)
class Take:
    """The outcome of one request on the bucket."""

    allowed: bool
    bucket: Bucket  # the state after the request
    remaining: int  # whole tokens left
    reset_s: int  # seconds until the bucket is full again
    retry_after_s: int  # when refused: seconds until one token is there (else 0)
    granted: int = 1  # tokens taken (more than one: a lease, see ``lease_size``)


LEASE_MAX = 32  # the most tokens one API instance takes from a user's bucket at once


def lease_size(limits: Limits) -> int:
    """Tokens an API instance takes at once from a user's shared bucket: a tenth of the burst
    (at most ``LEASE_MAX``), so a busy user's requests reach the database once per lease while
    the tokens a lease may leave unused stay a small share of the bucket (ADR 0640)."""
    return max(1, min(LEASE_MAX, limits.burst // 10))


def take(bucket: Bucket | None, limits: Limits, now: datetime, want: int = 1) -> Take:
    """Requests against ``bucket`` (None: a new user, whose bucket is full): up to ``want``
    tokens, as many as there are; allowed when at least one was."""
    if bucket is None:
        tokens = float(limits.burst)
    else:
        elapsed = max(0.0, (now - bucket.at).total_seconds())
        tokens = min(float(limits.burst), bucket.tokens + elapsed * limits.refill_per_s)
    granted = min(want, int(tokens))
    allowed = granted >= 1
    tokens -= granted
    rate = limits.refill_per_s
    reset_s = math.ceil((limits.burst - tokens) / rate) if tokens < limits.burst else 0
    retry = 0 if allowed else max(1, math.ceil((1.0 - tokens) / rate))
    return Take(allowed, Bucket(tokens, now), int(tokens), reset_s, retry, granted)


@dataclass(frozen=True)
class JobRequest:
    """A submission asking for room: ``images`` more today and one more active job."""

    user_id: str
    job_id: str
    images: int
    limits: Limits


@dataclass(frozen=True)
class Refusal:
    """Which limit refused a submission, and when to retry."""

    limit: str  # ACTIVE or IMAGES (REQUESTS is refused per request, before)
    allowed: int  # the limit's value
    current: int  # what the user has now (active jobs, or images today)
    retry_after_s: int
    message: str


def seconds_to_midnight(now: datetime) -> int:
    tomorrow = datetime.combine(now.date() + timedelta(days=1), datetime.min.time(), now.tzinfo)
    return max(1, math.ceil((tomorrow - now).total_seconds()))


def admit(
    req: JobRequest, active: int, images_today: int, day: date | None, now: datetime
) -> Refusal | None:
    """None when ``req`` fits the user's active jobs and today's images, else the refusal.

    ``images_today`` counts for ``day``; on another day the count starts again at 0.
    """
    if day != now.date():
        images_today = 0
    lim = req.limits
    if active + 1 > lim.active_jobs:
        return Refusal(
            ACTIVE,
            lim.active_jobs,
            active,
            ACTIVE_RETRY_S,
            f"{active} of your jobs are queued or running, the most your plan allows at once"
            f" ({lim.active_jobs}); submit again when one ends",
        )
    if images_today + req.images > lim.images_per_day:
        return Refusal(
            IMAGES,
            lim.images_per_day,
            images_today,
            seconds_to_midnight(now),
            f"{images_today} images requested today, {req.images} more would pass your plan's"
            f" {lim.images_per_day} per day (UTC); the count starts again at 00:00 UTC",
        )
    return None


ACTIVE_RETRY_S = 5  # what a refusal for active jobs suggests: about one short job's time

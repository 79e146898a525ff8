"""What the routes depend on, as typed dependency aliases (one place, one hop from any route)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Annotated

from fastapi import Depends, Header, HTTPException, Path, Request

from imagegen_runtime.publishing import Publisher
from imagegen_schemas import Plan

from ...domain.job import JobView
from ...domain.limits import DEFAULT_LIMITS, REQUESTS, Limits, Refusal, Take
from ...domain.plans import Caller
from ...domain.validation import Catalog
from ...service_layer.ports import Accounts, FileStore, JobStore, Limiter
from ...service_layer.submit import LimitExceeded, Quota


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass
class Deps:
    """What the routes need; built by bootstrap (tests pass fakes)."""

    accounts: Accounts  # API keys and idempotency keys
    jobs: JobStore  # the job read model (the projector writes it)
    publisher: Publisher  # where GenerationRequested and CancellationRequested go
    catalog: Catalog  # registered models, LoRAs, ControlNets
    default_model: str  # used when a request names none
    public_base_url: str  # base of the links in answers
    openai_timeout_s: float  # how long POST /v1/images/generations waits for the image
    avg_job_s: float = 2.0  # the placeholder per-job time behind eta_s
    clock: Callable[[], datetime] = field(default=utcnow)  # now, in UTC (tests pass their own)
    # Control images (POST /v1/files, data: URIs); None: refused with a 422 (ADR 0706).
    files: FileStore | None = None
    max_control_image_bytes: int = 4 * 2**20  # decoded bytes of one control image
    # Limits and quotas per plan (ADR 0640); None: no limit is applied (unit tests of routes).
    limiter: Limiter | None = None
    limits: dict[Plan, Limits] = field(default_factory=lambda: dict(DEFAULT_LIMITS))

    def __post_init__(self) -> None:
        self.public_base_url = self.public_base_url.rstrip("/")


async def get_deps(request: Request) -> Deps:
    # async: FastAPI runs a plain ``def`` dependency in a worker thread, per request (ADR 0640)
    deps: Deps = request.app.state.deps
    return deps


DepsDep = Annotated[Deps, Depends(get_deps)]


async def current_caller(
    deps: DepsDep, authorization: Annotated[str | None, Header()] = None
) -> Caller:
    if not authorization or not authorization.startswith("Bearer "):
        raise HTTPException(
            401,
            "missing API key: send 'Authorization: Bearer <key>'",
            headers={"WWW-Authenticate": "Bearer"},
        )
    found = await deps.accounts.caller(authorization.removeprefix("Bearer ").strip())
    if found is None:
        raise HTTPException(
            401, "unknown or revoked API key", headers={"WWW-Authenticate": "Bearer"}
        )
    return found


RATELIMIT_STATE = "ratelimit"  # request.state attribute read by ``ratelimit_headers``


def ratelimit_headers(take: Take, limits: Limits) -> dict[str, str]:
    """The request bucket as the IETF RateLimit headers say it (ADR 0640)."""
    return {
        "RateLimit-Limit": str(limits.burst),
        "RateLimit-Remaining": str(take.remaining),
        "RateLimit-Reset": str(take.reset_s),
        "RateLimit-Policy": f"{limits.burst};w={round(limits.burst / limits.refill_per_s)}",
    }


async def limited_caller(
    request: Request, deps: DepsDep, who: Annotated[Caller, Depends(current_caller)]
) -> Caller:
    """The caller, once their request bucket gave this request a token (else 429)."""
    if deps.limiter is None:
        return who
    limits = deps.limits[who.plan]
    taken = await deps.limiter.take(who.user_id, limits, deps.clock())
    headers = ratelimit_headers(taken, limits)
    setattr(request.state, RATELIMIT_STATE, headers)
    if not taken.allowed:
        raise LimitExceeded(
            Refusal(
                REQUESTS,
                int(limits.requests_per_minute),
                limits.burst,
                taken.retry_after_s,
                f"more than {limits.requests_per_minute:g} requests per minute (bursts of"
                f" {limits.burst}) on your plan; retry in {taken.retry_after_s} s",
            )
        )
    return who


CallerDep = Annotated[Caller, Depends(limited_caller)]


def quota(deps: Deps, who: Caller) -> Quota | None:
    """Where a submission of ``who`` checks its active jobs and images per day."""
    if deps.limiter is None:
        return None
    return Quota(deps.limiter, deps.limits[who.plan], deps.clock())


# Job ids are UUIDs; anything else (a NUL, a space, 65 characters) is refused before a lookup.
JobIdPath = Annotated[
    str, Path(pattern=r"^[A-Za-z0-9_-]{1,64}$", description="The id POST answered.")
]


async def owned_job(deps: Deps, job_id: str, who: Caller, wait_s: float = 1.0) -> JobView:
    """The caller's job, else 404 (also for another user's job: ids are not secrets to leak)."""
    deadline = time.monotonic() + wait_s
    while True:
        job = await deps.jobs.get(job_id)
        if job is not None and job.user_id == who.user_id:
            return job
        if job is not None and job.user_id and job.user_id != who.user_id:
            raise HTTPException(404, "no such generation")
        if time.monotonic() > deadline:
            raise HTTPException(404, "no such generation")
        await asyncio.sleep(0.05)  # the projection may be a few ms behind the 202


def links(deps: Deps, job_id: str) -> dict[str, str]:
    base = f"{deps.public_base_url}/v1/generations/{job_id}"
    return {"self": base, "events": f"{base}/events", "cancel": base}

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

from ...domain.job import JobView
from ...domain.plans import Caller
from ...domain.validation import Catalog
from ...service_layer.ports import Accounts, FileStore, JobStore


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

    def __post_init__(self) -> None:
        self.public_base_url = self.public_base_url.rstrip("/")


def get_deps(request: Request) -> Deps:
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


CallerDep = Annotated[Caller, Depends(current_caller)]

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

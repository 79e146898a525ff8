"""/v1/generations: submit, read, cancel."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Header, HTTPException
from fastapi.responses import JSONResponse
from pydantic import AfterValidator

from imagegen_schemas.jobs import CancellationRequested

from ...domain.idempotency import request_hash
from ...domain.job import eta_s, stage_timings
from ...service_layer.submit import IdempotencyConflict, IdempotentRequest, InFlight, submit
from .bodies import GenerationIn, Unprocessable, normalised, to_params
from .deps import CallerDep, DepsDep, JobIdPath, links, owned_job, quota
from .files import control_images

router = APIRouter(prefix="/v1/generations", tags=["generations"])


def _key(value: str | None) -> str | None:
    if value is not None and not (value.isascii() and value.isprintable()):
        raise ValueError("must be printable ASCII (letters, digits, punctuation, space)")
    return value


IdempotencyKey = Annotated[str | None, Header(min_length=1, max_length=255), AfterValidator(_key)]


@router.post("", status_code=202)
async def create(
    body: GenerationIn,
    who: CallerDep,
    deps: DepsDep,
    idempotency_key: IdempotencyKey = None,
) -> JSONResponse:
    """Accept a generation (202) once the broker has its request; with an ``Idempotency-Key``
    a retry of the same request gets the same answer (ADR 0600)."""
    images = await control_images(body.controlnets, deps)  # ADR 0706
    try:
        params = to_params(
            body, deps.catalog, deps.default_model, who, images.refs, images.problems
        )
    except Unprocessable as exc:
        raise exc.as_http() from None
    await images.store(deps)  # data: URIs, once the request is valid
    webhook = str(body.webhook_url) if body.webhook_url else None
    idempotent = None
    if idempotency_key is not None:
        digest = request_hash(normalised(body, params, webhook))
        idempotent = IdempotentRequest(idempotency_key, digest, deps.clock())
    try:
        accepted = await submit(
            who, params, webhook, deps.accounts, deps.publisher, idempotent, quota(deps, who)
        )
    except IdempotencyConflict:
        raise HTTPException(
            422,
            [
                {
                    "type": "value_error",
                    "loc": ["header", "Idempotency-Key"],
                    "msg": f"{idempotency_key!r} was already used with a different request "
                    "in the last 24 h: use a new key for a new request",
                }
            ],
        ) from None
    except InFlight:
        raise HTTPException(
            409,
            f"the first request with Idempotency-Key {idempotency_key!r} is still in flight; "
            "retry the same request shortly",
            headers={"Retry-After": "1"},
        ) from None
    return JSONResponse(
        status_code=202,
        content={
            "id": accepted.job_id,
            "status": "accepted",
            "seed": accepted.seed,
            "links": links(deps, accepted.job_id),
        },
        headers={"Idempotent-Replayed": "true"} if accepted.replayed else None,
    )


@router.get("/{job_id}")
async def read(job_id: JobIdPath, who: CallerDep, deps: DepsDep) -> dict[str, Any]:
    job = await owned_job(deps, job_id, who)
    position = (
        await deps.jobs.queue_position(job) if job.status in ("moderating", "queued") else None
    )
    timeline = await deps.jobs.timeline(job_id)
    return {
        "id": job.job_id,
        "status": job.status,
        "tier": job.tier,
        "params": job.params,
        "queue_position": position,
        "eta_s": eta_s(job, position, deps.avg_job_s, deps.clock()),
        "progress": {"step": job.step, "total_steps": job.total_steps},
        "attempt": job.attempt,
        "worker_id": job.worker_id,
        "images": list(job.images),
        "failure": None
        if job.failure_reason is None
        else {
            "reason": job.failure_reason,
            "message": job.failure_message,
            "categories": list(job.categories),
        },
        "timings_ms": {"stages": stage_timings(job), "worker": job.timings_ms},
        "timeline": [
            {"type": e["type"], "at": e["occurred_at"].isoformat(), "event_id": e["event_id"]}
            for e in timeline
        ],
        "links": links(deps, job.job_id),
    }


@router.delete("/{job_id}", status_code=202)
async def cancel(job_id: JobIdPath, who: CallerDep, deps: DepsDep) -> dict[str, Any]:
    job = await owned_job(deps, job_id, who)
    if job.terminal:
        raise HTTPException(409, f"generation already {job.status}")
    await deps.publisher.publish(
        CancellationRequested(job_id=job_id, requested_by=who.user_id), key=job_id
    )
    return {"id": job_id, "status": "cancelling"}

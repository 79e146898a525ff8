"""/v1/generations: submit, read, cancel."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Header, HTTPException
from fastapi.responses import JSONResponse

from imagegen_schemas.jobs import CancellationRequested

from ...domain.job import stage_timings
from ...service_layer.submit import IdempotencyConflict, Unavailable, submit
from .bodies import GenerationIn, to_params, unprocessable
from .deps import CallerDep, DepsDep, links, owned_job

router = APIRouter(prefix="/v1/generations", tags=["generations"])


@router.post("", status_code=202)
async def create(
    body: GenerationIn,
    who: CallerDep,
    deps: DepsDep,
    idempotency_key: Annotated[str | None, Header(max_length=256)] = None,
) -> JSONResponse:
    params = to_params(body, deps.catalog, deps.default_model, who)
    webhook = str(body.webhook_url) if body.webhook_url else None
    try:
        accepted = await submit(
            who, params, webhook, idempotency_key, deps.accounts, deps.publisher
        )
    except IdempotencyConflict:
        raise unprocessable(
            [(("Idempotency-Key",), "already used with a different request body")]
        ) from None
    except Unavailable as exc:
        raise HTTPException(503, f"not accepted, retry: {exc}") from None
    return JSONResponse(
        status_code=202,
        content={
            "id": accepted.job_id,
            "status": "accepted",
            "replayed": accepted.replayed,
            "seed": params.seed,
            "links": links(deps, accepted.job_id),
        },
    )


@router.get("/{job_id}")
async def read(job_id: str, who: CallerDep, deps: DepsDep) -> dict[str, Any]:
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
        "eta_s": None if position is None else round((position + 1) * deps.avg_job_s, 1),
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
async def cancel(job_id: str, who: CallerDep, deps: DepsDep) -> dict[str, Any]:
    job = await owned_job(deps, job_id, who)
    if job.terminal:
        raise HTTPException(409, f"generation already {job.status}")
    await deps.publisher.publish(
        CancellationRequested(job_id=job_id, requested_by=who.user_id), key=job_id
    )
    return {"id": job_id, "status": "cancelling"}

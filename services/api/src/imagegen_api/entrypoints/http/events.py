"""/v1/generations/{id}/events: the job's lifecycle as Server-Sent Events."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Header, Request
from fastapi.responses import StreamingResponse
from pydantic import AfterValidator

from .deps import CallerDep, Deps, DepsDep, JobIdPath, owned_job

router = APIRouter(prefix="/v1/generations", tags=["events"])

TERMINAL_EVENTS = ("delivered", "failed", "cancelled", "rejected")


def _event_id(value: str | None) -> str | None:
    # The ids this stream sends are timeline sequence numbers (PostgreSQL bigint).
    if value is not None and not (value.isascii() and value.isdigit() and len(value) <= 18):
        raise ValueError("must be the id of an event this stream sent: 1 to 18 digits 0-9")
    return value


LastEventId = Annotated[str | None, Header(), AfterValidator(_event_id)]


@router.get("/{job_id}/events")
async def events(
    job_id: JobIdPath,
    who: CallerDep,
    deps: DepsDep,
    request: Request,
    last_event_id: LastEventId = None,
) -> StreamingResponse:
    """The job's events from the start, or after ``Last-Event-ID`` (an ``id:`` this stream
    sent) when an EventSource reconnects."""
    await owned_job(deps, job_id, who)
    start = int(last_event_id) if last_event_id else 0
    return StreamingResponse(
        stream(deps, job_id, start, request),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache"},
    )


async def stream(deps: Deps, job_id: str, after: int, request: Request) -> AsyncIterator[bytes]:
    last_position: int | None = None
    idle = 0.0
    while not await request.is_disconnected():
        rows = await deps.jobs.timeline(job_id, after)
        for row in rows:
            after = row["seq"]
            name, data = sse_event(row)
            yield f"id: {after}\nevent: {name}\ndata: {json.dumps(data)}\n\n".encode()
            if name in TERMINAL_EVENTS:
                return
        job = await deps.jobs.get(job_id)
        if job is not None and job.terminal and not rows:
            return
        if job is not None and job.status in ("moderating", "queued"):
            pos = await deps.jobs.queue_position(job)
            if pos != last_position:
                last_position = pos
                yield f"event: position\ndata: {json.dumps({'position': pos})}\n\n".encode()
        idle = 0.0 if rows else idle + 0.1
        if idle >= 15:
            idle = 0.0
            yield b": keep-alive\n\n"
        await asyncio.sleep(0.1)  # poll interval of the projection


def sse_event(row: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """The client-facing name and data of one timeline row."""
    data = row["data"]
    kind = row["type"]
    if (
        kind in ("imagegen.prompt.moderated", "imagegen.image.moderated")
        and data.get("verdict") == "rejected"
    ):
        return "rejected", {"categories": data.get("categories", [])}
    if kind == "imagegen.prompt.moderated":
        return "queued", {}
    if kind == "imagegen.generation.step_progressed":
        return "step", {
            "step": data["step"],
            "total_steps": data["total_steps"],
            "preview_png_b64": data.get("preview_png_b64"),
        }
    if kind == "imagegen.generation.failed":
        return ("failed" if data.get("terminal", True) else "retrying"), {
            "reason": data["reason"],
            "message": data.get("message", ""),
        }
    names = {
        "imagegen.generation.requested": "accepted",
        "imagegen.job.scheduled": "scheduled",
        "imagegen.generation.started": "started",
        "imagegen.image.generated": "generated",
        "imagegen.image.moderated": "moderated",
        "imagegen.image.delivered": "delivered",
        "imagegen.generation.cancelled": "cancelled",
        "imagegen.generation.cancellation_requested": "cancelling",
        "imagegen.generation.preemption_requested": "pausing",
        "imagegen.generation.paused": "paused",
    }
    if kind == "imagegen.image.delivered":
        return "delivered", {"images": data["images"]}
    return names.get(kind, kind), {}

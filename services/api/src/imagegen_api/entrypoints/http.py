"""The public HTTP API (FastAPI): submit, read, follow, cancel; OpenAI-compatible images."""

import asyncio
import base64
import json
import random
import time
from collections.abc import AsyncIterator
from typing import Annotated, Any, Literal

import httpx
from fastapi import APIRouter, Depends, Header, HTTPException, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, HttpUrl, model_validator

from imagegen_runtime.publishing import Publisher
from imagegen_schemas import ControlNetSpec, GenerationParams, LoraSpec
from imagegen_schemas.jobs import CancellationRequested

from ..adapters.accounts import Caller, PgAccounts
from ..adapters.jobstore import PgJobStore
from ..domain.job import JobView, stage_timings
from ..domain.plans import PLANS
from ..domain.validation import Catalog, Problem, check_request
from ..service_layer.submit import IdempotencyConflict, Unavailable, submit


class LoraIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=128)
    weight: float = Field(default=1.0, ge=-4.0, le=4.0)


class ControlNetIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: str = Field(min_length=1, max_length=64)
    image: str = Field(min_length=1, max_length=2048, description="Control image URI.")
    weight: float = Field(default=1.0, ge=0.0, le=2.0)
    start_percent: float = Field(default=0.0, ge=0.0, le=1.0)
    end_percent: float = Field(default=1.0, ge=0.0, le=1.0)

    @model_validator(mode="after")
    def _ordered(self) -> "ControlNetIn":
        if self.start_percent > self.end_percent:
            raise ValueError("start_percent must not exceed end_percent")
        return self


class GenerationIn(BaseModel):
    """POST /v1/generations body. Bounds here; catalog and plan checks in domain.validation."""

    model_config = ConfigDict(extra="forbid")
    prompt: str = Field(min_length=1, max_length=2000)
    negative_prompt: str = Field(default="", max_length=2000)
    model: str | None = Field(default=None, max_length=128, description="Default: the server's.")
    width: int | None = Field(default=None, ge=8, le=4096)
    height: int | None = Field(default=None, ge=8, le=4096)
    steps: int = Field(default=25, ge=1, le=150)
    guidance_scale: float = Field(default=5.0, ge=0.0, le=30.0)
    scheduler: str = Field(default="ddim", max_length=64)
    seed: int | None = Field(default=None, ge=0, le=2**63 - 1)
    num_images: int = Field(default=1, ge=1, le=4)
    loras: list[LoraIn] = Field(default_factory=list, max_length=8)
    controlnets: list[ControlNetIn] = Field(default_factory=list, max_length=4)
    webhook_url: HttpUrl | None = None


def unprocessable(problems: list[Problem]) -> HTTPException:
    detail = [{"type": "value_error", "loc": ["body", *loc], "msg": msg} for loc, msg in problems]
    return HTTPException(status_code=422, detail=detail)


def to_params(
    body: GenerationIn, catalog: Catalog, default_model: str, caller: Caller
) -> GenerationParams:
    model = body.model or default_model
    info = catalog.models.get(model)
    size = info.default_size if info else 64
    width, height = body.width or size, body.height or size
    problems = check_request(
        model=model,
        width=width,
        height=height,
        scheduler=body.scheduler,
        num_images=body.num_images,
        loras=[lo.name for lo in body.loras],
        controlnets=[c.type for c in body.controlnets],
        catalog=catalog,
        limits=PLANS[caller.plan],
    )
    if problems:
        raise unprocessable(problems)
    return GenerationParams(
        prompt=body.prompt,
        negative_prompt=body.negative_prompt,
        model=model,
        width=width,
        height=height,
        steps=body.steps,
        guidance_scale=body.guidance_scale,
        scheduler=body.scheduler,
        seed=body.seed if body.seed is not None else random.SystemRandom().randrange(2**31),
        num_images=body.num_images,
        loras=tuple(LoraSpec(name=lo.name, weight=lo.weight) for lo in body.loras),
        controlnets=tuple(
            ControlNetSpec(
                type=c.type,
                image_uri=c.image,
                weight=c.weight,
                start_percent=c.start_percent,
                end_percent=c.end_percent,
            )
            for c in body.controlnets
        ),
    )


class Deps:
    """What the routes need; built by bootstrap (tests pass their own)."""

    def __init__(
        self,
        accounts: PgAccounts,
        jobs: PgJobStore,
        publisher: Publisher,
        catalog: Catalog,
        default_model: str,
        public_base_url: str,
        openai_timeout_s: float,
        avg_job_s: float = 2.0,
    ) -> None:
        self.accounts = accounts
        self.jobs = jobs
        self.publisher = publisher
        self.catalog = catalog
        self.default_model = default_model
        self.public_base_url = public_base_url.rstrip("/")
        self.openai_timeout_s = openai_timeout_s
        self.avg_job_s = avg_job_s


def build_router(deps: Deps) -> APIRouter:  # noqa: C901 - one closure per route
    router = APIRouter()

    async def caller(authorization: Annotated[str | None, Header()] = None) -> Caller:
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

    CallerDep = Annotated[Caller, Depends(caller)]

    async def owned_job(job_id: str, who: Caller, wait_s: float = 1.0) -> JobView:
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

    def links(job_id: str) -> dict[str, str]:
        base = f"{deps.public_base_url}/v1/generations/{job_id}"
        return {"self": base, "events": f"{base}/events", "cancel": base}

    @router.post("/v1/generations", status_code=202)
    async def create(
        body: GenerationIn,
        who: CallerDep,
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
                "links": links(accepted.job_id),
            },
        )

    @router.get("/v1/generations/{job_id}")
    async def read(job_id: str, who: CallerDep) -> dict[str, Any]:
        job = await owned_job(job_id, who)
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
            "links": links(job.job_id),
        }

    @router.get("/v1/generations/{job_id}/events")
    async def events(
        job_id: str,
        who: CallerDep,
        request: Request,
        last_event_id: Annotated[str | None, Header()] = None,
    ) -> StreamingResponse:
        await owned_job(job_id, who)
        start = int(last_event_id) if last_event_id and last_event_id.isdigit() else 0
        return StreamingResponse(
            sse(job_id, start, request),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache"},
        )

    async def sse(job_id: str, after: int, request: Request) -> AsyncIterator[bytes]:
        last_position: int | None = None
        idle = 0.0
        while not await request.is_disconnected():
            rows = await deps.jobs.timeline(job_id, after)
            for row in rows:
                after = row["seq"]
                name, data = sse_event(row)
                yield f"id: {after}\nevent: {name}\ndata: {json.dumps(data)}\n\n".encode()
                if name in ("delivered", "failed", "cancelled", "rejected"):
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

    @router.delete("/v1/generations/{job_id}", status_code=202)
    async def cancel(job_id: str, who: CallerDep) -> dict[str, Any]:
        job = await owned_job(job_id, who)
        if job.terminal:
            raise HTTPException(409, f"generation already {job.status}")
        await deps.publisher.publish(
            CancellationRequested(job_id=job_id, requested_by=who.user_id), key=job_id
        )
        return {"id": job_id, "status": "cancelling"}

    @router.post("/v1/images/generations")
    async def openai_images(request: Request, who: CallerDep) -> JSONResponse:
        return await openai_generate(await request.json(), who)

    async def openai_generate(body: dict[str, Any], who: Caller) -> JSONResponse:
        def error(status: int, message: str, param: str | None = None) -> JSONResponse:
            return JSONResponse(
                status_code=status,
                content={
                    "error": {
                        "message": message,
                        "type": "invalid_request_error",
                        "param": param,
                        "code": None,
                    }
                },
            )

        req = OpenAIImagesIn.model_validate(body)
        model = req.model if req.model in deps.catalog.models else deps.default_model
        size = deps.catalog.models[model].default_size if model in deps.catalog.models else 64
        width = height = size
        if req.size:
            try:
                width, height = (int(x) for x in req.size.lower().split("x"))
            except ValueError:
                return error(400, f"size must look like 64x64, got {req.size!r}", "size")
        try:
            gen = GenerationIn(
                prompt=req.prompt,
                model=model,
                width=width,
                height=height,
                num_images=req.n or 1,
                steps=req.steps or 25,
                guidance_scale=5.0,
                seed=req.seed,
            )
            params = to_params(gen, deps.catalog, deps.default_model, who)
        except HTTPException as exc:
            return error(400, json.dumps(exc.detail), None)
        except ValueError as exc:
            return error(400, str(exc))
        accepted = await submit(who, params, None, None, deps.accounts, deps.publisher)
        deadline = time.monotonic() + deps.openai_timeout_s
        job = await owned_job(accepted.job_id, who, wait_s=5)
        while not job.terminal:
            if time.monotonic() > deadline:
                return error(
                    504,
                    f"generation {job.job_id} not finished in "
                    f"{deps.openai_timeout_s:.0f}s; poll /v1/generations/{job.job_id}",
                )
            await asyncio.sleep(0.1)  # poll the projection until the job ends
            job = await owned_job(accepted.job_id, who)
        if job.status != "delivered":
            return error(400, job.failure_message or job.status, "prompt")
        data = []
        async with httpx.AsyncClient(timeout=30) as client:
            for image in sorted(job.images, key=lambda i: i["index"]):
                if req.response_format == "b64_json":
                    resp = await client.get(image["url"])
                    resp.raise_for_status()
                    data.append(
                        {
                            "b64_json": base64.b64encode(resp.content).decode(),
                            "revised_prompt": req.prompt,
                        }
                    )
                else:
                    data.append({"url": image["url"], "revised_prompt": req.prompt})
        return JSONResponse({"created": int(time.time()), "data": data})

    return router


class OpenAIImagesIn(BaseModel):
    """The OpenAI Images API request; fields we do not use are accepted and ignored."""

    model_config = ConfigDict(extra="ignore")
    prompt: str = Field(min_length=1, max_length=2000)
    model: str | None = None
    n: int | None = Field(default=1, ge=1, le=4)
    size: str | None = None
    response_format: Literal["url", "b64_json"] = "url"
    seed: int | None = Field(default=None, ge=0)  # extension: reproducible results
    steps: int | None = Field(default=None, ge=1, le=150)  # extension


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

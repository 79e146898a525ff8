"""/v1/images/generations: the OpenAI Images API, answered from our own jobs."""

from __future__ import annotations

import asyncio
import base64
import json
import time

import httpx
from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import JSONResponse

from ...service_layer.submit import submit
from .bodies import GenerationIn, OpenAIImagesIn, to_params
from .deps import CallerDep, DepsDep, owned_job

router = APIRouter(prefix="/v1/images", tags=["openai"])


def error(status: int, message: str, param: str | None = None) -> JSONResponse:
    """An OpenAI-style error body."""
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


@router.post("/generations")
async def generate(request: Request, who: CallerDep, deps: DepsDep) -> JSONResponse:
    req = OpenAIImagesIn.model_validate(await request.json())
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
    job = await owned_job(deps, accepted.job_id, who, wait_s=5)
    while not job.terminal:
        if time.monotonic() > deadline:
            return error(
                504,
                f"generation {job.job_id} not finished in "
                f"{deps.openai_timeout_s:.0f}s; poll /v1/generations/{job.job_id}",
            )
        await asyncio.sleep(0.1)  # poll the projection until the job ends
        job = await owned_job(deps, accepted.job_id, who)
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

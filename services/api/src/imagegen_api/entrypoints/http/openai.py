"""/v1/images/generations: the OpenAI Images API, answered from our own jobs.

Every refusal uses OpenAI's error body (``errors.openai_error``) and names the ``param``; an
unknown model is refused by name (404 ``model_not_found``), never swapped for the default.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
import time
from typing import Any

import httpx
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import ValidationError

from imagegen_schemas import GenerationParams

from ...domain.plans import Caller
from ...service_layer.submit import submit
from .bodies import GenerationIn, OpenAIImagesIn, Unprocessable, to_params
from .deps import CallerDep, Deps, DepsDep, owned_job, quota
from .errors import openai_error

router = APIRouter(prefix="/v1/images", tags=["openai"])
SIZE = re.compile(r"^([0-9]{1,5})x([0-9]{1,5})$")
# Our field names where OpenAI's differ, for the ``param`` of an error.
OPENAI_PARAM = {"num_images": "n", "width": "size", "height": "size"}


class Refused(Exception):
    """A request we answer with an OpenAI error."""

    def __init__(
        self, status: int, message: str, param: str | None, code: str | None = None
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code


def parse(raw: bytes) -> OpenAIImagesIn:
    try:
        doc: Any = json.loads(raw)
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError
        raise Refused(400, f"the body is not valid JSON: {exc}", None) from None
    if not isinstance(doc, dict):
        raise Refused(400, "the body must be a JSON object", None)
    try:
        return OpenAIImagesIn.model_validate(doc)
    except ValidationError as exc:
        first = exc.errors()[0]
        param = str(first["loc"][0]) if first["loc"] else None
        raise Refused(400, f"{param}: {first['msg']}", param) from None


def params_of(req: OpenAIImagesIn, deps: Deps, who: Caller) -> GenerationParams:
    model = req.model or deps.default_model
    info = deps.catalog.models.get(model)
    if info is None:
        known = ", ".join(sorted(deps.catalog.models)) or "none"
        raise Refused(
            404,
            f"The model {model!r} does not exist; available: {known}",
            "model",
            "model_not_found",
        )
    width = height = info.default_size
    if req.size is not None:
        match = SIZE.match(req.size.lower())
        if match is None:
            raise Refused(400, f"size must be WIDTHxHEIGHT, e.g. 64x64, got {req.size!r}", "size")
        width, height = int(match[1]), int(match[2])
    try:
        gen = GenerationIn(
            prompt=req.prompt,
            model=model,
            width=width,
            height=height,
            num_images=req.n or 1,
            steps=req.steps,  # None: the model's default
            seed=req.seed,
        )
        return to_params(gen, deps.catalog, deps.default_model, who)
    except ValidationError as exc:
        first = exc.errors()[0]
        param = OPENAI_PARAM.get(str(first["loc"][0]), str(first["loc"][0]))
        raise Refused(400, f"{param}: {first['msg']}", param) from None
    except Unprocessable as exc:  # check_request's problems: the first names the field
        loc, msg = exc.problems[0]
        param = OPENAI_PARAM.get(str(loc[0]), str(loc[0]))
        raise Refused(400, f"{loc[0]} {msg}", param) from None


@router.post("/generations")
async def generate(request: Request, who: CallerDep, deps: DepsDep) -> JSONResponse:
    try:
        req = parse(await request.body())
        params = params_of(req, deps, who)
    except Refused as r:
        return openai_error(r.status, r.message, r.param, r.code)
    accepted = await submit(
        who, params, None, deps.accounts, deps.publisher, quota=quota(deps, who)
    )
    deadline = time.monotonic() + deps.openai_timeout_s
    job = await owned_job(deps, accepted.job_id, who, wait_s=5)
    while not job.terminal:
        if time.monotonic() > deadline:
            return openai_error(
                504,
                f"generation {job.job_id} not finished in "
                f"{deps.openai_timeout_s:.0f}s; poll /v1/generations/{job.job_id}",
                code="timeout",
                kind="server_error",
            )
        await asyncio.sleep(0.1)  # poll the projection until the job ends
        job = await owned_job(deps, accepted.job_id, who)
    if job.status != "delivered":
        return openai_error(400, job.failure_message or job.status, "prompt", job.failure_reason)
    data = []
    async with httpx.AsyncClient(timeout=30) as client:
        for image in sorted(job.images, key=lambda i: i["index"]):
            if req.response_format == "b64_json":
                try:
                    resp = await client.get(image["url"])
                    resp.raise_for_status()
                except httpx.HTTPError as exc:
                    return openai_error(
                        502, f"could not read image {image['index']}: {exc}", kind="server_error"
                    )
                data.append(
                    {
                        "b64_json": base64.b64encode(resp.content).decode(),
                        "revised_prompt": req.prompt,
                    }
                )
            else:
                data.append({"url": image["url"], "revised_prompt": req.prompt})
    return JSONResponse({"created": int(time.time()), "data": data})

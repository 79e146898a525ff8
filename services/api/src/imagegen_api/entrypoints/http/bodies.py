"""Request bodies and the edge rules for every field (ADR 0601).

Bounds that need no catalog are checked here, on every request, before anything is stored or
published: number ranges, finite numbers (no NaN or Infinity), and text that PostgreSQL and every
consumer can take (``domain.validation.text_problem``: no control character, no lone surrogate).
Catalog and plan checks follow in ``domain.validation.check_request``.
"""

from __future__ import annotations

import os
import random
from typing import Annotated, Any, Literal

from fastapi import HTTPException
from pydantic import (
    AfterValidator,
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    HttpUrl,
    model_validator,
)

from imagegen_runtime import ssrf
from imagegen_schemas import ControlNetSpec, GenerationParams, LoraSpec

from ...domain.plans import PLANS, Caller
from ...domain.validation import Catalog, Problem, check_request, text_problem


def _free_text(value: str) -> str:
    if (problem := text_problem(value)) is not None:
        raise ValueError(problem)
    return value


def _name(value: str) -> str:
    if (problem := text_problem(value, multiline=False)) is not None:
        raise ValueError(problem)
    return value


def _image_ref(value: str) -> str:
    if value.isascii() and value.isprintable():  # the fast path for a data: URI of megabytes
        return value
    return _name(value)


def _webhook_url(value: HttpUrl) -> HttpUrl:
    """SSRF guard at the edge (docs/adr/0404); IMAGEGEN_API_WEBHOOK_ALLOW lists exemptions."""
    allow = ssrf.AllowList.parse(os.environ.get("IMAGEGEN_API_WEBHOOK_ALLOW", ""))
    try:
        ssrf.check_url(str(value), allow)
    except ssrf.ForbiddenURL as exc:
        raise ValueError(f"webhook_url refused: {exc}") from None
    return value


WebhookUrl = Annotated[HttpUrl, AfterValidator(_webhook_url)]
FreeText = Annotated[str, AfterValidator(_free_text)]  # a prompt: tab and newlines allowed
Name = Annotated[str, AfterValidator(_name)]  # an identifier or URI: one line, printable
ImageRef = Annotated[str, AfterValidator(_image_ref)]  # a data: URI or a file id (ADR 0706)

# Every body: unknown fields refused, NaN and Infinity refused wherever a number goes.
STRICT = ConfigDict(extra="forbid", allow_inf_nan=False)


class LoraIn(BaseModel):
    model_config = STRICT
    name: Name = Field(min_length=1, max_length=128)
    weight: float = Field(default=1.0, ge=-4.0, le=4.0)


class ControlNetIn(BaseModel):
    model_config = STRICT
    type: Name = Field(min_length=1, max_length=64)
    # A data: URI (size-capped by the server) or a file id from POST /v1/files; "image" is
    # accepted as the field's older name.
    image_uri: ImageRef = Field(
        min_length=1,
        validation_alias=AliasChoices("image_uri", "image"),
        description="data:image/png;base64,... or a file id from POST /v1/files.",
    )
    weight: float = Field(default=1.0, ge=0.0, le=2.0)
    start_percent: float = Field(default=0.0, ge=0.0, le=1.0)
    end_percent: float = Field(default=1.0, ge=0.0, le=1.0)

    @model_validator(mode="after")
    def _ordered(self) -> ControlNetIn:
        if self.start_percent >= self.end_percent:
            raise ValueError("start_percent must be below end_percent")
        return self


class GenerationIn(BaseModel):
    """POST /v1/generations body."""

    model_config = STRICT
    prompt: FreeText = Field(min_length=1, max_length=2000)
    negative_prompt: FreeText = Field(default="", max_length=2000)
    model: Name | None = Field(default=None, max_length=128, description="Default: the server's.")
    width: int | None = Field(default=None, ge=8, le=4096)
    height: int | None = Field(default=None, ge=8, le=4096)
    steps: int | None = Field(default=None, ge=1, le=150, description="Default: the model's.")
    guidance_scale: float | None = Field(
        default=None, ge=0.0, le=30.0, description="Default: the model's."
    )
    scheduler: Name | None = Field(
        default=None, max_length=64, description="Default: ddim, or the model's first sampler."
    )
    seed: int | None = Field(default=None, ge=0, le=2**63 - 1)
    num_images: int = Field(default=1, ge=1, le=4)
    loras: list[LoraIn] = Field(default_factory=list, max_length=8)
    controlnets: list[ControlNetIn] = Field(default_factory=list, max_length=4)
    webhook_url: WebhookUrl | None = None


class OpenAIImagesIn(BaseModel):
    """The OpenAI Images API request; fields we do not use are accepted and ignored."""

    model_config = ConfigDict(extra="ignore", allow_inf_nan=False)
    prompt: FreeText = Field(min_length=1, max_length=2000)
    model: Name | None = Field(default=None, max_length=128)
    n: int | None = Field(default=1, ge=1, le=4)
    size: Name | None = Field(default=None, max_length=16)
    response_format: Literal["url", "b64_json"] = "url"
    seed: int | None = Field(default=None, ge=0, le=2**63 - 1)  # extension: reproducible results
    steps: int | None = Field(default=None, ge=1, le=150)  # extension


class Unprocessable(Exception):
    """The request cannot be served as asked: each problem names a body field and the reason."""

    def __init__(self, problems: list[Problem]) -> None:
        super().__init__("; ".join(f"{'.'.join(map(str, loc))}: {msg}" for loc, msg in problems))
        self.problems = problems

    def as_http(self) -> HTTPException:
        detail = [
            {"type": "value_error", "loc": ["body", *loc], "msg": msg} for loc, msg in self.problems
        ]
        return HTTPException(status_code=422, detail=detail)


def to_params(
    body: GenerationIn,
    catalog: Catalog,
    default_model: str,
    caller: Caller,
    image_refs: list[str] | None = None,
    image_problems: list[Problem] | None = None,
) -> GenerationParams:
    """The job's parameters (a fresh random seed when the client gave none); raises
    :class:`Unprocessable` naming every problem. ``image_refs``: the file id each ControlNet's
    control image resolved to, ``image_problems``: why some did not (``files.control_images``);
    without them the client's ``image_uri`` is taken as it is."""
    model = body.model or default_model
    info = catalog.models.get(model)
    size = info.default_size if info else 64
    width, height = body.width or size, body.height or size
    scheduler = body.scheduler or (info.default_sampler if info else "ddim")
    problems = check_request(
        model=model,
        width=width,
        height=height,
        scheduler=scheduler,
        num_images=body.num_images,
        loras=[lo.name for lo in body.loras],
        controlnets=[c.type for c in body.controlnets],
        catalog=catalog,
        limits=PLANS[caller.plan],
    )
    problems += image_problems or []
    if problems:
        raise Unprocessable(problems)
    return GenerationParams(
        prompt=body.prompt,
        negative_prompt=body.negative_prompt,
        model=model,
        width=width,
        height=height,
        steps=body.steps or (info.default_steps if info else 25),
        guidance_scale=(
            body.guidance_scale
            if body.guidance_scale is not None
            else (info.default_guidance if info else 5.0)
        ),
        scheduler=scheduler,
        seed=body.seed if body.seed is not None else random.SystemRandom().randrange(2**31),
        num_images=body.num_images,
        loras=tuple(LoraSpec(name=lo.name, weight=lo.weight) for lo in body.loras),
        controlnets=tuple(
            ControlNetSpec(
                type=c.type,
                image_uri=c.image_uri if image_refs is None else image_refs[i],
                weight=c.weight,
                start_percent=c.start_percent,
                end_percent=c.end_percent,
            )
            for i, c in enumerate(body.controlnets)
        ),
    )


def normalised(
    body: GenerationIn, params: GenerationParams, webhook_url: str | None
) -> dict[str, Any]:
    """The client's request as sent, with every default filled in: what an Idempotency-Key
    names (ADR 0600). The server's seed is left out; the client's, if any, is in."""
    return {
        "params": params.model_dump(mode="json", exclude={"seed"}),
        "seed": body.seed,
        "webhook_url": webhook_url,
    }

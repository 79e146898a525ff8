"""Request bodies: bounds that need no catalog; catalog and plan checks are domain.validation."""

from __future__ import annotations

import random
from typing import Literal

from fastapi import HTTPException
from pydantic import BaseModel, ConfigDict, Field, HttpUrl, model_validator

from imagegen_schemas import ControlNetSpec, GenerationParams, LoraSpec

from ...domain.plans import PLANS, Caller
from ...domain.validation import Catalog, Problem, check_request


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
    def _ordered(self) -> ControlNetIn:
        if self.start_percent > self.end_percent:
            raise ValueError("start_percent must not exceed end_percent")
        return self


class GenerationIn(BaseModel):
    """POST /v1/generations body."""

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

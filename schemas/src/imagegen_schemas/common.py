"""Value types shared by several events."""

from __future__ import annotations

from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field

# Sampler names accepted in GenerationParams.scheduler; the worker maps each to a diffusers class.
SCHEDULERS: tuple[str, ...] = (
    "ddim",
    "pndm",
    "euler",
    "euler_a",
    "dpmpp_2m",
    "dpmpp_2m_karras",
    "unipc",
    "lcm",
)


class Tier(StrEnum):
    """Service tier; fixed by the user's plan. Scheduling weights are 10/5/1 by default."""

    TURBO = "turbo"
    FAST = "fast"
    RELAX = "relax"


class Plan(StrEnum):
    """Commercial plan; it fixes the tier and limits such as LoRAs per request."""

    FREE = "free"
    PRO = "pro"
    TURBO = "turbo"


class LoraSpec(BaseModel):
    """One LoRA adapter applied to the base model."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(min_length=1, max_length=128, description="Registered LoRA name.")
    weight: float = Field(default=1.0, ge=-4.0, le=4.0, description="Adapter scale.")


class ControlNetSpec(BaseModel):
    """One ControlNet conditioning, applied between start and end percent of denoising."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    type: str = Field(min_length=1, max_length=64, description="canny, depth, openpose, ...")
    image_uri: str = Field(min_length=1, max_length=2048, description="Control image reference.")
    weight: float = Field(default=1.0, ge=0.0, le=2.0, description="Conditioning scale.")
    start_percent: float = Field(default=0.0, ge=0.0, le=1.0, description="Start, 0..1 of steps.")
    end_percent: float = Field(default=1.0, ge=0.0, le=1.0, description="End, 0..1 of steps.")


class GenerationParams(BaseModel):
    """What to generate. Bounds are enforced at the API edge; events repeat them for consumers."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    prompt: str = Field(min_length=1, max_length=2000)
    negative_prompt: str = Field(default="", max_length=2000)
    model: str = Field(min_length=1, max_length=128, description="Registered model id.")
    width: int = Field(ge=8, le=4096, multiple_of=8)
    height: int = Field(ge=8, le=4096, multiple_of=8)
    steps: int = Field(ge=1, le=150)
    guidance_scale: float = Field(ge=0.0, le=30.0)
    scheduler: str = Field(default="ddim", max_length=64)
    seed: int = Field(ge=0, le=2**63 - 1)
    num_images: int = Field(default=1, ge=1, le=4)
    loras: tuple[LoraSpec, ...] = ()
    controlnets: tuple[ControlNetSpec, ...] = ()


class ImageRef(BaseModel):
    """A stored image: events carry where it is and its digest, never the bytes."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    uri: str = Field(description="Blob storage URI, e.g. file:///.../job/0.png or s3://...")
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    width: int = Field(ge=1)
    height: int = Field(ge=1)
    index: int = Field(default=0, ge=0, description="Position within the job's batch.")

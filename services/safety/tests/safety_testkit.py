"""Helpers of the safety tests (a unique module name: every service has a conftest)."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

from PIL import Image

from imagegen_schemas import Envelope, Payload
from imagegen_schemas.common import GenerationParams, ImageRef, Plan, Tier
from imagegen_schemas.jobs import GenerationRequested, ImageGenerated

BENIGN = "a red circle on a blue background"


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def png(color: tuple[int, int, int] = (200, 30, 30), size: int = 64) -> bytes:
    """A solid-colour PNG, like the tiny demo model's early outputs."""
    buf = io.BytesIO()
    Image.new("RGB", (size, size), color).save(buf, format="PNG")
    return buf.getvalue()


def requested(
    job_id: str = "job-1", prompt: str = BENIGN, negative: str = ""
) -> GenerationRequested:
    params = GenerationParams(
        prompt=prompt,
        negative_prompt=negative,
        model="demo-sd15",
        width=64,
        height=64,
        steps=4,
        guidance_scale=7.0,
        seed=1,
    )
    return GenerationRequested(
        job_id=job_id,
        user_id="user-1",
        plan=Plan.PRO,
        tier=Tier.FAST,
        params=params,
        webhook_url="https://hooks.example.com/in",
    )


def store(directory: Path, job_id: str, images: list[bytes]) -> tuple[ImageRef, ...]:
    """Write ``images`` as the GPU worker does and return their references."""
    refs = []
    for i, data in enumerate(images):
        path = directory / job_id / f"{i}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        refs.append(ImageRef(uri=path.as_uri(), sha256=sha(data), width=64, height=64, index=i))
    return tuple(refs)


def generated(refs: tuple[ImageRef, ...], job_id: str = "job-1") -> ImageGenerated:
    return ImageGenerated(
        job_id=job_id,
        worker_id="worker-1",
        fencing_token=3,
        images=refs,
        timings_ms={"denoise": 12.0},
        webhook_url="https://hooks.example.com/in",
    )


def envelope_of(msg: Payload, producer: str = "api-1") -> Envelope:
    return Envelope.wrap(msg, correlation_id=msg.job_id, producer=producer)  # type: ignore[attr-defined]

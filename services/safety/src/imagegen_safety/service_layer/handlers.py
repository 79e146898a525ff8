"""The safety service's handler: one function per event type it reacts to.

- GenerationRequested -> PromptModerated. Only the prompt is judged: the negative prompt steers
  away from what it names ("nsfw, nude, gore" is a common one), so judging it would reject the
  careful users; an image it still steers into trouble is caught after generation (ADR 0303).
- ImageGenerated -> ImageModerated, carrying the images, fencing token and webhook on to delivery;
  an image of an assignment revoked earlier in the log gets no verdict (:mod:`.revocations`).

Idempotency: each verdict's event id is derived from its cause's event id, so a redelivered cause
publishes the same id again (with the same scores: the models are deterministic) and consumers drop
the duplicate. Model calls run in a worker thread, so the event loop keeps answering /readyz and
/metrics during inference; each check is timed in ``imagegen_safety_check_seconds{kind}``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from typing import TypeVar

from opentelemetry import trace

from imagegen_runtime.kafka import Handler, RecordMeta
from imagegen_runtime.publishing import Publisher, publish_derived
from imagegen_schemas import Envelope, Payload
from imagegen_schemas.common import ImageRef
from imagegen_schemas.jobs import (
    GenerationRequested,
    ImageGenerated,
    ImageModerated,
    PromptModerated,
)

from ..adapters.blobs import BlobReader
from ..adapters.classifiers import ImageClassifier, PromptClassifier
from ..config import GENERATED, SafetySettings
from ..domain.policy import IMAGE_CATEGORY, image_verdict, prompt_verdict
from ..metrics import CHECK_SECONDS
from .revocations import Revocations

log = logging.getLogger(__name__)
tracer = trace.get_tracer("imagegen.safety")

T = TypeVar("T")


async def timed_check(kind: str, fn: Callable[..., T], *args: object) -> T:
    """Run a blocking check in a worker thread, observing its duration under ``kind``, in a
    ``safety <kind> check`` span (ADR 0800)."""
    with tracer.start_as_current_span(f"safety {kind} check"), CHECK_SECONDS.labels(kind).time():
        return await asyncio.to_thread(fn, *args)


def make_handler(
    publisher: Publisher,
    prompts: PromptClassifier,
    images: ImageClassifier,
    settings: SafetySettings,
    revocations: Revocations,
    blobs: BlobReader | None = None,
) -> Handler:
    generated = settings.topic_prefix + GENERATED
    reader = blobs or BlobReader()  # file:// only; bootstrap passes S3 when configured
    thresholds = settings.prompt_thresholds()

    async def on_generation_requested(envelope: Envelope, msg: GenerationRequested) -> None:
        scores = await timed_check("prompt", prompts.score, msg.params.prompt)
        verdict, categories = prompt_verdict(scores, thresholds)
        moderated = PromptModerated(
            job_id=msg.job_id,
            verdict=verdict,
            categories=categories,
            scores=scores,
            checker=prompts.checker,
        )
        await publish_derived(publisher, moderated, key=msg.job_id, cause=envelope)

    def score_images(refs: Sequence[ImageRef]) -> list[float]:
        return images.score([reader.read_image(ref) for ref in refs])  # sha256 checked first

    async def on_image_generated(envelope: Envelope, msg: ImageGenerated, meta: RecordMeta) -> None:
        if revocations.stale(meta, msg):
            log.warning(
                "result of a revoked assignment dropped",
                extra={"job_id": msg.job_id, "fencing_token": msg.fencing_token},
            )
            return
        nsfw = await timed_check("image", score_images, msg.images)
        verdict, per_image, categories = image_verdict(
            nsfw,
            settings.image_threshold_sexual,
            reject_whole_batch=settings.image_reject_whole_batch,
        )
        scores = {IMAGE_CATEGORY: max(nsfw)} | {
            f"{IMAGE_CATEGORY}.{ref.index}": s for ref, s in zip(msg.images, nsfw, strict=True)
        }
        moderated = ImageModerated(
            job_id=msg.job_id,
            verdict=verdict,
            per_image=per_image,
            categories=categories,
            scores=scores,
            checker=images.checker,
            images=msg.images,
            fencing_token=msg.fencing_token,
            webhook_url=msg.webhook_url,
        )
        await publish_derived(publisher, moderated, key=msg.job_id, cause=envelope)

    async def handle(envelope: Envelope, payload: Payload, meta: RecordMeta) -> None:
        """Other types on these topics (``GenerationPaused`` ...) are skipped (committed)."""
        if meta.topic == generated:
            await revocations.catch_up(meta)
        if isinstance(payload, GenerationRequested):
            await on_generation_requested(envelope, payload)
        elif isinstance(payload, ImageGenerated):
            await on_image_generated(envelope, payload, meta)
        if meta.topic == generated:
            revocations.seen(meta, payload)

    return handle

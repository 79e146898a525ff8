"""What one delivery is: the images to hand out, their links, and the record that makes it once.

``plan_delivery`` is pure: given the verdict, ``now`` and the key it fixes every link and the
expiry. The record is kept next to the files; a redelivered verdict replays it instead of planning
again, so the published event and the webhook body never change for one cause.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

from pydantic import BaseModel, ConfigDict

from imagegen_schemas.common import ImageRef
from imagegen_schemas.jobs import DeliveredImage, ImageDelivered, ImageModerated, Verdict

from .links import signed_url

# (job_id, index, ttl_s) -> a link served by the object store itself, or None (docs/storage.md).
StorageLink = Callable[[str, int, int], str | None]


class DeliveryRecord(BaseModel):
    """Delivery's memory of one job, stored as ``<store_dir>/<job_id>/.delivery.json``.

    Written when the files are in place (``webhook_done`` False, expiry fixed), then again once
    the webhook message is handed to the webhook store (docs/adr/0403). Invariant: a record
    exists only once every image it lists is stored.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    job_id: str  # the job delivered
    causation_id: str  # event id of the ImageModerated that caused this delivery
    event_id: str  # id of the ImageDelivered it publishes (derived from causation_id)
    expires_at: int  # unix seconds every link stops working; computed once, never again
    images: tuple[DeliveredImage, ...]  # the links, in index order
    webhook_url: str | None = None  # where to call back; None: no webhook
    webhook_done: bool = False  # True once the delivered outcome is in the webhook store
    webhook_status: int | None = None  # always None since webhooks are sent apart (ADR 0403)

    def delivered(self) -> ImageDelivered:
        """The event this record publishes (the same on every replay)."""
        return ImageDelivered(
            job_id=self.job_id, images=self.images, webhook_status=self.webhook_status
        )


def deliverable(msg: ImageModerated) -> tuple[ImageRef, ...]:
    """The images an allowed verdict lets out, in index order.

    ``per_image`` verdicts, when present, pair with ``images`` by position; an image rejected on
    its own is left out. A verdict with nothing to deliver is malformed (ValueError), so the
    consumer dead-letters it rather than publishing an empty delivery.
    """
    if msg.verdict != Verdict.ALLOWED:
        return ()
    if msg.per_image and len(msg.per_image) != len(msg.images):
        raise ValueError(f"{len(msg.per_image)} per-image verdicts for {len(msg.images)} images")
    verdicts = msg.per_image or (Verdict.ALLOWED,) * len(msg.images)
    refs = tuple(r for r, v in zip(msg.images, verdicts, strict=True) if v == Verdict.ALLOWED)
    if not refs:
        raise ValueError(f"job {msg.job_id}: verdict allowed but no image to deliver")
    if len({r.index for r in refs}) != len(refs):
        raise ValueError(f"job {msg.job_id}: two images share an index")
    return tuple(sorted(refs, key=lambda r: r.index))


def plan_delivery(
    msg: ImageModerated,
    refs: tuple[ImageRef, ...],
    *,
    causation_id: str,
    event_id: str,
    now: float,
    ttl_s: int,
    base_url: str,
    key: bytes,
    storage_link: StorageLink | None = None,
) -> DeliveryRecord:
    """Fix the expiry (``now + ttl_s``, whole seconds) and sign one link per image.

    ``storage_link(job_id, index, ttl_s)``, when given and not None for an image, is the link
    instead of our signed ``/files`` one: a presigned GET on the object store, valid ``ttl_s``.
    """
    expires_at = int(now) + ttl_s
    at = datetime.fromtimestamp(expires_at, UTC)

    def link(index: int) -> str:
        url = storage_link(msg.job_id, index, ttl_s) if storage_link is not None else None
        return url or signed_url(base_url, msg.job_id, index, expires_at, key)

    images = tuple(
        DeliveredImage(index=r.index, sha256=r.sha256, expires_at=at, url=link(r.index))
        for r in refs
    )
    return DeliveryRecord(
        job_id=msg.job_id,
        causation_id=causation_id,
        event_id=event_id,
        expires_at=expires_at,
        images=images,
        webhook_url=msg.webhook_url,
    )

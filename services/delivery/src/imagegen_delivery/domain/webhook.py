"""The webhook call's body and its signature, so receivers can check that delivery sent it.

The body is compact JSON with sorted keys; it is built once per delivery and sent byte for byte on
every retry. ``X-Imagegen-Signature: sha256=<hex>`` is HMAC-SHA256 of the raw body (as GitHub's
``X-Hub-Signature-256``); receivers recompute it over the bytes they received, before parsing.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Sequence

from imagegen_schemas.jobs import DeliveredImage, ImageDelivered

SIGNATURE_HEADER = "X-Imagegen-Signature"
EVENT_ID_HEADER = "X-Imagegen-Event-Id"
_PREFIX = "sha256="


def derive_webhook_key(signing_key: bytes) -> bytes:
    """The webhook key used when none is configured: derived, never the URL key itself.

    A receiver holding it can check webhook bodies but cannot forge download links. It equals
    ``hmac.new(signing_key, b"imagegen.webhook.v1", "sha256").hexdigest()`` as ASCII bytes.
    """
    return hmac.new(signing_key, b"imagegen.webhook.v1", hashlib.sha256).hexdigest().encode()


def webhook_body(event_id: str, job_id: str, images: Sequence[DeliveredImage]) -> bytes:
    """JSON the receiver gets: the ImageDelivered event id (dedupe on it), job, and links."""
    doc = {
        "event_id": event_id,
        "type": ImageDelivered.event_type,
        "job_id": job_id,
        "images": [
            {
                "index": i.index,
                "url": i.url,
                "sha256": i.sha256,
                "expires_at": i.expires_at.isoformat().replace("+00:00", "Z"),
            }
            for i in images
        ],
    }
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


def signature_header(body: bytes, key: bytes) -> str:
    """The value of ``X-Imagegen-Signature`` for ``body``."""
    return _PREFIX + hmac.new(key, body, hashlib.sha256).hexdigest()


def verify_signature_header(body: bytes, header: str, key: bytes) -> bool:
    """What a receiver does: recompute over the raw body and compare in constant time."""
    expected = signature_header(body, key).encode("ascii")
    return hmac.compare_digest(expected, header.encode("utf-8"))

"""Webhook messages per the Standard Webhooks spec (docs/adr/0403): what a terminal event says to
the client, how the call is signed, and when a failed call is tried again.

Body (compact JSON, sorted keys, built once per message and sent byte for byte on every try):
``{"type": "generation.<state>", "timestamp": <ISO 8601 of the event>, "event_id", "job_id",
"data": {...}}``. The ``webhook-id`` header is the id of the event announced (the ImageDelivered,
GenerationFailed, PromptModerated/ImageModerated or GenerationCancelled event id), so it is the
same on every retry and redelivery and receivers dedupe on it.

Signature: ``webhook-signature: v1,<base64 HMAC-SHA256(secret, "<id>.<timestamp>.<body>")>``, one
per active secret of the user, space-separated (during a rotation both the old and the new
secret sign); ``webhook-timestamp`` is the attempt's unix time, so a captured call is refused by
receivers after their tolerance (5 minutes in the standardwebhooks library).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from standardwebhooks.webhooks import Webhook

from imagegen_schemas import Payload
from imagegen_schemas.jobs import (
    FailureReason,
    GenerationCancelled,
    GenerationFailed,
    ImageDelivered,
    ImageModerated,
    PromptModerated,
    Verdict,
)

# Kept beside the standard headers: older receivers dedupe on it (same value as webhook-id).
EVENT_ID_HEADER = "X-Imagegen-Event-Id"
DELIVERED, FAILED, REJECTED, CANCELLED = (
    "generation.delivered",
    "generation.failed",
    "generation.rejected",
    "generation.cancelled",
)
_REJECTIONS = {FailureReason.PROMPT_REJECTED, FailureReason.IMAGE_REJECTED}


@dataclass(frozen=True)
class Outcome:
    """A job's terminal state as one webhook message."""

    message_id: str  # the webhook-id: the id of the event that ended the job
    webhook_type: str  # generation.delivered | failed | rejected | cancelled
    body: str  # the JSON body (see the module docstring)


def _iso(at: datetime) -> str:
    return at.astimezone(UTC).isoformat().replace("+00:00", "Z")


def outcome_data(payload: Payload) -> tuple[str, dict[str, Any]] | None:
    """(webhook type, data) for a payload that ends a job; None for any other."""
    match payload:
        case ImageDelivered():
            images = [
                {
                    "index": i.index,
                    "url": i.url,
                    "sha256": i.sha256,
                    "expires_at": _iso(i.expires_at),
                }
                for i in payload.images
            ]
            return DELIVERED, {"images": images}
        case GenerationFailed(terminal=True) if payload.reason in _REJECTIONS:
            return REJECTED, {"stage": payload.reason.value.split("_")[0], "categories": []}
        case GenerationFailed(terminal=True):
            return FAILED, {"reason": payload.reason.value, "message": payload.message}
        case PromptModerated(verdict=Verdict.REJECTED):
            return REJECTED, {"stage": "prompt", "categories": list(payload.categories)}
        case ImageModerated(verdict=Verdict.REJECTED):
            return REJECTED, {"stage": "image", "categories": list(payload.categories)}
        case GenerationCancelled():
            return CANCELLED, {"at_step": payload.at_step}
    return None


def outcome_of(
    payload: Payload, event_id: str, job_id: str, occurred_at: datetime
) -> Outcome | None:
    """The webhook message for the event ``event_id`` carrying ``payload``, if it ends a job."""
    found = outcome_data(payload)
    if found is None:
        return None
    kind, data = found
    doc = {
        "type": kind,
        "timestamp": _iso(occurred_at),
        "event_id": event_id,
        "job_id": job_id,
        "data": data,
    }
    return Outcome(event_id, kind, json.dumps(doc, sort_keys=True, separators=(",", ":")))


def signature_header(message_id: str, at: datetime, body: str, secrets: Sequence[str]) -> str:
    """The ``webhook-signature`` value: one ``v1,<sig>`` per secret, newest first."""
    return " ".join(Webhook(s).sign(message_id, at, body) for s in secrets)


def webhook_headers(
    message_id: str, at: datetime, body: str, secrets: Sequence[str]
) -> dict[str, str]:
    """Every header of one attempt made at ``at``."""
    return {
        "Content-Type": "application/json",
        "webhook-id": message_id,
        "webhook-timestamp": str(int(at.timestamp())),
        "webhook-signature": signature_header(message_id, at, body, secrets),
        EVENT_ID_HEADER: message_id,
    }


def succeeded(status: int | None) -> bool:
    """Only a 2xx answer ends a message; anything else (no answer, 3xx, 4xx, 5xx) is retried."""
    return status is not None and 200 <= status < 300


def retry_delay(attempt: int, schedule: Sequence[float]) -> float | None:
    """Seconds to wait after failed attempt ``attempt`` (1-based); None once all are spent."""
    return schedule[attempt - 1] if attempt <= len(schedule) else None

"""Webhook calls as events: each scheduled attempt, and the calls that ran out of attempts.

Delivery publishes one ``WebhookScheduled`` per attempt on the retry topic (the first one due at
once) and consumes it; a call that fails every attempt, or may never be made (its URL is
forbidden), ends as ``WebhookDeadLettered`` on the webhook dead-letter topic, from where
``imagegen webhooks redeliver`` resends it (docs/adr/0403).
"""

from __future__ import annotations

from datetime import datetime
from typing import ClassVar

from pydantic import Field

from .envelope import Payload

# The ``type`` of the webhook bodies receivers get, one per terminal state of a job.
WEBHOOK_TYPES = (
    "generation.delivered",
    "generation.failed",
    "generation.rejected",
    "generation.cancelled",
)


class WebhookScheduled(Payload):
    """One attempt of one webhook message, due at ``due_at``."""

    event_type: ClassVar[str] = "imagegen.webhook.scheduled"
    message_id: str = Field(min_length=1, description="The webhook-id header: same on every try.")
    job_id: str
    user_id: str = Field(description="Whose secrets sign the call.")
    url: str = Field(description="Where the call goes (checked again before every attempt).")
    webhook_type: str = Field(description="The body's type, e.g. generation.delivered.")
    body: str = Field(description="The JSON body, sent byte for byte on every attempt.")
    attempt: int = Field(ge=1, description="1 for the first call.")
    round: int = Field(default=0, ge=0, description="0, then +1 per redelivery from the DLQ.")
    due_at: datetime = Field(description="Not sent before this time (UTC).")
    last_status: int | None = Field(default=None, description="HTTP status of the last attempt.")
    last_error: str = Field(default="", description="Why the last attempt failed.")


class WebhookDeadLettered(Payload):
    """A webhook message that will not be tried again unless redelivered."""

    event_type: ClassVar[str] = "imagegen.webhook.dead_lettered"
    message_id: str = Field(min_length=1)
    job_id: str
    user_id: str
    url: str
    webhook_type: str
    body: str
    attempts: int = Field(ge=0, description="Calls made in this round.")
    round: int = Field(default=0, ge=0)
    last_status: int | None = None
    reason: str = Field(description="Why it stopped: the last error, or the refused address.")

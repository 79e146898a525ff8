"""The envelope every imagegen event travels in.

The Kafka record value is the JSON of an :class:`Envelope`; the record key is the aggregate id
(job id or worker id) so one aggregate's events stay ordered within a partition. The same identity
is mirrored into CloudEvents-style headers (see :mod:`imagegen_schemas.headers`) so a consumer
in any language can route on headers without parsing the value.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field


def new_event_id() -> str:
    """A fresh, globally unique event id (UUID4 as text)."""
    return str(uuid.uuid4())


def utcnow() -> datetime:
    """The current time in UTC; the only clock read in this package (used for defaults)."""
    return datetime.now(UTC)


class Payload(BaseModel):
    """Base class of every event and command payload.

    Subclasses set ``event_type`` (a dotted, past-tense name for events, imperative for commands)
    and ``schema_version``. Payloads are frozen facts: fields are only ever added, with defaults;
    any other change is a new version plus an upcaster (see :mod:`imagegen_schemas.registry`).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    event_type: ClassVar[str] = ""
    schema_version: ClassVar[int] = 1
    # The topic this payload is published to; set by the catalog registration.
    topic: ClassVar[str] = ""


class Envelope(BaseModel):
    """Identity, causality and provenance of one event, around its payload."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    event_id: str = Field(default_factory=new_event_id, description="Unique id of this event.")
    type: str = Field(description="Event type, e.g. 'imagegen.generation.requested'.")
    schema_version: int = Field(ge=1, description="Version of the payload schema for this type.")
    occurred_at: datetime = Field(
        default_factory=utcnow, description="When the fact happened (UTC)."
    )
    correlation_id: str = Field(
        description="The aggregate the event belongs to: job id or worker id."
    )
    causation_id: str | None = Field(
        default=None, description="event_id of the event that caused this one; None for an origin."
    )
    producer: str = Field(description="Service (and instance) that produced the event.")
    data: dict[str, Any] = Field(description="The payload, as JSON; parse with the registry.")

    @classmethod
    def wrap(
        cls,
        payload: Payload,
        *,
        correlation_id: str,
        producer: str,
        causation_id: str | None = None,
        occurred_at: datetime | None = None,
        event_id: str | None = None,
    ) -> Envelope:
        """Put ``payload`` in a new envelope."""
        return cls(
            event_id=event_id or new_event_id(),
            type=payload.event_type,
            schema_version=payload.schema_version,
            occurred_at=occurred_at or utcnow(),
            correlation_id=correlation_id,
            causation_id=causation_id,
            producer=producer,
            data=payload.model_dump(mode="json"),
        )

    def to_json(self) -> bytes:
        """The Kafka record value."""
        return self.model_dump_json().encode()

    @classmethod
    def from_json(cls, raw: bytes | str) -> Envelope:
        """Parse a Kafka record value; raises ``pydantic.ValidationError`` on a malformed one."""
        return cls.model_validate_json(raw)

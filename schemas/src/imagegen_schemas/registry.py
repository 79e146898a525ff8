"""Type registry: (event type, schema version) -> payload model, plus upcasters.

A consumer calls :func:`parse` on an envelope and gets the newest model of that type: payloads
written with an older version go through the registered upcasters first.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .catalog import TOPICS
from .envelope import Envelope, Payload

Upcaster = Callable[[dict[str, Any]], dict[str, Any]]

MODELS: dict[str, type[Payload]] = {}
for _spec in TOPICS:
    for _model in _spec.events:
        MODELS[_model.event_type] = _model

# (event type, from version) -> function turning a payload dict of that version into the next one.
UPCASTERS: dict[tuple[str, int], Upcaster] = {}


class UnknownEventType(ValueError):
    """The envelope names a type (or a version newer than this code) we do not know."""


def upcast(event_type: str, version: int, data: dict[str, Any]) -> dict[str, Any]:
    """Bring ``data`` from ``version`` up to the current version of ``event_type``."""
    model = MODELS[event_type]
    while version < model.schema_version:
        data = UPCASTERS[(event_type, version)](data)
        version += 1
    return data


def parse(envelope: Envelope) -> Payload:
    """The typed payload of an envelope (validated; raises on a malformed payload)."""
    model = MODELS.get(envelope.type)
    if model is None:
        raise UnknownEventType(f"unknown event type {envelope.type!r}")
    if envelope.schema_version > model.schema_version:
        raise UnknownEventType(
            f"{envelope.type} v{envelope.schema_version} is newer than this code "
            f"(v{model.schema_version}); upgrade the consumer"
        )
    data = upcast(envelope.type, envelope.schema_version, dict(envelope.data))
    return model.model_validate(data)

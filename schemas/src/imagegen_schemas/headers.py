"""CloudEvents-style Kafka headers (binary-mode attribute names) plus W3C trace context.

Every record carries ``ce_id``, ``ce_type``, ``ce_source``, ``ce_specversion``, ``ce_time``,
``ce_subject`` (the aggregate id), ``content-type`` and, when a trace is active, ``traceparent``.
The value stays the full JSON envelope, so both header routing and value parsing work.
"""

from __future__ import annotations

from .envelope import Envelope

SPEC_VERSION = "1.0"


def ce_headers(envelope: Envelope, traceparent: str | None = None) -> list[tuple[str, bytes]]:
    """Headers for one record, in a stable order."""
    headers = [
        ("ce_specversion", SPEC_VERSION),
        ("ce_id", envelope.event_id),
        ("ce_type", envelope.type),
        ("ce_source", f"/imagegen/{envelope.producer}"),
        ("ce_time", envelope.occurred_at.isoformat()),
        ("ce_subject", envelope.correlation_id),
        ("ce_dataschema", f"imagegen:{envelope.type}:v{envelope.schema_version}"),
        ("content-type", "application/json"),
    ]
    if traceparent:
        headers.append(("traceparent", traceparent))
    return [(k, v.encode()) for k, v in headers]


def header_map(headers: list[tuple[str, bytes | None]] | None) -> dict[str, str]:
    """Kafka headers as a dict of text (last value wins)."""
    return {k: (v or b"").decode(errors="replace") for k, v in (headers or [])}

"""Prometheus metrics shared by every service (one default registry per process)."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

EVENTS_PUBLISHED = Counter(
    "imagegen_events_published_total", "Events acknowledged by the broker.", ["topic", "type"]
)
EVENTS_CONSUMED = Counter(
    "imagegen_events_consumed_total", "Records handled and committed.", ["topic", "group"]
)
DEAD_LETTERED = Counter(
    "imagegen_events_dead_lettered_total",
    "Records sent to the dead-letter topic.",
    ["topic", "group"],
)
HANDLER_SECONDS = Histogram(
    "imagegen_handler_seconds", "Time to handle one record, effect included.", ["topic", "group"]
)
DLQ_REDRIVEN = Counter(
    "imagegen_dlq_redriven_total",
    "Dead letters republished to their source topic (imagegen_runtime.dlq.redrive), by topic.",
    ["topic"],
)

"""Prometheus metrics of the safety service (the process's default registry, /metrics)."""

from __future__ import annotations

from prometheus_client import Histogram

# One observation per check: kind="prompt" (one prompt) or kind="image" (one job's images, read
# from storage and classified). The safety check sits on every job's critical path twice.
CHECK_SECONDS = Histogram(
    "imagegen_safety_check_seconds",
    "Time of one safety check, model inference included (image: blob reads included).",
    ["kind"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
)
for _kind in ("prompt", "image"):  # both kinds exported from the start, at zero
    CHECK_SECONDS.labels(_kind)

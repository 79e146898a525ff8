"""Prometheus metrics of the delivery service (the process's default registry, /metrics)."""

from __future__ import annotations

from prometheus_client import Histogram

# One observation per image stored for delivery: the copy of its bytes from the worker's blob
# into the delivery store (a local folder, or an S3 bucket: then an upload), sha256 checked.
UPLOAD_SECONDS = Histogram(
    "imagegen_delivery_upload_seconds",
    "Time to store (upload) one image's bytes in the delivery store, digest check included.",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0),
)

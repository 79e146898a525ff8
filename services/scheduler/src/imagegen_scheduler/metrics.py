"""Prometheus metrics of the scheduler service (the process's default registry, /metrics).

Both are set only once the scheduler is live (caught up with the log): a replay decides
nothing, so it observes no waits.
"""

from __future__ import annotations

from prometheus_client import Gauge, Histogram

TIERS = ("turbo", "fast", "relax")

# Jobs queued now, per tier; set at every decision round (each consumed batch and every 0.5 s).
QUEUE_DEPTH = Gauge("imagegen_queue_depth", "Jobs queued now (not running), per tier.", ["tier"])
# One observation per assignment: the time the job spent queued before this assignment, all its
# stays in the queue added up (a retried or paused job waits again). The tiers' wait targets are
# 15 s, 60 s and 300 s (docs/scheduling.md); the buckets reach 2 h, the relax queue deadline.
QUEUE_WAIT_SECONDS = Histogram(
    "imagegen_queue_wait_seconds",
    "Time a job waited in its tier's queue before it was assigned to a worker.",
    ["tier"],
    buckets=(
        0.1,
        0.5,
        1.0,
        2.5,
        5.0,
        10.0,
        15.0,
        30.0,
        60.0,
        120.0,
        300.0,
        600.0,
        1800.0,
        3600.0,
        7200.0,
    ),
)
for _tier in TIERS:  # every tier exported from the start, at zero
    QUEUE_DEPTH.labels(_tier)
    QUEUE_WAIT_SECONDS.labels(_tier)

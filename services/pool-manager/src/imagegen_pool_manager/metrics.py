"""Prometheus metrics of the pool-manager service (the process's default registry, /metrics).

The pool-manager is the one service that measures the whole cluster's backlog (ADR 0810): every
few seconds it reads the broker's watermarks and the imagegen consumer groups' committed
offsets (``service_layer/backlog.py``) and sets these gauges.
"""

from __future__ import annotations

from prometheus_client import Gauge

# Records in each dead-letter topic now: end offset - start offset, summed over its partitions.
DLQ_RECORDS = Gauge(
    "imagegen_dlq_records",
    "Records in a dead-letter topic now (end - start offset over its partitions).",
    ["topic"],
)
# Per consumer group and topic: high watermark - committed offset, summed over the partitions
# the group has committed on. Groups that never commit (the replaying consumers of the
# scheduler and the pool-manager, which read from offset 0 at every start) have no series.
CONSUMER_LAG = Gauge(
    "imagegen_consumer_lag",
    "Records a consumer group has not committed yet (high watermark - committed offset).",
    ["group", "topic"],
)

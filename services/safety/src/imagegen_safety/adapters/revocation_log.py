"""The revocation log on Kafka: reads one partition's ``AssignmentRevoked`` records by offset.

A consumer with no group membership (``assign``, never ``subscribe``; nothing committed) reads
the range and looks at each record's ``ce_type`` header, so only revocations are parsed. It is
made per read: reads happen when a process first meets a partition, not per record.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Sequence

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

from imagegen_runtime.kafka import decode, record_meta
from imagegen_schemas.jobs import AssignmentRevoked


class KafkaRevocationLog:
    """``RevocationLog`` over the real broker (see the port in ``service_layer.revocations``)."""

    def __init__(self, bootstrap: str, timeout_s: float = 30.0) -> None:
        self.bootstrap = bootstrap
        self.timeout_s = timeout_s  # a read that makes no progress this long is a broker fault

    async def read(
        self, topic: str, partition: int, start: int, end: int
    ) -> Sequence[tuple[int, AssignmentRevoked]]:
        return await asyncio.to_thread(self._read, topic, partition, start, end)

    def _read(
        self, topic: str, partition: int, start: int, end: int
    ) -> list[tuple[int, AssignmentRevoked]]:
        consumer = Consumer(
            {
                "bootstrap.servers": self.bootstrap,
                "group.id": f"imagegen-safety-revocations-{uuid.uuid4().hex[:8]}",  # never joined
                "enable.auto.commit": False,
                "isolation.level": "read_committed",
                "enable.partition.eof": True,
            }
        )
        try:
            low, high = consumer.get_watermark_offsets(
                TopicPartition(topic, partition), timeout=self.timeout_s
            )
            begin, stop = max(start, low), min(end, high)
            found: list[tuple[int, AssignmentRevoked]] = []
            if begin >= stop:
                return found
            consumer.assign([TopicPartition(topic, partition, begin)])
            deadline = time.monotonic() + self.timeout_s
            while True:
                msg = consumer.poll(0.5)
                if msg is None:
                    if time.monotonic() > deadline:
                        raise TimeoutError(
                            f"reading revocations of {topic}[{partition}] {begin}..{stop}"
                        )
                    continue
                error = msg.error()
                if error is not None:
                    if error.code() == KafkaError._PARTITION_EOF:
                        return found
                    raise KafkaException(error)
                meta = record_meta(msg)
                offset = meta.offset
                if offset >= stop:
                    return found
                deadline = time.monotonic() + self.timeout_s
                if meta.headers.get("ce_type") == AssignmentRevoked.event_type:
                    try:
                        _, payload = decode(msg)
                    except Exception:  # noqa: BLE001 - poison: the consumer dead-letters it
                        payload = None
                    if isinstance(payload, AssignmentRevoked):
                        found.append((offset, payload))
                if offset + 1 >= stop:
                    return found
        finally:
            consumer.close()

"""The pool-manager's backlog reader against the real broker: dead-letter size and group lag."""

from __future__ import annotations

import time
import uuid

import pytest
from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition

from imagegen_pool_manager.adapters.backlog import Backlog, KafkaBacklog
from imagegen_pool_manager.config import DEAD_LETTER_TOPICS
from imagegen_runtime.kafka import ensure_topics

pytestmark = pytest.mark.integration


def read(reader: KafkaBacklog, timeout_s: float = 30.0) -> Backlog:
    """A reading, once the broker answers for every partition: fresh topics have no leader
    for a moment (NOT_LEADER_FOR_PARTITION), which the collector rides out the same way."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return reader.read()
        except KafkaException:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)  # before asking the broker again


def produce(bootstrap: str, topic: str, n: int, partition: int = 0) -> None:
    producer = Producer({"bootstrap.servers": bootstrap})
    for i in range(n):
        producer.produce(topic, key=f"k{i}", value=b"x", partition=partition)
    assert producer.flush(10) == 0


def commit(bootstrap: str, group: str, topic: str, offset: int) -> None:
    """Commit ``offset`` on partition 0 of ``topic`` for ``group`` (no member stays behind)."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group})
    try:
        consumer.commit(offsets=[TopicPartition(topic, 0, offset)], asynchronous=False)
    finally:
        consumer.close()


def test_dead_letters_and_lag_are_read_from_the_broker(infra) -> None:  # type: ignore[no-untyped-def]
    # Topics of its own: the records below are not envelopes, and the session's topics are read
    # whole by other tests (every record there must parse).
    bootstrap, prefix = infra.kafka_bootstrap, f"backlog{uuid.uuid4().hex[:6]}."
    ensure_topics(bootstrap, prefix)
    reader = KafkaBacklog(bootstrap, prefix, DEAD_LETTER_TOPICS)
    before = read(reader)
    dlq = prefix + "imagegen.deadletter"
    assert set(before.dead_letters) == {prefix + t for t in DEAD_LETTER_TOPICS}

    produce(bootstrap, dlq, 3, partition=1)
    topic = prefix + "imagegen.pool.signals"
    produce(bootstrap, topic, 5)
    group = f"{prefix}imagegen-backlog-test-{uuid.uuid4().hex[:6]}"
    commit(bootstrap, group, topic, 2)
    other = f"{prefix}someone-else-{uuid.uuid4().hex[:6]}"  # not the platform's: not read
    commit(bootstrap, other, topic, 1)

    after = read(reader)
    assert after.dead_letters[dlq] == before.dead_letters[dlq] + 3
    assert after.lag[(group, topic)] == 3  # high watermark 5 - committed 2
    assert not any(g == other for g, _ in after.lag)


def test_a_missing_dead_letter_topic_counts_zero(infra) -> None:  # type: ignore[no-untyped-def]
    reader = KafkaBacklog(infra.kafka_bootstrap, f"absent{uuid.uuid4().hex[:6]}.", ("nothing",))
    assert read(reader).dead_letters == {next(iter(reader.dead_letter_topics)): 0}

"""Reads the cluster's backlog from the broker: dead-letter topic sizes and consumer lag.

One :class:`KafkaBacklog` holds one ``AdminClient``; :meth:`KafkaBacklog.read` is blocking
(run it in a thread) and answers a :class:`Backlog`:

- a dead-letter topic's size: its end offset - start offset, summed over its partitions (the
  records it holds now; retention or a delete moves the start);
- a group's lag on a topic: the topic's high watermark - the group's committed offset, summed over
  the partitions the group committed on (``list_consumer_group_offsets``; one group per call, a
  librdkafka limit).

Only the groups named ``<prefix>imagegen...`` are read: the platform's own, not those of other
tenants of the broker (nor the integration tests', whose prefixes differ).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from confluent_kafka import ConsumerGroupTopicPartitions, TopicPartition
from confluent_kafka.admin import AdminClient, OffsetSpec  # type: ignore[attr-defined]

TIMEOUT_S = 5.0
LATEST = OffsetSpec.latest()  # type: ignore[no-untyped-call]  # the high watermark
EARLIEST = OffsetSpec.earliest()  # type: ignore[no-untyped-call]  # the log start


@dataclass(frozen=True)
class Backlog:
    """One reading of the cluster's backlog."""

    # dead-letter topic (as named on the broker) -> records in it now
    dead_letters: dict[str, int] = field(default_factory=dict)
    # (consumer group, topic) -> records the group has not committed on that topic
    lag: dict[tuple[str, str], int] = field(default_factory=dict)


class KafkaBacklog:
    def __init__(self, bootstrap: str, prefix: str, dead_letter_topics: Iterable[str]) -> None:
        self.admin = AdminClient({"bootstrap.servers": bootstrap})
        self.prefix = prefix
        self.dead_letter_topics = tuple(prefix + t for t in dead_letter_topics)

    def groups(self) -> list[str]:
        """The platform's consumer groups (see the module docstring), sorted."""
        listed = self.admin.list_consumer_groups(request_timeout=TIMEOUT_S).result()
        mine = self.prefix + "imagegen"
        return sorted(g.group_id for g in listed.valid if g.group_id.startswith(mine))

    def committed(self, group: str) -> list[TopicPartition]:
        """``group``'s committed offsets (partitions without a commit left out)."""
        request = [ConsumerGroupTopicPartitions(group)]
        futures = self.admin.list_consumer_group_offsets(request, request_timeout=TIMEOUT_S)
        result = futures[group].result()
        return [tp for tp in result.topic_partitions or () if tp.offset >= 0 and not tp.error]

    def offsets(
        self, partitions: Iterable[TopicPartition], spec: OffsetSpec
    ) -> dict[tuple[str, int], int]:
        """(topic, partition) -> the offset ``spec`` names (latest: the high watermark)."""
        request = {TopicPartition(tp.topic, tp.partition): spec for tp in partitions}
        if not request:
            return {}
        futures = self.admin.list_offsets(request, request_timeout=TIMEOUT_S)
        return {(tp.topic, tp.partition): int(f.result().offset) for tp, f in futures.items()}

    def partitions(self, topic: str) -> list[TopicPartition]:
        """``topic``'s partitions; none when the topic does not exist (yet)."""
        meta = self.admin.list_topics(topic, timeout=TIMEOUT_S).topics.get(topic)
        if meta is None or meta.error is not None:
            return []
        return [TopicPartition(topic, p) for p in meta.partitions]

    def read(self) -> Backlog:
        dlq: dict[str, int] = {}
        for topic in self.dead_letter_topics:
            parts = self.partitions(topic)
            end = self.offsets(parts, LATEST)
            start = self.offsets(parts, EARLIEST)
            dlq[topic] = sum(max(0, end[k] - start[k]) for k in end)
        lag: dict[tuple[str, str], int] = {}
        for group in self.groups():
            committed = self.committed(group)
            high = self.offsets(committed, LATEST)
            for tp in committed:
                behind = max(0, high[(tp.topic, tp.partition)] - tp.offset)
                lag[(group, tp.topic)] = lag.get((group, tp.topic), 0) + behind
        return Backlog(dead_letters=dlq, lag=lag)

"""A service always finishes stopping, and a decider's start rides out a broker in motion.

Regressions from the chaos soak (issue 10): the scheduler started while the broker was moving
partition leaders after a restart; ``ReplayingConsumer.run`` raised ``NOT_LEADER_FOR_PARTITION``
from ``get_watermark_offsets`` (the service began to stop), and its decision loop, waiting for
the consumer to catch up, never saw the stop: the process hung after "Finished server process"
for good, the supervisor never restarted it, and every queued job waited forever.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException, TopicPartition
from fastapi import FastAPI

from imagegen_runtime.faults import Backoff
from imagegen_runtime.health import Readiness
from imagegen_runtime.kafka import ReplayingConsumer
from imagegen_runtime.publishing import InMemoryPublisher
from imagegen_runtime.service import ServiceApp, serve
from imagegen_runtime.waiting import wait_or_stop

pytestmark = pytest.mark.unit


async def test_wait_or_stop_returns_on_stop_when_the_event_never_comes() -> None:
    never, stop = asyncio.Event(), asyncio.Event()
    asyncio.get_running_loop().call_later(0.01, stop.set)
    assert await asyncio.wait_for(wait_or_stop(never, stop), 5) is False
    ready = asyncio.Event()
    ready.set()
    assert await wait_or_stop(ready, asyncio.Event()) is True


async def test_a_service_whose_consumer_crashed_before_catching_up_exits_with_1() -> None:
    """Failed before the fix: serve() never returned (the decision loop ignored stop)."""
    caught_up = asyncio.Event()

    async def consumer(stop: asyncio.Event) -> None:
        raise KafkaException(KafkaError(KafkaError.NOT_LEADER_FOR_PARTITION))

    async def decide(stop: asyncio.Event) -> None:
        if not await wait_or_stop(caught_up, stop):
            return

    app = ServiceApp("scheduler", FastAPI(), Readiness(), tasks=[consumer, decide])
    assert await asyncio.wait_for(serve(app, "127.0.0.1", 0), 30) == 1


async def test_a_task_that_ignores_stop_is_cancelled_after_the_grace_period() -> None:
    cancelled = asyncio.Event()

    async def crash(stop: asyncio.Event) -> None:
        raise RuntimeError("boom")

    async def deaf(stop: asyncio.Event) -> None:
        try:
            await asyncio.Event().wait()  # never looks at stop
        except asyncio.CancelledError:
            cancelled.set()
            raise

    app = ServiceApp("x", FastAPI(), Readiness(), tasks=[crash, deaf])
    assert await asyncio.wait_for(serve(app, "127.0.0.1", 0, stop_grace_s=0.2), 30) == 1
    assert cancelled.is_set()


class _Topics:
    def __init__(self, names: list[str]) -> None:
        self.topics = {n: type("T", (), {"partitions": {0: None}})() for n in names}


class LeaderMovingConsumer:
    """A confluent consumer whose broker is still moving partition leaders for a while."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.assigned: list[TopicPartition] = []
        self.closed = False

    def list_topics(self, timeout: float) -> _Topics:
        return _Topics(["imagegen.jobs.requested"])

    def get_watermark_offsets(self, tp: TopicPartition, timeout: float) -> tuple[int, int]:
        if self.failures > 0:
            self.failures -= 1
            raise KafkaException(KafkaError(KafkaError.NOT_LEADER_FOR_PARTITION))
        return 0, 0

    def assign(self, parts: list[TopicPartition]) -> None:
        self.assigned = parts

    def poll(self, timeout: float) -> None:
        return None

    def close(self) -> None:
        self.closed = True


def replaying(client: Any) -> ReplayingConsumer:
    async def handle(*args: Any) -> None:
        pass

    return ReplayingConsumer(
        "unused:9092",
        ["imagegen.jobs.requested"],
        handle,
        InMemoryPublisher(),
        "g",
        backoff=Backoff(initial_s=0.001, cap_s=0.01),
        client=client,
    )


async def test_replaying_consumer_waits_out_a_leader_move_at_start() -> None:
    """Failed before the fix: run() raised NOT_LEADER_FOR_PARTITION at once."""
    client = LeaderMovingConsumer(failures=3)
    consumer = replaying(client)
    stop = asyncio.Event()
    task = asyncio.create_task(consumer.run(stop))
    await asyncio.wait_for(consumer.caught_up.wait(), 10)
    assert consumer.health().ok and client.assigned
    stop.set()
    await asyncio.wait_for(task, 10)
    assert client.closed and client.failures == 0


async def test_replaying_consumer_stopped_during_the_wait_closes_and_returns() -> None:
    client = LeaderMovingConsumer(failures=10**9)
    consumer = replaying(client)
    stop = asyncio.Event()
    task = asyncio.create_task(consumer.run(stop))
    while "NOT_LEADER" not in consumer.health().reason:
        await asyncio.sleep(0.001)
    stop.set()
    await asyncio.wait_for(task, 10)
    assert client.closed and not consumer.caught_up.is_set()

"""`imagegen replay`'s reader gives up on a silent broker, not on a slow caller."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest

from imagegen import replay
from imagegen_schemas import Envelope
from imagegen_schemas.jobs import CancellationRequested

pytestmark = pytest.mark.unit


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Msg:
    offset_: int
    value_: bytes

    def error(self) -> None:
        return None

    def topic(self) -> str:
        return "imagegen.jobs.requested"

    def partition(self) -> int:
        return 0

    def offset(self) -> int:
        return self.offset_

    def value(self) -> bytes:
        return self.value_


def fake_consumer(messages: list[Msg], clock: Clock) -> type:
    class FakeConsumer:
        def __init__(self, conf: dict[str, Any]) -> None:
            self.queue = list(messages)

        def assign(self, tps: list[Any]) -> None:
            pass

        def poll(self, timeout: float) -> Msg | None:
            if self.queue:
                return self.queue.pop(0)
            clock.now += timeout  # a silent broker: poll waits its timeout
            return None

        def incremental_unassign(self, tps: list[Any]) -> None:
            pass

        def close(self) -> None:
            pass

    return FakeConsumer


def record(i: int) -> bytes:
    payload = CancellationRequested(job_id=f"j{i}", requested_by="u")
    return Envelope.wrap(payload, correlation_id=f"j{i}", producer="t").to_json()


def test_a_caller_that_takes_long_per_record_still_reads_to_the_end(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    # Before: the 120 s deadline counted the caller's time too, and a rebuild of a few
    # thousand records on a busy machine (the chaos soak's) ended in TimeoutError.
    clock = Clock()
    monkeypatch.setattr(replay.time, "monotonic", clock)
    monkeypatch.setattr(
        replay, "Consumer", fake_consumer([Msg(i, record(i)) for i in range(3)], clock)
    )
    seen = []
    for r in replay.read("x", {("imagegen.jobs.requested", 0): 3}):
        seen.append(r.offset)
        clock.now += 100  # the caller writes the record to PostgreSQL, slowly
    assert seen == [0, 1, 2]


def test_a_silent_broker_still_times_out(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    clock = Clock()
    monkeypatch.setattr(replay.time, "monotonic", clock)
    monkeypatch.setattr(replay, "Consumer", fake_consumer([Msg(0, record(0))], clock))
    with pytest.raises(TimeoutError):
        list(replay.read("x", {("imagegen.jobs.requested", 0): 2}))

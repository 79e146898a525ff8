"""With real Kafka: the pool-manager releases a second worker's pin with an ``EvictModel`` and
asks a worker with fragmented memory for a ``DefragmentMemory``, each once; a pool-manager
restarted on the same log asks for neither again (ADR 0714, issue 13).

The test acts as the two workers: it publishes their heartbeats and the eviction's answer.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable

import pytest

from imagegen.replay import high_watermarks, read
from imagegen_pool_manager.config import SUBSCRIBES
from imagegen_pool_manager.domain.policy import ModelInfo
from imagegen_pool_manager.service_layer.planner import Planner, PlannerConfig
from imagegen_pool_manager.service_layer.pool import PoolManager
from imagegen_runtime.kafka import KafkaPublisher, ReplayingConsumer
from imagegen_schemas import Envelope, Payload, parse
from imagegen_schemas.workers import (
    DefragmentMemory,
    EvictModel,
    LoadedModel,
    LoadModel,
    ModelLoaded,
    WorkerHeartbeat,
    WorkerStatus,
)

from .test_scheduler_preemption import topics_ready

pytestmark = pytest.mark.integration
MB = 1 << 20
MODELS = {"demo": ModelInfo("demo", "sd15", 14 * MB, tier=1)}  # tier 1: pinned on one worker
TIMEOUT_S = 60.0


def beat(wid: str, *, pinned: bool, fragmentation: float, status: WorkerStatus) -> WorkerHeartbeat:
    return WorkerHeartbeat(
        worker_id=wid,
        status=status,
        gpu_type="cpu",
        memory_total_bytes=512 * MB,
        memory_free_bytes=256 * MB,
        fragmentation_ratio=fragmentation,
        loaded=(LoadedModel(model_id="demo", bytes=14 * MB),),
        pinned=("demo",) if pinned else (),
        capabilities=("sd15",),
        interval_s=2.0,
    )


class Commands:
    """Every pool command on the log, with a wait for a condition on them."""

    def __init__(self) -> None:
        self.seen: list[tuple[Envelope, Payload]] = []
        self.changed = asyncio.Event()

    async def on(self, env: Envelope, payload: Payload, meta: object, live: bool) -> None:
        if isinstance(payload, LoadModel | EvictModel | DefragmentMemory):
            self.seen.append((env, payload))
            self.changed.set()

    async def until(self, done: Callable[[], bool]) -> None:
        deadline = time.monotonic() + TIMEOUT_S
        while not done():
            self.changed.clear()
            await asyncio.wait_for(self.changed.wait(), max(0.01, deadline - time.monotonic()))

    def of(self, kind: type[Payload]) -> list[tuple[Envelope, Payload]]:
        return [(e, p) for e, p in self.seen if isinstance(p, kind)]


class RunningPoolManager:
    """The pool-manager's fold, sweeps and planning rounds, on its own topics."""

    def __init__(self, bootstrap: str, prefix: str, pub: KafkaPublisher) -> None:
        self.pool = PoolManager(pub, timeout_s=600)
        self.planner = Planner(
            pub, self.pool.fleet, self.pool.demand, MODELS, PlannerConfig(plan_every_s=0.2)
        )
        self.rounds = 0
        self.planned = asyncio.Event()
        run_once = self.planner.run_once

        async def counted(now: float) -> int:
            sent = await run_once(now)
            self.rounds += 1
            self.planned.set()
            return sent

        self.planner.run_once = counted  # type: ignore[method-assign]
        self.consumer = ReplayingConsumer(
            bootstrap,
            [prefix + t for t in SUBSCRIBES],
            self.pool.on_event,
            pub,
            f"{prefix}pool-manager-{uuid.uuid4().hex[:6]}",
        )
        self.stop = asyncio.Event()
        self.tasks = [
            asyncio.create_task(self.consumer.run(self.stop)),
            asyncio.create_task(
                self.pool.sweep_loop(
                    self.consumer.caught_up, self.stop, every_s=0.1, planner=self.planner
                )
            ),
        ]

    async def rounds_after(self, n: int) -> None:
        """Wait for ``n`` more planning rounds."""
        target = self.rounds + n
        deadline = time.monotonic() + TIMEOUT_S
        while self.rounds < target:
            self.planned.clear()
            await asyncio.wait_for(self.planned.wait(), max(0.01, deadline - time.monotonic()))

    async def halt(self) -> None:
        self.stop.set()
        await asyncio.gather(*self.tasks)


async def test_a_surplus_pin_and_fragmented_memory_are_each_handled_once_across_a_restart(
    infra,  # type: ignore[no-untyped-def]
) -> None:
    prefix = f"u{uuid.uuid4().hex[:8]}."  # topics of its own: no other test's workers
    topics_ready(infra.kafka_bootstrap, prefix)
    pub = KafkaPublisher(infra.kafka_bootstrap, "pool-upkeep-test", prefix)
    commands = Commands()
    watch_stop = asyncio.Event()
    watcher = ReplayingConsumer(
        infra.kafka_bootstrap,
        [prefix + "imagegen.pool.commands"],
        commands.on,
        pub,
        f"{prefix}watch",
    )
    watching = asyncio.create_task(watcher.run(watch_stop))
    # w1 pins the tier-1 model and its memory is fragmented; w2 came back pinning it too
    await pub.publish(
        beat("w1", pinned=True, fragmentation=0.5, status=WorkerStatus.IDLE), key="w1"
    )
    await pub.publish(
        beat("w2", pinned=True, fragmentation=0.0, status=WorkerStatus.BUSY), key="w2"
    )
    first = RunningPoolManager(infra.kafka_bootstrap, prefix, pub)
    try:
        await commands.until(
            lambda: bool(commands.of(EvictModel)) and bool(commands.of(DefragmentMemory))
        )
        [(evict_env, evict)] = commands.of(EvictModel)
        assert isinstance(evict, EvictModel)
        assert (evict.worker_id, evict.model_id, evict.reason) == ("w2", "demo", "unpin")
        assert evict.keep_resident  # only the pin goes: w2 keeps the warm model
        [(_, defrag)] = commands.of(DefragmentMemory)
        assert isinstance(defrag, DefragmentMemory) and defrag.worker_id == "w1"
        assert commands.of(LoadModel) == []  # w1's pin is in its heartbeat: nothing to load
        # w2 answers (the model stays resident); its next heartbeat, built before it dropped
        # the pin, still lists it
        answer = ModelLoaded(
            worker_id="w2",
            model=LoadedModel(model_id="demo", bytes=14 * MB),
            load_ms=0,
            source="resident",
            command_id=evict_env.event_id,
        )
        await pub.publish(answer, key="w2")
        await pub.publish(
            beat("w2", pinned=True, fragmentation=0.0, status=WorkerStatus.BUSY), key="w2"
        )
        await first.rounds_after(3)
    finally:
        await first.halt()
    restarted = RunningPoolManager(infra.kafka_bootstrap, prefix, pub)
    try:
        await restarted.rounds_after(3)
    finally:
        await restarted.halt()
        watch_stop.set()
        await watching
        await pub.close()
    # every command on the log (each publish was acknowledged before its round ended)
    topic = prefix + "imagegen.pool.commands"
    logged = [
        parse(r.envelope)
        for r in read(infra.kafka_bootstrap, high_watermarks(infra.kafka_bootstrap, (topic,)))
    ]
    assert [(type(p).__name__, getattr(p, "worker_id", "")) for p in logged] == [
        ("EvictModel", "w2"),
        ("DefragmentMemory", "w1"),
    ]

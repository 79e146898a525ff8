"""Scheduler throughput through the real broker: consume requests, emit assignments.

    python -m bench scheduler --jobs 5000

The scheduler service layer (same code as the service) runs in this process on its own topic
prefix, live, with a fleet of heartbeating workers. A producer in a subprocess writes
GenerationRequested + allowed PromptModerated for N jobs as fast as it can. Throughput =
N / (last JobScheduled time - first GenerationRequested time), from event timestamps.
Baseline, same process: the pure policy alone (fold + decide in batches of 500, no Kafka).
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
N_WORKERS = 200

PRODUCER = r"""
import asyncio, sys
from imagegen_runtime.kafka import KafkaPublisher
from imagegen_schemas import GenerationParams, Plan, Tier
from imagegen_schemas.jobs import GenerationRequested, PromptModerated
boot, prefix, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
P = GenerationParams(prompt="p", model="bench-model", width=64, height=64, steps=1,
                     guidance_scale=5, seed=1)
tiers = [Tier.TURBO, Tier.FAST, Tier.RELAX]
async def main():
    pub = KafkaPublisher(boot, "bench-producer", prefix, **{"linger.ms": 5})
    for start in range(0, n, 1000):
        futs = []
        for i in range(start, min(n, start + 1000)):
            j = f"job-{i}"
            t = tiers[i % 3]
            futs.append(pub.publish(GenerationRequested(job_id=j, user_id=f"u{i % 50}",
                        plan=Plan.PRO, tier=t, params=P), key=j))
            futs.append(pub.publish(PromptModerated(job_id=j, verdict="allowed"), key=j))
        await asyncio.gather(*futs)
    await pub.close()
asyncio.run(main())
"""


def catalog():  # type: ignore[no-untyped-def]
    from imagegen_scheduler.domain import ModelCatalog, ModelSpec

    return ModelCatalog(
        models={"bench-model": ModelSpec("bench-model", "sd15", 2.0, (1, 2), 0.01, 0.05)},
        adapters={},
    )


def baseline(n: int) -> float:
    """Jobs/s of the pure policy on the same workload (fold + decide in batches of 500)."""
    from imagegen_scheduler.domain import (
        JobFinished,
        JobQueued,
        JobRequest,
        SchedulerConfig,
        SchedulerState,
        Tier,
        WorkerUpdated,
        WorkerView,
        as_event,
        decide,
        evolve,
    )

    state = SchedulerState(SchedulerConfig(preemption=False), catalog())
    for w in range(N_WORKERS):
        evolve(
            state, WorkerUpdated(WorkerView(f"w{w}", "cpu", 16.0, 1.0, frozenset({"sd15"})), 0.0)
        )
    tiers = [Tier.TURBO, Tier.FAST, Tier.RELAX]
    t0 = time.perf_counter()
    done = 0
    for start in range(0, n, 500):
        for i in range(start, min(n, start + 500)):
            evolve(
                state,
                JobQueued(
                    JobRequest(
                        f"job-{i}", f"u{i % 50}", tiers[i % 3], "bench-model", (), 64, 64, 1, 1, 0.0
                    ),
                    0.0,
                ),
            )
        while state.queued:
            for d in decide(state, 1.0):
                evolve(state, as_event(d, 1.0))
                done += 1
            for job_id, r in list(state.running.items()):  # workers finish at once
                evolve(state, JobFinished(job_id, r.worker_id, r.fencing_token, 1.0))
    return done / (time.perf_counter() - t0)


async def through_kafka(bootstrap: str, n: int) -> tuple[float, int]:
    from imagegen_runtime.kafka import KafkaPublisher, ReplayingConsumer, ensure_topics
    from imagegen_scheduler.service_layer.scheduling import Scheduler
    from imagegen_schemas import Envelope, Payload
    from imagegen_schemas import jobs as ev
    from imagegen_schemas.workers import WorkerHeartbeat, WorkerStatus

    prefix = f"bench{uuid.uuid4().hex[:6]}."
    ensure_topics(bootstrap, prefix)
    pub = KafkaPublisher(bootstrap, "bench-scheduler", prefix)
    await asyncio.gather(
        *(
            pub.publish(
                WorkerHeartbeat(
                    worker_id=f"w{w}",
                    status=WorkerStatus.IDLE,
                    gpu_type="cpu",
                    memory_total_bytes=20 * 10**9,
                    memory_free_bytes=20 * 10**9,
                    capabilities=("sd15",),
                ),
                key=f"w{w}",
            )
            for w in range(N_WORKERS)
        )
    )
    scheduler = Scheduler(pub, catalog())
    first_request: list[float] = []
    assigned: list[float] = []

    async def on_event(env: Envelope, payload: Payload, meta: object, live: bool) -> None:
        if isinstance(payload, ev.GenerationRequested) and not first_request:
            first_request.append(env.occurred_at.timestamp())
        if isinstance(payload, ev.JobScheduled):
            assigned.append(time.time())
            # the worker finishes at once: frees it for the next job (like a 0 s generation)
            done = ev.ImageGenerated(
                job_id=payload.job_id,
                worker_id=payload.worker_id,
                fencing_token=payload.fencing_token,
                images=(),
            )
            await scheduler.on_event(
                Envelope.wrap(done, correlation_id=payload.job_id, producer="bench"),
                done,
                None,
                True,
            )
            return
        await scheduler.on_event(env, payload, None, live)

    topics = [
        prefix + t
        for t in (
            "imagegen.jobs.requested",
            "imagegen.jobs.moderated",
            "imagegen.jobs.scheduled",
            "imagegen.workers.heartbeats",
        )
    ]
    consumer = ReplayingConsumer(
        bootstrap, topics, on_event, pub, f"{prefix}bench", after_batch=scheduler.after_batch
    )
    stop = asyncio.Event()
    run = asyncio.create_task(consumer.run(stop))
    ticks = asyncio.create_task(scheduler.tick_loop(consumer.caught_up, stop))
    while not scheduler.live:
        await asyncio.sleep(0.05)  # until the scheduler replayed the heartbeats
    producer = await asyncio.create_subprocess_exec(
        sys.executable, "-c", PRODUCER, bootstrap, prefix, str(n)
    )
    deadline = time.monotonic() + 300
    while len(assigned) < n and time.monotonic() < deadline:
        await asyncio.sleep(0.1)  # poll for the N-th assignment read back from the topic
    await producer.wait()
    stop.set()
    await asyncio.gather(run, ticks)
    await pub.close()
    return n / (max(assigned) - first_request[0]), len(assigned)


def main(argv: list[str]) -> int:
    import argparse
    import json

    parser = argparse.ArgumentParser(prog="python -m bench scheduler")
    parser.add_argument("--jobs", type=int, default=5000)
    args = parser.parse_args(argv)
    subprocess.run(
        [sys.executable, str(ROOT / "deploy/stack.py"), "infra-up"],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    env = dict(
        line.split("=", 1)
        for line in (ROOT / "var/stack.env").read_text().splitlines()
        if "=" in line
    )
    base = baseline(args.jobs)
    rate, got = asyncio.run(through_kafka(env["IMAGEGEN_KAFKA_BOOTSTRAP"], args.jobs))
    print(
        json.dumps(
            {
                "jobs": args.jobs,
                "assigned": got,
                "workers": N_WORKERS,
                "through_kafka_jobs_per_s": round(rate),
                "policy_only_jobs_per_s": round(base),
                "ratio_kafka_vs_policy_only": round(rate / base, 2),
                "goal": ">= 2000 jobs/s through the broker",
            },
            indent=2,
        )
    )
    return 0

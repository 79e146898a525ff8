"""The warm pool on a real local fleet, and the simulator on the same trace (issue 13).

    python -m bench fleet [--minutes 6] [--pool ours|none] [--json] [--seed 1] [--rate 1.2]
                          [--workers 4] [--budgets-mb 2,2,3,3] [--restart-pool-manager]

1. **A fleet of its own**: ``deploy/stack.py up`` with a separate var folder
   (``var/bench-fleet``), Kafka on 29392, PostgreSQL on 25732 and the services' HTTP ports +300,
   so the shared stack and the tests' stack are never touched. ``--workers`` gpu-workers with the
   memory budgets ``--budgets-mb`` (cycled; MiB, standing for GPU classes), the pool-manager's
   warm-pool policy on (``--pool ours``) or off (``--pool none``: workers load on demand and evict
   least recently used, today's rule).
2. **Models**: the model zoo's tiny models of the four families, and a copy of each under another
   id (``tiny-sd15-b``, ...): eight base models of four families and three sizes (0.64 to
   0.87 MiB of weights), with warm-pool tiers 1 (``tiny-sd15``), 2 (the other three zoo models)
   and 3 (the copies); the zoo's LoRAs.
3. **A seed-like trace** (``--seed``): Poisson arrivals at ``--rate`` jobs/s for ``--minutes``;
   tiers turbo 15%, fast 35%, relax 50% (keys on the turbo, pro and free plans, their daily
   image quotas lifted on the bench's stack so that long runs finish); base models by
   Zipf popularity (s = 1.1) whose order changes halfway (a tier-3 copy rises to second place,
   ``SHIFTED``); a LoRA on a third of the sd15 jobs and a fifth of the sdxl ones.
4. **Real figures**, from the log once every job is terminal: a job's wait is its first
   ``JobScheduled`` minus its ``PromptModerated`` (when it became schedulable). It hit warm when
   its first assignment caused no load of its base model (no ``ModelLoaded`` with the assignment
   as causation and source disk or ram). LoRA loads are not residency events, so the real half
   judges the base model only. ``cold_loads`` counts every base-model load from disk or RAM, the
   pool's own included; ``duplicate_loads`` counts ``LoadModel`` commands for a model its worker
   already held (a pin for a held model, which loads nothing, excepted); ``pool_loads_unused``
   counts the pool's loads that no job was assigned on their worker before the model left it;
   ``pool_loads_after_settle`` the pool's loads in the window the simulated half replays, whose
   ``pool_loads`` counts its predictive and storm loads.
5. **Simulated figures**: the fleet simulator (tools/fleet-sim) on the same jobs and the same fleet
   (one GPU class per budget: jobs fit into the budget less the budget model's margin, as the
   scheduler sees it; a job makes room so that what stays beside its need fits that budget, as the
   worker's admission does, while pool loads may fill the whole memory; each job arrives when it
   became schedulable in the real run). Its catalog is read from the same ``model.json`` files and
   calibrated on this run (ADR 0713): each model's size as its worker measured it loaded, its warm
   run time per step (assignment to images stored), its load times as what its cold runs took over a
   warm run, each LoRA's disk load times; each load is a draw from those samples. The replay starts
   where the counted window does (``--settle``), each simulated worker holding the base models its
   real counterpart held then; jobs the real fleet started before are left out. It replays the
   platform's own latency measured on the run: an arrival reaches the simulated scheduler a draw of
   the real *reaction* times later (the real waits of the jobs that the simulator, reacting at once,
   starts on arrival in every draw), and a finished worker is free a draw of the real *turnarounds*
   later (images stored to the worker's next assignment, where that next job was waiting and of the
   model the worker had just run: nothing but the platform delayed it). Each figure is the median of
   ``DRAWS`` (9) simulator runs, other draws of load, run and latency times;
   ``without_platform_latency`` gives the same with the scheduler reacting at once. Its
   ``warm_hit_rate`` is the base model's too (``warm_hit_rate_all_starts_with_adapters`` counts
   LoRAs); compare its ``cold_loads`` with the real ``cold_loads_after_settle``.

It prints ``{"real": {...}, "simulated": {...}}``, each with ``warm_hit_rate``, ``cold_loads``
and p50/p95 wait per tier, plus the comparison the issue asks for (``warm_hit_diff``,
``p95_wait_ratio`` per tier, ``p95_wait_ratio_all_tiers`` over every counted job). Each real
p95 comes with ``p95_wait_s_interval90``, the central 90% of the p95s of bootstrap resamples of
its own waits (how far the p95 moves with the sample alone), and each simulated one with
``p95_wait_s_draws``, the lowest and highest over the draws; ``p95_within_real_interval90``
says per tier whether the simulated p95 lies in the real one's interval. On this
2-core machine the workers share two cores with Kafka, PostgreSQL and five services: run times
are contended, which the calibration takes in as it is. Jobs arriving in the first ``--settle``
seconds (default 90) are not counted in the warm hit rate and the waits, and loads in that
window do not calibrate: a worker process's first load and first run take 10 to 30 s here (lazy
imports, allocator, thread pools) whatever the model, a start-up cost of the process that the
simulator does not model and a long-running fleet does not pay; the simulated half starts after
it. ``cold_loads`` counts the whole real run, ``cold_loads_after_settle`` the counted window.
The run's log is kept (``var/bench-fleet/models/last-run-<pool>.pickle``): ``--reanalyse``
computes both halves from it again without a fleet.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import pickle
import random
import shutil
import signal
import statistics
import subprocess
import sys
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
TIERS = {"turbo": ("turbo", 0.15), "fast": ("pro", 0.35), "relax": ("free", 0.50)}
ZOO = ("tiny-sd15", "tiny-sdxl", "tiny-sd3", "tiny-flux")
# Popularity order before and after the shift (Zipf ranks); the tier of each model.
BEFORE = (
    "tiny-sd15",
    "tiny-sdxl",
    "tiny-sd3",
    "tiny-flux",
    "tiny-sd15-b",
    "tiny-sdxl-b",
    "tiny-flux-b",
    "tiny-sd3-b",
)
SHIFTED = "tiny-sd3-b"
AFTER = ("tiny-sd15", SHIFTED, "tiny-sdxl", "tiny-flux", "tiny-sd3", "tiny-sdxl-b", "tiny-sd15-b")
AFTER = (*AFTER, "tiny-flux-b")
TIER_OF = {m: (1 if m == "tiny-sd15" else 2 if m in ZOO else 3) for m in BEFORE}
LORAS = {"sd15": ("tiny-sd15-lora-ink", "tiny-sd15-lora-glow"), "sdxl": ("tiny-sdxl-lora-ink",)}
LORA_SHARE = {"sd15": 1 / 3, "sdxl": 1 / 5}
STEPS = 10
UNLIMITED_IMAGES = 10_000_000  # images a day per key on the bench's own stack (see fleet_stack)
DRAWS = 9  # simulator runs per comparison: other draws of load, run and latency times
USERS_PER_TIER = 3


@dataclass(frozen=True)
class Arrival:
    at: float  # seconds after the start
    tier: str  # turbo, fast, relax
    user: int  # index of the tier's user
    model: str
    loras: tuple[str, ...]
    seed: int


def family_of(model: str) -> str:
    return model.removeprefix("tiny-").removesuffix("-b")


def zipf_weights(n: int, s: float = 1.1) -> list[float]:
    return [1 / (rank + 1) ** s for rank in range(n)]


def make_trace(seed: int, minutes: float, rate: float) -> list[Arrival]:
    """Poisson arrivals with the tier mix, Zipf models (order shifted halfway) and LoRAs."""
    rng = random.Random(seed)
    end, half = minutes * 60, minutes * 30
    tiers = list(TIERS)
    tier_w = [share for _, share in TIERS.values()]
    out, t = [], 0.0
    while True:
        t += rng.expovariate(rate)
        if t >= end:
            return out
        order = BEFORE if t < half else AFTER
        model = rng.choices(order, zipf_weights(len(order)))[0]
        family = family_of(model)
        loras: tuple[str, ...] = ()
        if family in LORAS and rng.random() < LORA_SHARE[family]:
            loras = (rng.choice(LORAS[family]),)
        tier = rng.choices(tiers, tier_w)[0]
        out.append(
            Arrival(round(t, 3), tier, rng.randrange(USERS_PER_TIER), model, loras, len(out))
        )


def build_models(models: Path) -> None:
    """The zoo's tiny models and LoRAs, and a second copy of each base model (``-b``), with the
    bench's warm-pool tiers written into every base model's manifest."""
    from imagegen_gpu_worker.adapters.registry import read_manifest, write_manifest

    models.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [sys.executable, "-m", "imagegen_model_zoo", "--out", str(models)],
        check=True,
        capture_output=True,
    )
    for stray in ("shapes-demo", "tiny-random"):  # left by an older run: not in the bench's mix
        if (models / stray).is_symlink():
            (models / stray).unlink()
        elif (models / stray).exists():
            shutil.rmtree(models / stray)
    for name in ZOO:
        copy = models / f"{name}-b"
        if not copy.exists():
            shutil.copytree(models / name, copy)
    for name in BEFORE:
        entry = read_manifest(models / name)
        if entry.id != name or entry.tier != TIER_OF[name]:
            write_manifest(
                models / name,
                id=name,
                family=entry.family,
                pipeline=entry.pipeline,
                default_size=entry.default_size,
                default_steps=entry.default_steps,
                default_guidance=entry.default_guidance,
                preview=entry.preview,
                kind=entry.kind,
                tier=TIER_OF[name],
                samplers=entry.samplers,
                created=entry.created,
            )


# --- the fleet ---------------------------------------------------------------------------------


def fleet_stack(var: Path, workers: int, budgets: str, pool: str):  # type: ignore[no-untyped-def]
    from imagegen_chaos.stack import ChaosStack

    @dataclass(frozen=True)
    class FleetStack(ChaosStack):
        workers: int = 4
        budgets: str = "2,2,3,3"
        pool: str = "ours"

        def env(self) -> dict[str, str]:
            env = super().env()
            env.pop("IMAGEGEN_STACK_PRELOAD_MODEL", None)  # the pool decides what loads
            env["IMAGEGEN_STACK_WORKERS"] = str(self.workers)
            env["IMAGEGEN_STACK_WORKER_BUDGETS_MB"] = self.budgets
            env["IMAGEGEN_STACK_POOL"] = self.pool
            # The plans' daily image quotas would stop a run longer than about 9 minutes at
            # rate 2 (the free plan's 200 images a day per relax user); the bench measures the
            # pool, so they are lifted. The per-minute and queued-jobs limits stay: they shape
            # the submissions as they would a client's.
            env["IMAGEGEN_STACK_API_LIMITS"] = json.dumps(
                {plan: {"images_per_day": UNLIMITED_IMAGES} for plan, _ in TIERS.values()}
            )
            return env

        def up(self) -> None:
            """Only the bench's models (no demo model: the workers start empty)."""
            self._stack("up")

    return FleetStack(
        var=var,
        kafka_port=29392,
        controller_port=29393,
        pg_port=25732,
        port_offset=300,
        workers=workers,
        budgets=budgets,
        pool=pool,
    )


@dataclass
class Driven:
    job_ids: dict[int, str] = field(default_factory=dict)  # arrival index -> job id
    refused: list[tuple[int, int, str]] = field(default_factory=list)  # index, status, body
    over_limit: int = 0  # 429 answers waited out (Retry-After) and submitted again
    t0: float = 0.0  # unix time of the trace's start
    finished_at: float = 0.0


async def drive(api: str, keys: dict[tuple[str, int], str], trace: list[Arrival]) -> Driven:
    """Submits each arrival at its time (retrying 409 and 5xx with its Idempotency-Key, and a
    429 after its ``Retry-After``, as a client of the API does: a plan's limit on queued jobs
    delays a submission, it does not drop it), then waits until every accepted job is
    terminal."""
    import httpx

    out = Driven(t0=time.time())
    start = time.monotonic()

    async def submit(c: httpx.AsyncClient, i: int, a: Arrival) -> None:
        await asyncio.sleep(max(0.0, start + a.at - time.monotonic()))  # the arrival's time
        body = {
            "prompt": f"a red circle, job {i}",
            "model": a.model,
            "steps": STEPS,
            "seed": a.seed,
            "loras": [{"name": n, "weight": 0.8} for n in a.loras],
        }
        headers = {
            "Authorization": f"Bearer {keys[(a.tier, a.user)]}",
            "Idempotency-Key": f"bench-fleet-{i}-{uuid.uuid4().hex[:6]}",
        }
        for _ in range(100):
            try:
                r = await c.post("/v1/generations", json=body, headers=headers)
            except httpx.TransportError:
                await asyncio.sleep(0.5)  # before retrying the same submission
                continue
            if r.status_code == 202:
                out.job_ids[i] = str(r.json()["id"])
                return
            if r.status_code == 429:
                out.over_limit += 1
                wait = float(r.headers.get("Retry-After", "1"))
                await asyncio.sleep(min(max(wait, 0.1), 30.0))  # as the API asks
                continue
            if r.status_code != 409 and r.status_code < 500:
                out.refused.append((i, r.status_code, r.text[:300]))
                return
            await asyncio.sleep(0.5)  # before retrying the same submission
        out.refused.append((i, 0, "no answer after 100 tries"))

    limits = httpx.Limits(max_connections=64)
    async with httpx.AsyncClient(base_url=api, timeout=30, limits=limits) as c:
        await asyncio.gather(*(submit(c, i, a) for i, a in enumerate(trace)))
        pending = dict(out.job_ids)
        gate = asyncio.Semaphore(16)

        async def status(i: int, job_id: str) -> str:
            a = trace[i]
            async with gate:
                try:
                    r = await c.get(
                        f"/v1/generations/{job_id}",
                        headers={"Authorization": f"Bearer {keys[(a.tier, a.user)]}"},
                    )
                    return str(r.json().get("status", ""))
                except (httpx.TransportError, ValueError):
                    return ""

        deadline = time.monotonic() + 1800
        while pending and time.monotonic() < deadline:
            ids = list(pending.items())
            states = await asyncio.gather(*(status(i, j) for i, j in ids))
            for (i, _), s in zip(ids, states, strict=True):
                if s in ("delivered", "failed", "cancelled"):
                    pending.pop(i)
            if pending:
                await asyncio.sleep(1.0)  # between polling rounds of the unfinished jobs
        if pending:
            raise TimeoutError(f"{len(pending)} jobs not terminal after 30 min")
    out.finished_at = time.time()
    return out


# --- what happened, from the log ---------------------------------------------------------------


def pct(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[max(1, math.ceil(q * len(ordered))) - 1]


def p95_interval(
    values: list[float], level: float = 0.90, resamples: int = 2000, seed: int = 0
) -> list[float]:
    """How far a p95 over ``values`` moves with the sample alone: the central ``level`` of the
    p95s of ``resamples`` bootstrap resamples (same size, drawn with replacement; seeded, so a
    re-analysis gives the same interval). A p95 of a hundred waits rests on its five largest:
    another run of the same trace lands anywhere in this interval (ADR 0713)."""
    if not values:
        return [0.0, 0.0]
    rng = random.Random(seed)
    n = len(values)
    p95s = sorted(pct(rng.choices(values, k=n), 0.95) for _ in range(resamples))
    tail = (1 - level) / 2
    return [round(pct(p95s, tail), 3), round(pct(p95s, 1 - tail), 3)]


@dataclass
class Observed:
    figures: dict[str, Any]
    load_s: dict[str, list[float]]  # base model or lora/<id> -> disk load seconds
    service_s_per_step: dict[str, list[float]]  # model -> warm service seconds per step
    makespan_s: float
    queued_at: dict[int, float]  # arrival index -> when the job became schedulable (s from t0)
    turnaround_s: list[float] = field(default_factory=list)  # see turnarounds
    started_at: dict[int, float] = field(default_factory=dict)  # first assignment (s from t0)
    # base models each real worker held when the counted window began (t0 + settle)
    resident_at_settle: dict[str, list[str]] = field(default_factory=dict)
    # base model -> bytes it takes loaded, as its worker measured them (``ModelLoaded.bytes``)
    loaded_bytes: dict[str, int] = field(default_factory=dict)


def observe(
    records: list[Any], driven: Driven, trace: list[Arrival], settle_s: float = 0.0
) -> Observed:
    """The real half's figures from the log (see the module docstring for the definitions)."""
    by_job: dict[str, list[Any]] = defaultdict(list)
    loaded_by_cause: dict[str, list[dict[str, Any]]] = defaultdict(list)
    loads: list[tuple[dict[str, Any], float]] = []
    commands: list[Any] = []
    residency: list[Any] = []
    for r in records:
        if r.topic == "imagegen.workers.models":
            residency.append(r)
            if r.type == "imagegen.model.loaded" and r.data.get("source") in ("disk", "ram"):
                loads.append((r.data, r.occurred_at))
                if r.causation_id:
                    loaded_by_cause[r.causation_id].append(r.data)
        elif r.topic == "imagegen.pool.commands":
            commands.append(r)
        else:
            by_job[r.job_id].append(r)
    index_of = {j: i for i, j in driven.job_ids.items()}
    waits: dict[str, list[float]] = defaultdict(list)
    base_warm = started = 0
    queued_at: dict[int, float] = {}
    started_at: dict[int, float] = {}
    per_step: dict[str, list[float]] = defaultdict(list)
    cold_runs: dict[str, list[float]] = defaultdict(list)  # model -> runs that loaded it
    for job_id, recs in by_job.items():
        if job_id not in index_of:
            continue
        arrival = trace[index_of[job_id]]
        counted = arrival.at >= settle_s
        requested = [r for r in recs if r.type == "imagegen.generation.requested"]
        # schedulable from the prompt's verdict on (the simulator's arrivals are that moment)
        requested = [r for r in recs if r.type == "imagegen.prompt.moderated"] or requested
        scheduled = sorted(
            (r for r in recs if r.type == "imagegen.job.scheduled"), key=lambda r: r.occurred_at
        )
        if not requested or not scheduled:
            continue
        first = scheduled[0]
        queued_at[index_of[job_id]] = requested[0].occurred_at - driven.t0
        started_at[index_of[job_id]] = first.occurred_at - driven.t0
        if not counted:
            continue
        waits[arrival.tier].append(first.occurred_at - requested[0].occurred_at)
        caused = loaded_by_cause.get(first.event_id, [])
        base_cold = any(d["model"].get("kind", "base") == "base" for d in caused)
        started += 1
        base_warm += not base_cold
        generated = [r for r in recs if r.type == "imagegen.image.generated"]
        if len(scheduled) == 1 and generated:
            run_s = generated[0].occurred_at - first.occurred_at
            if not caused:
                per_step[arrival.model].append(run_s / STEPS)
            elif base_cold:
                cold_runs[arrival.model].append(run_s)
    load_s: dict[str, list[float]] = defaultdict(list)
    for d, at in loads:
        if at < driven.t0 + settle_s:
            continue  # a process's first loads (imports, allocator) are not a model's
        m = d["model"]
        key = m["model_id"] if m.get("kind", "base") == "base" else f"lora/{m['model_id']}"
        if d.get("source") == "disk" and key not in cold_runs:
            load_s[key].append(float(d["load_ms"]) / 1000)
    # A base model's load costs a job what its cold runs took over a warm run: the worker's
    # load_ms leaves out what follows the load (the first run of a model after a switch is slow
    # on this CPU: 0.65 s against 0.21 s warm in a pool-none run, its RAM loads reporting 0 ms)
    for m, runs in cold_runs.items():
        if per_step.get(m):
            warm = statistics.median(per_step[m]) * STEPS
            load_s[m] = [max(0.0, r - warm) for r in runs]
    base_loads = [d for d, _ in loads if d["model"].get("kind", "base") == "base"]
    assigned = [  # every assignment: (worker, base model, when)
        (r.data["worker_id"], trace[index_of[job_id]].model, r.occurred_at)
        for job_id, recs in by_job.items()
        if job_id in index_of
        for r in recs
        if r.type == "imagegen.job.scheduled"
    ]
    figures = {
        "jobs": len(driven.job_ids),
        "jobs_counted": started,
        "refused": len(driven.refused),
        "resubmitted_after_429": getattr(driven, "over_limit", 0),  # older saved runs: none
        "warm_hit_rate": round(base_warm / started, 4) if started else 0.0,
        "cold_loads": len(base_loads),
        "cold_loads_from_ram": sum(1 for d in base_loads if d.get("source") == "ram"),
        # the simulated half replays from the settle point on: compare its cold_loads with these
        "cold_loads_after_settle": sum(
            1
            for d, at in loads
            if d["model"].get("kind", "base") == "base" and at >= driven.t0 + settle_s
        ),
        "pool_loads": sum(1 for d in base_loads if d.get("command_id")),
        "pool_loads_after_settle": sum(
            1
            for d, at in loads
            if d["model"].get("kind", "base") == "base"
            and d.get("command_id")
            and at >= driven.t0 + settle_s
        ),
        "pool_loads_unused": unused_pool_loads(residency, assigned),
        "duplicate_loads": duplicate_loads(commands, residency),
        "tiers": {
            t: {
                "jobs": len(w),
                "p50_wait_s": round(pct(w, 0.5), 3),
                "p95_wait_s": round(pct(w, 0.95), 3),
                "p95_wait_s_interval90": p95_interval(w),
            }
            for t, w in sorted(waits.items())
        },
        "all_tiers": all_tiers(waits, interval=True),
    }
    held: dict[str, dict[str, bool]] = defaultdict(dict)  # worker -> model -> held
    for r in sorted(residency, key=lambda r: r.occurred_at):
        if r.occurred_at > driven.t0 + settle_s:
            break
        if r.type == "imagegen.model.loaded" and r.data["model"].get("kind", "base") == "base":
            held[r.data["worker_id"]][r.data["model"]["model_id"]] = True
        elif r.type == "imagegen.model.evicted" and r.data.get("kind", "base") == "base":
            held[r.data["worker_id"]][r.data["model_id"]] = False
    return Observed(
        figures,
        load_s,
        per_step,
        driven.finished_at - driven.t0,
        queued_at,
        turnarounds(records, driven, trace, settle_s),
        started_at,
        {w: [m for m, on in models.items() if on] for w, models in held.items()},
        {
            m["model_id"]: int(m["bytes"])
            for d, _ in loads
            if (m := d["model"]).get("kind", "base") == "base" and m.get("bytes")
        },
    )


def turnarounds(
    records: list[Any], driven: Driven, trace: list[Arrival], settle_s: float = 0.0
) -> list[float]:
    """How long a finished worker stays unused on the real run (ADR 0713), for the simulator
    to replay: from a job's images stored to its worker's next assignment, where that next job
    was already schedulable (work waiting) and is of the model the worker had just run, after
    the settle window. A next job of that model was waiting warm on an idle worker, which the
    policy takes at once, so only the platform stood between; a next job of another model may
    also have waited for the policy's own reasons (affinity patience, the switch guard), which
    the simulator models itself and would otherwise count twice."""
    runs: dict[str, list[tuple[float, float, float, str]]] = defaultdict(list)  # worker -> runs
    by_job: dict[str, list[Any]] = defaultdict(list)
    for r in records:
        if r.job_id:
            by_job[r.job_id].append(r)
    index_of = {j: i for i, j in driven.job_ids.items()}
    for job_id, recs in by_job.items():
        when = {r.type: r.occurred_at for r in sorted(recs, key=lambda r: -r.occurred_at)}
        ready = when.get("imagegen.prompt.moderated")
        stored = when.get("imagegen.image.generated")
        scheduled = [r for r in recs if r.type == "imagegen.job.scheduled"]
        if ready is None or stored is None or len(scheduled) != 1 or job_id not in index_of:
            continue
        model = trace[index_of[job_id]].model
        runs[scheduled[0].data["worker_id"]].append(
            (scheduled[0].occurred_at, stored, ready, model)
        )
    out: list[float] = []
    for worker_runs in runs.values():
        worker_runs.sort()
        for (_, stored, _, ran), (assigned, _, ready, model) in zip(
            worker_runs, worker_runs[1:], strict=False
        ):
            if stored >= driven.t0 + settle_s and ready < stored and model == ran:
                out.append(max(0.0, assigned - stored))
    return out


def unused_pool_loads(residency: list[Any], assigned: list[tuple[str, str, float]]) -> int:
    """Base-model loads answering a pool command (``ModelLoaded`` with a ``command_id``, from
    disk or RAM) that no job was assigned on that worker before the model left it again
    (``ModelEvicted``) or the run ended: a preload that served nobody."""
    uses: dict[tuple[str, str], list[float]] = defaultdict(list)
    for worker, model, at in assigned:
        uses[(worker, model)].append(at)
    facts = sorted(residency, key=lambda r: r.occurred_at)
    unused = 0
    for i, f in enumerate(facts):
        d = f.data
        if (
            f.type != "imagegen.model.loaded"
            or not d.get("command_id")
            or d.get("source") not in ("disk", "ram")
            or d["model"].get("kind", "base") != "base"
        ):
            continue
        key = (d["worker_id"], d["model"]["model_id"])
        gone = next(
            (
                g.occurred_at
                for g in facts[i + 1 :]
                if g.type == "imagegen.model.evicted"
                and (g.data.get("worker_id"), g.data.get("model_id")) == key
            ),
            math.inf,
        )
        unused += not any(f.occurred_at <= t < gone for t in uses[key])
    return unused


def duplicate_loads(commands: list[Any], residency: list[Any]) -> int:
    """``LoadModel`` commands for a model their worker held when the command was published (the
    residency facts before it in time, newest per (worker, model) wins). A command with ``pin``
    for a held model is a pin confirmation (answered ``resident``, nothing read; ADR 0711), not
    a duplicate load: not counted."""
    facts = sorted(residency, key=lambda r: r.occurred_at)
    count = 0
    for cmd in commands:
        if cmd.type != "imagegen.pool.load_model" or cmd.data.get("pin"):
            continue
        key = (cmd.data["worker_id"], cmd.data["model_id"])
        held = False
        for f in facts:
            if f.occurred_at >= cmd.occurred_at:
                break
            model = f.data.get("model_id") or f.data.get("model", {}).get("model_id")
            if (f.data.get("worker_id"), model) == key:  # ModelEvicted / ModelLoaded
                held = f.type == "imagegen.model.loaded"
        count += held
    return count


# --- the simulator on the same trace -----------------------------------------------------------


def simulate_same(
    trace: list[Arrival],
    observed: Observed,
    models: Path,
    workers: int,
    budgets: list[int],
    pool: str,
    seed: int,
    settle_s: float = 0.0,
) -> dict[str, Any]:
    """The fleet simulator on the same arrivals and fleet, calibrated on the real run."""
    from dataclasses import replace

    from imagegen_fleet_sim.engine import PlatformLatency, Simulation
    from imagegen_fleet_sim.scenario import GpuType, Scenario
    from imagegen_pool_manager.service_layer.planner import PlannerConfig
    from imagegen_runtime import budget
    from imagegen_scheduler.adapters.catalog import load_catalog
    from imagegen_scheduler.domain import JobRequest, ModelCatalog, SchedulerConfig, Tier

    catalog = load_catalog(models)
    base = {m: catalog.models[m] for m in BEFORE}
    all_steps = [s for v in observed.service_s_per_step.values() for s in v]
    step_all = statistics.median(all_steps) if all_steps else 0.05
    load_all = [s for m in BEFORE for s in observed.load_s.get(m, [])] or [0.5]
    calibrated = {}
    # Loads are drawn from the measured samples as they are (the catalog keeps their 10th-90th
    # percentile range, which the scheduler's load estimate reads): a uniform draw over that
    # range drops both tails and moves the mean.
    load_samples: dict[str, list[float]] = {}
    for m, spec in base.items():
        steps = observed.service_s_per_step.get(m) or all_steps or [step_all]
        loads = load_samples[m] = observed.load_s.get(m) or load_all
        mpix = 64 * 64 / 1_000_000  # the tiny models' default size, every job's here
        measured = observed.loaded_bytes.get(m)
        calibrated[m] = replace(
            spec,
            step_s=statistics.median(steps) / mpix,
            load_s=(pct(loads, 0.1), pct(loads, 0.9)),
            weights_gb=measured / budget.GB if measured else spec.weights_gb,
        )
    adapters = {}
    for a_id, spec in catalog.adapters.items():
        loads = observed.load_s.get(a_id)
        if loads:
            load_samples[a_id] = loads
        adapters[a_id] = replace(spec, load_s=(pct(loads, 0.1), pct(loads, 0.9))) if loads else spec
    cal = ModelCatalog(models=calibrated, adapters=adapters)
    families = frozenset(spec.family for spec in calibrated.values())
    classes: Counter[int] = Counter(budgets[i % len(budgets)] for i in range(workers))
    # The scheduler fits jobs into the worker's memory less the budget model's margin
    # (imagegen_runtime.budget, ADR 0708); the worker's own eviction keeps resident weights
    # within the whole memory setting (its budget_bytes)
    usable = budget.USABLE_FRACTION * budget.MIB / budget.GB
    fleet = tuple(
        (GpuType(f"cpu-{mb}MiB", mb * usable, 1.0, families, mb * budget.MIB / budget.GB), n)
        for mb, n in sorted(classes.items())
    )
    tier_enum = {"turbo": Tier.TURBO, "fast": Tier.FAST, "relax": Tier.RELAX}
    # The replay starts where the counted window does, from the real fleet's state then (what
    # each worker held): the first minutes of fresh processes (loads of 10-30 s) are not
    # modelled, and which worker ends them holding what decides much of what follows. Jobs the
    # real fleet started before then are left out; jobs still queued arrive at once.
    start = settle_s if observed.resident_at_settle else 0.0
    resident = sim_residency(observed.resident_at_settle, budgets, fleet)
    requests = [
        JobRequest(
            job_id=f"job-{i}",
            user_id=f"{a.tier}-{a.user}",
            tier=tier_enum[a.tier],
            model_id=a.model,
            adapters=tuple(f"lora/{n}" for n in a.loras),
            width=64,
            height=64,
            batch=1,
            steps=STEPS,
            queued_at=max(observed.queued_at.get(i, a.at), start) - start,
        )
        for i, a in enumerate(trace)
        if observed.started_at.get(i, start) >= start  # not run before the replay starts
    ]
    requests.sort(key=lambda r: r.queued_at)
    hours = max(observed.makespan_s, trace[-1].at + 1.0, start + 1.0) / 3600 - start / 3600
    mix = Counter(a.model for a in trace)
    scenario = Scenario(
        name="bench-fleet",
        fleet=fleet,
        hours=hours,
        start_hour=12.0,
        load_factor=1.0,
        backlog={},
        tier_mix={tier_enum[t]: share for t, (_, share) in TIERS.items()},
        users={tier_enum[t]: USERS_PER_TIER for t in TIERS},
        user_activity_sigma=0.0,
        model_mix={m: n / len(trace) for m, n in mix.items()},
        sizes={(64, 64): 1.0},
        batches={1: 1.0},
        lora_counts={0: 1.0},
        controlnet_counts={0: 1.0},
        bursts_per_hour=0.0,
        burst=(0.0, 1.0),
    )

    def replay(latency: PlatformLatency | None, draw: int) -> dict[str, Any]:
        sim = Simulation(
            scenario,
            "ours",
            seed + draw,
            SchedulerConfig(),
            pool,
            catalog=cal,
            tiers=dict(TIER_OF),
            trace=requests,
            latency=latency,
            resident=resident,
            load_samples=load_samples,
            pool_every_s=PlannerConfig().plan_every_s,  # the live pool-manager's round
        )
        result = sim.run()
        waits: dict[str, list[float]] = defaultdict(list)
        colds: list[bool] = []
        at_once: set[int] = set()
        for job_id, record in sim.records.items():
            i = int(job_id.removeprefix("job-"))
            if record.first_start is not None and trace[i].at >= settle_s:
                waits[str(record.tier)].append(record.first_start - record.arrived)
                colds.append(bool(record.first_cold))
                if record.first_start - record.arrived < 1e-9:
                    at_once.add(i)
        return {
            "at_once": at_once,
            "jobs": len(sim.records),
            "jobs_counted": len(colds),
            "refused": sim.counters.refused,
            "warm_hit_rate": 1 - sum(colds) / len(colds) if colds else 0.0,
            "warm_hit_rate_all_starts_with_adapters": result.warm_hit_rate,
            "cold_loads": result.cold_loads_per_hour * result.hours,
            "pool_loads": sum(sim.preloads.values()),  # predictive and storm loads
            "tiers": {
                t: {"jobs": len(w), "p50_wait_s": pct(w, 0.5), "p95_wait_s": pct(w, 0.95)}
                for t, w in waits.items()
            },
            "all_tiers": all_tiers(waits, digits=None),
        }

    def medians(runs: list[dict[str, Any]]) -> dict[str, Any]:
        """Each figure's median over the draws (one draw is as noisy as one real run)."""

        def med(get: Any, digits: int = 4) -> float:
            return round(statistics.median(get(r) for r in runs), digits)

        return {
            "jobs": runs[0]["jobs"],
            "jobs_counted": runs[0]["jobs_counted"],
            "refused": runs[0]["refused"],
            "draws": len(runs),
            "warm_hit_rate": med(lambda r: r["warm_hit_rate"]),
            "warm_hit_rate_all_starts_with_adapters": med(
                lambda r: r["warm_hit_rate_all_starts_with_adapters"]
            ),
            "cold_loads": med(lambda r: r["cold_loads"], 1),
            "pool_loads": med(lambda r: r["pool_loads"], 1),
            "tiers": {
                t: {
                    "jobs": runs[0]["tiers"][t]["jobs"],
                    **{
                        k: med(lambda r, t=t, k=k: r["tiers"][t][k], 3)
                        for k in ("p50_wait_s", "p95_wait_s")
                    },
                    "p95_wait_s_draws": spread(r["tiers"][t]["p95_wait_s"] for r in runs),
                }
                for t in sorted(runs[0]["tiers"])
            },
            "all_tiers": {
                "jobs": runs[0]["all_tiers"]["jobs"],
                **{
                    k: med(lambda r, k=k: r["all_tiers"][k], 3)
                    for k in ("p50_wait_s", "p95_wait_s")
                },
                "p95_wait_s_draws": spread(r["all_tiers"]["p95_wait_s"] for r in runs),
            },
        }

    # The platform's reaction time: the real waits of the jobs that the policy, reacting at
    # once, starts the moment they arrive in every draw (an idle worker fit to take them, no
    # user cap or warm-worker wait in the way): nothing but the platform delayed those.
    instant_runs = [replay(None, d) for d in range(DRAWS)]
    at_once = set.intersection(*(r["at_once"] for r in instant_runs))
    reaction = [
        observed.started_at[i] - observed.queued_at[i]
        for i in sorted(at_once)
        if i in observed.started_at and i in observed.queued_at
    ]
    latency = PlatformLatency(tuple(reaction), tuple(observed.turnaround_s))
    simulated = medians([replay(latency, d) for d in range(DRAWS)])
    instant = medians(instant_runs)
    return {
        **simulated,
        "without_platform_latency": {
            k: instant[k] for k in ("warm_hit_rate", "tiers", "all_tiers")
        },
        "calibration": {
            **{
                m: {
                    "step_s_per_mpix": round(s.step_s, 3),
                    "load_s": [round(x, 3) for x in s.load_s],
                    "load_samples": len(load_samples[m]),
                    "weights_mib": round(s.weights_gb * budget.GB / budget.MIB, 3),
                }
                for m, s in calibrated.items()
            },
            "platform_latency": {
                name: {
                    "samples": len(v),
                    "p50_s": round(pct(v, 0.5), 3),
                    "p95_s": round(pct(v, 0.95), 3),
                    "max_s": round(max(v), 3) if v else 0.0,
                }
                for name, v in (("reaction_s", reaction), ("turnaround_s", observed.turnaround_s))
            },
        },
    }


def sim_residency(
    held: dict[str, list[str]], budgets: list[int], fleet: tuple[tuple[Any, int], ...]
) -> dict[str, list[str]]:
    """The real workers' models on the simulated workers of their class: worker ``worker-<n>``
    (stack numbering from 1) has budget ``budgets[(n - 1) % len]``; the simulator names its
    workers ``gpu-<index>-<class>``, classes in ``fleet`` order."""
    sim_ids: dict[int, list[str]] = defaultdict(list)
    index = 0
    for gpu, count in fleet:
        mb = int(gpu.name.removeprefix("cpu-").removesuffix("MiB"))
        for _ in range(count):
            sim_ids[mb].append(f"gpu-{index:03d}-{gpu.name}")
            index += 1
    out: dict[str, list[str]] = {}
    for worker in sorted(held, key=lambda w: int(w.rsplit("-", 1)[-1])):
        n = int(worker.rsplit("-", 1)[-1])
        free = sim_ids[budgets[(n - 1) % len(budgets)]]
        if free:
            out[free.pop(0)] = held[worker]
    return out


def spread(values: Iterable[float]) -> list[float]:
    """Lowest and highest of the simulator's draws of one figure."""
    ordered = sorted(values)
    return [round(ordered[0], 3), round(ordered[-1], 3)] if ordered else [0.0, 0.0]


def compare(real: dict[str, Any], simulated: dict[str, Any]) -> dict[str, Any]:
    ratios = {}
    for tier, r in real["tiers"].items():
        s = simulated["tiers"].get(tier)
        if s and r["p95_wait_s"] > 0:
            ratios[tier] = round(s["p95_wait_s"] / r["p95_wait_s"], 3)
    diff = round(abs(real["warm_hit_rate"] - simulated["warm_hit_rate"]), 4)
    out = {
        "warm_hit_diff": diff,
        "warm_hit_within_0.10": diff <= 0.10,
        "p95_wait_ratio": ratios,
        "p95_within_25pct": all(0.75 <= r <= 1.25 for r in ratios.values()),
    }
    r_all, s_all = real.get("all_tiers"), simulated.get("all_tiers")
    if r_all and s_all and r_all["p95_wait_s"] > 0:  # every counted job: more samples per p95
        out["p95_wait_ratio_all_tiers"] = round(s_all["p95_wait_s"] / r_all["p95_wait_s"], 3)

    # Whether each simulated p95 lies where the real run's own sample puts its p95 (the
    # interval is the real p95's, from its waits alone; the 25% band above is the issue's)
    def inside(r: dict[str, Any], s: dict[str, Any]) -> bool:
        lo, hi = r["p95_wait_s_interval90"]
        return bool(lo <= s["p95_wait_s"] <= hi)

    within = {
        tier: inside(r, simulated["tiers"][tier])
        for tier, r in real["tiers"].items()
        if "p95_wait_s_interval90" in r and tier in simulated["tiers"]
    }
    if within:
        out["p95_within_real_interval90"] = within
        if r_all and s_all and "p95_wait_s_interval90" in r_all:
            out["p95_all_tiers_within_real_interval90"] = inside(r_all, s_all)
    return out


def all_tiers(
    waits: dict[str, list[float]], digits: int | None = 3, interval: bool = False
) -> dict[str, Any]:
    """p50 and p95 over every counted job, whatever its tier; with ``interval``, the p95's
    ``p95_wait_s_interval90`` too (the real half's)."""
    every = [w for ws in waits.values() for w in ws]
    p50, p95 = pct(every, 0.5), pct(every, 0.95)
    if digits is not None:
        p50, p95 = round(p50, digits), round(p95, digits)
    out: dict[str, Any] = {"jobs": len(every), "p50_wait_s": p50, "p95_wait_s": p95}
    if interval:
        out["p95_wait_s_interval90"] = p95_interval(every)
    return out


# --- main --------------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> dict[str, Any]:
    from imagegen_chaos.recorder import read_topics

    var = Path(args.var).resolve()
    stack = fleet_stack(var, args.workers, args.budgets_mb, args.pool)
    saved = var / "models" / f"last-run-{args.pool}.pickle"  # kept beside the models
    if args.reanalyse:
        with saved.open("rb") as f:
            trace, driven, records = pickle.load(f)
        return analyse(args, stack.models, trace, driven, records)
    stack.down()  # a previous run's processes, if any
    for old in var.glob("*") if var.exists() else ():  # a fresh log and database, same models
        if old.name != "models":
            shutil.rmtree(old) if old.is_dir() and not old.is_symlink() else old.unlink()
    build_models(stack.models)
    trace = make_trace(args.seed, args.minutes, args.rate)
    say(f"fleet: {args.workers} workers ({args.budgets_mb} MiB), pool {args.pool}")
    stack.up()
    try:
        bad = stack.wait_ready(180)
        if bad:
            raise RuntimeError(f"not ready: {bad}")
        keys = {
            (tier, u): stack.create_key(f"bench-{tier}-{u}-{uuid.uuid4().hex[:4]}", plan)
            for tier, (plan, _) in TIERS.items()
            for u in range(USERS_PER_TIER)
        }
        if args.restart_pool_manager:
            half = args.minutes * 30
            import threading

            def kill() -> None:
                pid = stack.supervisor.pid("pool-manager")
                if pid:
                    say(f"killing the pool-manager (pid {pid}) at {half:.0f} s")
                    os.kill(pid, signal.SIGKILL)  # supervisord starts it again

            threading.Timer(half, kill).start()
        say(f"driving {len(trace)} jobs over {args.minutes} min")
        driven = asyncio.run(drive(stack.api_url, keys, trace))
        topics = (
            "imagegen.jobs.requested",
            "imagegen.jobs.moderated",
            "imagegen.jobs.scheduled",
            "imagegen.jobs.generated",
            "imagegen.jobs.ended",
            "imagegen.workers.models",
            "imagegen.pool.commands",
        )
        records = [r for r in read_topics(stack.bootstrap, topics=topics) if r.occurred_at]
    finally:
        if not args.keep:
            stack.down()
    with saved.open("wb") as f:
        pickle.dump((trace, driven, records), f)
    return analyse(args, stack.models, trace, driven, records)


def analyse(
    args: argparse.Namespace, models: Path, trace: list[Arrival], driven: Driven, records: list[Any]
) -> dict[str, Any]:
    observed = observe(records, driven, trace, args.settle)
    budgets = [int(b) for b in args.budgets_mb.split(",")]
    simulated = simulate_same(
        trace, observed, models, args.workers, budgets, args.pool, args.seed, args.settle
    )
    return {
        "pool": args.pool,
        "minutes": args.minutes,
        "rate": args.rate,
        "seed": args.seed,
        "settle_s": args.settle,
        "workers": args.workers,
        "budgets_mb": args.budgets_mb,
        "real": observed.figures,
        "simulated": simulated,
        "comparison": compare(observed.figures, simulated),
    }


def say(msg: str) -> None:
    print(f"[bench fleet] {msg}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench fleet", description=__doc__.split("\n")[0])
    p.add_argument("--minutes", type=float, default=6.0)
    p.add_argument("--pool", choices=("ours", "none"), default="ours")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--rate", type=float, default=1.2, help="arrivals per second")
    p.add_argument("--workers", type=int, default=4)
    p.add_argument(
        "--settle",
        type=float,
        default=90.0,
        help="seconds of the trace whose jobs run but are not counted (fresh processes)",
    )
    p.add_argument("--budgets-mb", default="2,2,3,3", help="MiB per worker, cycled")
    p.add_argument("--var", default=str(ROOT / "var" / "bench-fleet"))
    p.add_argument("--json", action="store_true", help="only the JSON on stdout")
    p.add_argument("--out", help="also write the JSON here")
    p.add_argument("--keep", action="store_true", help="leave the fleet running")
    p.add_argument(
        "--reanalyse", action="store_true", help="the last run's log again, without a fleet"
    )
    p.add_argument("--restart-pool-manager", action="store_true", help="kill -9 it halfway")
    args = p.parse_args(argv)
    result = run(args)
    text = json.dumps(result, indent=2)
    if args.out:
        Path(args.out).write_text(text + "\n")
    print(text)
    if not args.json:
        r, s, c = result["real"], result["simulated"], result["comparison"]
        say(
            f"warm hit real {r['warm_hit_rate']:.3f} sim {s['warm_hit_rate']:.3f} "
            f"(diff {c['warm_hit_diff']}); cold loads real {r['cold_loads']} sim {s['cold_loads']}"
        )
    return 0

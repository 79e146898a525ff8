"""Admission speed of POST /v1/generations, against a bare FastAPI endpoint in the same run.

    python -m bench admission [--requests 600] [--concurrency 32] [--rounds 3] [--json]
                              [--no-idempotency-key]

1. **Infrastructure**: the shared local Kafka and PostgreSQL (``deploy/stack.py infra-up``, as
   the tests use them, and the tests' database; infra-up leaves a running stack's services as
   they are, ADR 0001), the catalog's topics under a fresh prefix, a fresh
   key on the ``turbo`` plan. The API runs as ``make up`` runs it: one ``python -m
   imagegen_api`` process and its job projector beside it (``python -m imagegen_api.projector``,
   ADR 0641), which projects the accepted jobs meanwhile. The API's limits are raised
   (``IMAGEGEN_API_LIMITS``) so that they are checked on every request but never refuse one:
   the bench measures the work, not a 429.
2. **Baseline**: a bare FastAPI app (one route that validates a small JSON body with pydantic and
   answers 202 with a JSON body) in its own process, served by the same uvicorn configuration.
3. **Load**: ``--concurrency`` keep-alive HTTP/1.1 connections from this process, each sending
   its next request as soon as the previous answer arrived (a closed loop), ``--requests`` in
   all, each with its own ``Idempotency-Key`` (``--no-idempotency-key`` leaves it out). The
   client is a few lines of asyncio streams, so that the load generator costs little CPU next to
   the servers (all share this machine's cores). One warm-up round of 100 is not counted.
4. **Figures**: per round, accepted/s (2xx answers / wall time of the round) and the p50/p99 of
   the per-request latency; the medians over ``--rounds`` rounds are reported, with
   ``ratio_vs_bare_fastapi`` = accepted/s of the API / answered/s of the bare app. Every answer
   of the API must be a 202 (the bench fails otherwise, naming the first other answer).
   ``cpu_ms_per_request``: the CPU milliseconds the API, its projector, PostgreSQL (every
   ``postgres`` process), the Kafka broker and the bare app each used per answered request
   (``/proc/<pid>/stat``, median over the rounds): the figure to compare changes by on a shared
   machine, where the rates move with whatever else runs. ``cpu_ms_per_accepted`` sums the
   API's side: on N cores, N x 1000 / it bounds accepted/s.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BARE_APP = """
from fastapi import FastAPI
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field


class Body(BaseModel):
    prompt: str = Field(min_length=1, max_length=2000)
    steps: int | None = None


app = FastAPI()


@app.post("/v1/generations", status_code=202)
async def create(body: Body) -> JSONResponse:
    return JSONResponse(status_code=202, content={"id": "x", "status": "accepted"})
"""
BARE_SERVE = """
import sys
import uvicorn
sys.path.insert(0, sys.argv[2])
from bare_app import app
uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_config=None, access_log=False)
"""


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def stack_env() -> dict[str, str]:
    subprocess.run(
        [sys.executable, str(ROOT / "deploy" / "stack.py"), "infra-up"],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    return dict(
        line.split("=", 1)
        for line in (ROOT / "var" / "stack.env").read_text().splitlines()
        if "=" in line
    )


def wait_http(port: int, proc: subprocess.Popen[bytes], path: str, timeout_s: float) -> None:
    """Until GET ``path`` answers 200 (the process's readiness), or fail naming why."""
    import httpx

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server on port {port} exited with {proc.returncode}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}{path}", timeout=1.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)  # polling a condition (readiness) with a deadline
    raise SystemExit(f"server on port {port} not ready after {timeout_s} s")


@contextmanager
def process(cmd: list[str], env: dict[str, str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


async def _one_connection(
    port: int, requests: list[bytes], latencies: list[float], statuses: list[int]
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        for request in requests:
            t0 = time.perf_counter()
            writer.write(request)
            status_line = await reader.readline()
            length = 0
            while True:
                line = await reader.readline()
                if line in (b"\r\n", b""):
                    break
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            body = await reader.readexactly(length)
            latencies.append((time.perf_counter() - t0) * 1000)
            status = int(status_line.split()[1])
            statuses.append(status)
            if not 200 <= status < 300 and len(statuses) < 2**31:
                statuses.append(-1)
                raise SystemExit(f"answer {status}: {body[:300]!r}")
    finally:
        writer.close()


def build_request(port: int, key: str, idempotency: bool, i: int) -> bytes:
    body = json.dumps({"prompt": f"a red circle on a blue square, number {i}", "steps": 2})
    headers = [
        "POST /v1/generations HTTP/1.1",
        f"Host: 127.0.0.1:{port}",
        f"Authorization: Bearer {key}",
        "Content-Type: application/json",
        f"Content-Length: {len(body)}",
    ]
    if idempotency:
        headers.append(f"Idempotency-Key: bench-{uuid.uuid4().hex}")
    return ("\r\n".join(headers) + "\r\n\r\n" + body).encode()


def run_round(
    port: int, total: int, concurrency: int, make: Callable[[int], bytes]
) -> dict[str, float]:
    requests = [make(i) for i in range(total)]
    per_conn = [requests[c::concurrency] for c in range(concurrency)]
    latencies: list[float] = []
    statuses: list[int] = []

    async def go() -> float:
        t0 = time.perf_counter()
        await asyncio.gather(*(_one_connection(port, r, latencies, statuses) for r in per_conn))
        return time.perf_counter() - t0

    wall = asyncio.run(go())
    ok = sum(1 for s in statuses if 200 <= s < 300)
    return {
        "per_s": ok / wall,
        "p50_ms": pct(latencies, 50),
        "p99_ms": pct(latencies, 99),
        "answered": float(len(statuses)),
    }


def cpu_s(pid: int) -> float | None:
    """CPU seconds (user + system) a process has used so far, from ``/proc/<pid>/stat``; None
    once it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def infra_pids() -> dict[str, list[int]]:
    """This machine's PostgreSQL processes (the server and every backend) and Kafka broker."""
    found: dict[str, list[int]] = {"postgresql": [], "kafka": []}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            comm = (entry / "comm").read_text().strip()
            cmdline = (entry / "cmdline").read_bytes() if comm == "java" else b""
        except OSError:
            continue
        if comm == "postgres":
            found["postgresql"].append(int(entry.name))
        elif b"kafka.Kafka" in cmdline:
            found["kafka"].append(int(entry.name))
    return found


def _group_cpu(pids: Callable[[], dict[str, list[int]]]) -> dict[str, dict[int, float]]:
    out: dict[str, dict[int, float]] = {}
    for name, group in pids().items():
        times = {pid: cpu_s(pid) for pid in group}
        out[name] = {pid: t for pid, t in times.items() if t is not None}
    return out


def measure(
    port: int,
    rounds: int,
    total: int,
    concurrency: int,
    make: Callable[[int], bytes],
    pids: Callable[[], dict[str, list[int]]],
) -> dict[str, object]:
    """Median figures over ``rounds``, and the CPU milliseconds per answered request that each
    group of processes ``pids()`` names used during the rounds (a process started during a
    round counts from zero; one that ended is left out): on a shared machine this moves far
    less than the rates and latencies do (other work takes wall time from a round, not CPU
    from it)."""
    run_round(port, 100, concurrency, make)  # warm-up: connections, pools, JIT-free caches
    results = []
    cpu: dict[str, list[float]] = {}
    for _ in range(rounds):
        before = _group_cpu(pids)
        result = run_round(port, total, concurrency, make)
        for name, after in _group_cpu(pids).items():
            used = sum(t - before.get(name, {}).get(pid, 0.0) for pid, t in after.items())
            cpu.setdefault(name, []).append(used * 1000 / result["answered"])
        results.append(result)
    figures: dict[str, object] = {
        name: round(statistics.median(r[name] for r in results), 1)
        for name in ("per_s", "p50_ms", "p99_ms")
    }
    figures["rounds"] = [round(r["per_s"], 1) for r in results]
    figures["cpu_ms_per_request"] = {
        name: round(statistics.median(values), 3) for name, values in cpu.items()
    }
    return figures


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench admission")
    parser.add_argument("--requests", type=int, default=600)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--no-idempotency-key", action="store_true")
    parser.add_argument("--json", action="store_true")
    parser.add_argument(
        "--profile",
        type=Path,
        help="record the API process with py-spy (must be on PATH) into this collapsed-stack file",
    )
    args = parser.parse_args(argv)

    env = stack_env()
    bootstrap = env["IMAGEGEN_KAFKA_BOOTSTRAP"]
    # the tests' database, as the integration tests use it: the stack's own projection (which
    # `imagegen replay --verify` compares with the log) never sees the bench's jobs
    database_url = env["IMAGEGEN_DATABASE_URL"].rsplit("/", 1)[0] + "/imagegen_test"
    prefix = f"bench{uuid.uuid4().hex[:6]}."
    from imagegen_runtime.kafka import ensure_topics

    ensure_topics(bootstrap, prefix)
    work = ROOT / "var" / "bench-admission"
    work.mkdir(parents=True, exist_ok=True)
    (work / "bare_app.py").write_text(BARE_APP)

    api_port, bare_port = free_port(), free_port()
    api_env = {
        **os.environ,
        "IMAGEGEN_API_KAFKA_BOOTSTRAP": bootstrap,
        "IMAGEGEN_API_TOPIC_PREFIX": prefix,
        "IMAGEGEN_API_DATABASE_URL": database_url,
        "IMAGEGEN_API_HTTP_PORT": str(api_port),
        "IMAGEGEN_API_MODELS_DIR": str(ROOT / "models"),
        "IMAGEGEN_API_FILES_DIR": str(work / "files"),
        "IMAGEGEN_API_LIMITS": json.dumps(
            {
                plan: {"requests_per_minute": 10**7, "burst": 10**6, "active_jobs": 10**6}
                | {"images_per_day": 10**8}
                for plan in ("free", "pro", "turbo")
            }
        ),
        "IMAGEGEN_API_LOG_LEVEL": "WARNING",
    }
    key = asyncio.run(_create_key(database_url))
    idem = not args.no_idempotency_key
    out: dict[str, object] = {
        "requests": args.requests,
        "concurrency": args.concurrency,
        "rounds": args.rounds,
        "idempotency_key": idem,
    }
    with process(
        [sys.executable, "-c", BARE_SERVE, str(bare_port), str(work)], env, work / "bare.log"
    ) as bare:
        wait_http(bare_port, bare, "/docs", 60)
        out["bare_fastapi"] = measure(
            bare_port,
            args.rounds,
            args.requests,
            args.concurrency,
            lambda i: build_request(bare_port, key, idem, i),
            lambda: {"bare_fastapi": [bare.pid]},
        )
    projector_env = api_env | {"IMAGEGEN_API_HTTP_PORT": str(free_port())}
    api_env["IMAGEGEN_API_RUN_PROJECTOR"] = "false"  # the projector process runs it (ADR 0641)
    with (
        process(
            [sys.executable, "-m", "imagegen_api.projector"], projector_env, work / "proj.log"
        ) as projector,
        process([sys.executable, "-m", "imagegen_api"], api_env, work / "api.log") as api,
    ):
        wait_http(api_port, api, "/readyz", 120)
        spy = None
        if args.profile:
            spy = subprocess.Popen(
                ["py-spy", "record", "-p", str(api.pid), "-f", "raw", "-o", str(args.profile)]
                + ["--nonblocking", "-r", "200"],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        out["api"] = measure(
            api_port,
            args.rounds,
            args.requests,
            args.concurrency,
            lambda i: build_request(api_port, key, idem, i),
            lambda: {"api": [api.pid], "projector": [projector.pid]} | infra_pids(),
        )
        if spy is not None:
            spy.send_signal(2)  # SIGINT: py-spy writes its file and exits
            spy.wait(30)
    api_fig, bare_fig = out["api"], out["bare_fastapi"]
    assert isinstance(api_fig, dict) and isinstance(bare_fig, dict)
    summary = {
        "accepted_per_s": api_fig["per_s"],
        "p50_ms": api_fig["p50_ms"],
        "p99_ms": api_fig["p99_ms"],
        "bare_fastapi_per_s": bare_fig["per_s"],
        "ratio_vs_bare_fastapi": round(api_fig["per_s"] / bare_fig["per_s"], 3),
        "cpu_ms_per_request": api_fig["cpu_ms_per_request"] | bare_fig["cpu_ms_per_request"],
    }
    used = api_fig["cpu_ms_per_request"]
    assert isinstance(used, dict)
    # Every process an accepted job passes through on its way to the 202 (the bench's own client
    # aside): on a machine of N cores, N x 1000 / this is the most it could accept per second.
    summary["cpu_ms_per_accepted"] = round(sum(used.values()), 3)
    out = summary | out
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        for name, value in out.items():
            print(f"{name:24} {value}")
    return 0


async def _create_key(database_url: str) -> str:
    from imagegen_api.adapters.accounts import PgAccounts
    from imagegen_runtime.db import make_engine
    from imagegen_schemas import Plan

    engine = make_engine(database_url, pool_size=1)
    try:
        accounts = PgAccounts(engine)
        await accounts.create_tables()
        return await accounts.create_key(f"bench-admission-{uuid.uuid4().hex[:6]}", Plan.TURBO)
    finally:
        await engine.dispose()

"""Platform overhead of the generation path, through the real stack.

    python -m bench overhead --jobs 200

Brings the stack up (with a 1-step tiny model), then submits jobs one after another over HTTP
and follows each to delivery. Per job, from the event timestamps of its projection:
- end to end = delivered - requested;
- generation = the worker's own time (model load + denoise + PNG encode);
- overhead = end to end - generation: everything the platform adds (API, Kafka hops, safety,
  scheduling, storage, delivery);
- per hop: requested->prompt_moderated->scheduled->started->generated->image_moderated->delivered.
Baseline, in this process: the same 1-step generation as a direct diffusers call.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
MODEL = "tiny-random"


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


def direct_baseline(models: Path, runs: int = 20) -> float:
    """Median ms of the same 1-step generation as a direct diffusers call (warm)."""
    import torch
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(
        models / MODEL, safety_checker=None, requires_safety_checker=False, local_files_only=True
    )
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    times = []
    for i in range(runs + 2):
        t0 = time.perf_counter()
        pipe(
            prompt="a red circle",
            width=64,
            height=64,
            num_inference_steps=1,
            guidance_scale=5.0,
            generator=torch.Generator("cpu").manual_seed(i),
        )
        if i >= 2:
            times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench")
    parser.add_argument("--jobs", type=int, default=200)
    args = parser.parse_args(argv)

    models = ROOT / "var" / "e2e-models"
    subprocess.run(
        [sys.executable, str(ROOT / "tests/fixtures/tiny_model.py"), str(models)],
        check=True,
        capture_output=True,
    )
    env = {
        **os.environ,
        "IMAGEGEN_STACK_MODELS": str(models),
        "IMAGEGEN_STACK_PRELOAD_MODEL": MODEL,
    }
    subprocess.run(
        [sys.executable, str(ROOT / "deploy/stack.py"), "up"],
        env=env,
        check=True,
        stdout=subprocess.DEVNULL,
    )
    stack_env = dict(
        line.split("=", 1)
        for line in (ROOT / "var/stack.env").read_text().splitlines()
        if "=" in line
    )
    api, key = stack_env["IMAGEGEN_API_URL"], stack_env["IMAGEGEN_API_KEY"]

    baseline_ms = direct_baseline(models)
    overhead, e2e, gen, client = [], [], [], []
    hops: dict[str, list[float]] = {}
    with httpx.Client(base_url=api, headers={"Authorization": f"Bearer {key}"}, timeout=60) as c:
        for i in range(args.jobs + 5):
            t0 = time.perf_counter()
            job = c.post(
                "/v1/generations",
                json={"prompt": "a red circle", "model": MODEL, "steps": 1, "seed": i},
            ).json()["id"]
            with c.stream("GET", f"/v1/generations/{job}/events") as stream:
                for line in stream.iter_lines():
                    if line in ("event: delivered", "event: failed", "event: rejected"):
                        break
            seen_ms = (time.perf_counter() - t0) * 1000
            body = c.get(f"/v1/generations/{job}").json()
            if i < 5:
                continue  # warm-up: first jobs pay one-off costs (imports, first load)
            assert body["status"] == "delivered", body
            stages, worker = body["timings_ms"]["stages"], body["timings_ms"]["worker"]
            e2e.append(stages["total"])
            gen.append(worker["total"])
            overhead.append(stages["total"] - worker["total"])
            client.append(seen_ms)
            for hop, ms in stages.items():
                if hop != "total":
                    hops.setdefault(hop, []).append(ms)
    report = {
        "jobs": args.jobs,
        "direct_diffusers_ms_p50": round(baseline_ms, 1),
        "generation_in_worker_ms_p50": round(statistics.median(gen), 1),
        "end_to_end_ms": {"p50": round(pct(e2e, 50), 1), "p99": round(pct(e2e, 99), 1)},
        "overhead_ms": {"p50": round(pct(overhead, 50), 1), "p99": round(pct(overhead, 99), 1)},
        "client_observed_ms": {"p50": round(pct(client, 50), 1), "p99": round(pct(client, 99), 1)},
        "hops_ms_p50": {h: round(pct(v, 50), 1) for h, v in hops.items()},
        "hops_ms_p99": {h: round(pct(v, 99), 1) for h, v in hops.items()},
        "ratio_end_to_end_vs_direct_p50": round(pct(e2e, 50) / baseline_ms, 2),
        "goal": "overhead p50 <= 100 ms, p99 <= 300 ms",
    }
    print(json.dumps(report, indent=2))
    return 0

"""Seconds per denoising step, adapter path vs fused path, and the one-time cost of a LoRA's
deltas, on the tiny sd15 model (ADR 0704, "Pre-merging the top 5").

    python -m bench lora [models_dir] [repeats]

``models_dir`` (default ``models``) must hold tiny-sd15 and tiny-sd15-lora-ink; tiny-sd15 is
copied into a temporary folder as a tier-1 model. Each figure is the median of ``repeats`` runs
(default 7) in this one process, 2 torch threads; runs alternate between the paths.
"""

from __future__ import annotations

import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from imagegen_gpu_worker.adapters.diffusers_runner import DiffusersRunner
from imagegen_gpu_worker.adapters.lora_premerge import Premerged
from imagegen_gpu_worker.domain.lora_usage import PremergeSettings
from imagegen_gpu_worker.domain.plan import RunPlan

SD15, INK = "tiny-sd15", "tiny-sd15-lora-ink"
STEPS = 20


def plan(size: int, loras: tuple[tuple[str, float], ...]) -> RunPlan:
    return RunPlan(
        job_id="bench",
        fencing_token=1,
        attempt=1,
        model_id=SD15,
        prompt="a red circle on a blue background",
        negative_prompt="blurry",
        width=size,
        height=size,
        steps=STEPS,
        guidance_scale=4.0,
        scheduler="euler",
        seed=7,
        num_images=1,
        progress_every=STEPS,
        loras=loras,
    )


def step_s(runner: DiffusersRunner, p: RunPlan) -> float:
    result = runner.run(p, lambda *_: None, lambda: False)
    return result.timings_ms["denoise"] / 1000 / STEPS


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    src = Path(args[0]) if args else Path("models")
    repeats = int(args[1]) if len(args) > 1 else 7
    torch.set_num_threads(2)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for name in (SD15, INK):
            shutil.copytree(src / name, root / name)
        manifest = root / SD15 / "model.json"
        manifest.write_text(json.dumps({**json.loads(manifest.read_text()), "tier": 1}))
        adapter = DiffusersRunner(root, premerge=PremergeSettings(enabled=False))
        fused = DiffusersRunner(root)
        lora = ((INK, 1.0),)
        for size in (64, 128):
            for r in (adapter, fused):  # warm: load, LoRA, deltas, first-run allocations
                step_s(r, plan(size, lora))
            state = fused.loaded[SD15].premerged
            assert state is not None and state.fused == (INK, 1.0), "not fused"
            times: dict[str, list[float]] = {"none": [], "adapter": [], "fused": []}
            for _ in range(repeats):
                times["none"].append(step_s(adapter, plan(size, ())))
                times["adapter"].append(step_s(adapter, plan(size, lora)))
                times["fused"].append(step_s(fused, plan(size, lora)))
            med = {k: statistics.median(v) for k, v in times.items()}
            print(
                f"{size}px {STEPS} steps, s/step median of {repeats}: no LoRA {med['none']:.4f}, "
                f"adapter {med['adapter']:.4f}, fused {med['fused']:.4f} "
                f"(fused/adapter {med['fused'] / med['adapter']:.2f})"
            )
        model = fused.loaded[SD15]
        model.premerged.restore()  # type: ignore[union-attr]
        adapter_name = model.loras[INK].adapter
        costs, restores = [], []
        for _ in range(repeats):
            state = Premerged()
            costs.append(state.add(INK, model.pipe, adapter_name))
            state.fuse(INK, 1.0)
            t0 = time.perf_counter()
            state.restore()
            restores.append((time.perf_counter() - t0) * 1000)
        print(
            f"deltas of {INK}: {statistics.median(costs):.2f} ms to compute (median of {repeats}),"
            f" {state.bytes} bytes with pristine copies ({len(state.pristine)} weights);"
            f" restore {statistics.median(restores):.3f} ms"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

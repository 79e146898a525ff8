"""Model loading on the worker, through its own runner (``DiffusersRunner``) on this machine.

    python -m bench models [--repeat 5] [--models-dir DIR]

For each model (the tiny test models of every family and the demo model):

- **cold load**: a fresh runner's ``load`` with no trust record (a worker's first load of the
  model: every file's sha256, then the pipeline read from disk), median of ``--repeat``;
  **cold load, trusted**: the same with the trust record that first load left (ADR 0707: files
  trusted by size and mtime, nothing hashed), what every later disk load costs;
- **integrity per load** (ADR 0707), the check alone on the same files: **full sha256**
  (``Integrity.full_check``: every file hashed, what the first load and the periodic check do)
  against **size+mtime trust** (``Integrity.verify`` with a record: a ``stat`` per file), each
  with its share of the cold load; ``integrity_full_vs_trusted_ratio`` is full / trusted;
- **reload from RAM**: the model loaded into a runner with a RAM tier (ADR 0705), then, each
  repeat, evicted (``evict``: into the RAM tier) and loaded again (timed: back from RAM), median
  of ``--repeat``; ``ram_vs_disk_ratio`` is cold load / RAM reload. On CPU the device *is* RAM:
  this measures skipping the disk read, the sha256 check and the pipeline's construction, not a
  host-to-device copy (on CUDA it would include ``pipe.to(device)``).

For the LoRAs (``tiny-sd15-lora-ink`` and ``-glow`` on ``tiny-sd15``):

- **LoRA load**: the first job naming it, minus a job without (the runner's ``load`` timing);
- **LoRA switch**: ``set_adapters`` from one active set to another on the loaded pipeline (what
  the runner calls before each job with LoRAs), against the baseline ``disable_lora`` (what a job
  without calls).

The models are built into a temporary folder by the model zoo (seeded) unless ``--models-dir``
names a folder that holds them. Figures are medians; ratios are against the baseline measured in
the same process.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

MODELS = ("tiny-sd15", "tiny-sdxl", "tiny-sd3", "tiny-flux")
ROOT = Path(__file__).resolve().parents[1]


def _ms(fn, *args) -> float:  # type: ignore[no-untyped-def]
    t0 = time.perf_counter()
    fn(*args)
    return (time.perf_counter() - t0) * 1000


def _cold_load(models_dir: Path, name: str, trust_dir: Path | None = None) -> None:
    """A fresh runner's load; with ``trust_dir``, trusting the records kept there."""
    from imagegen_gpu_worker.adapters import registry
    from imagegen_gpu_worker.adapters.diffusers_runner import DiffusersRunner

    integrity = registry.Integrity(registry.TrustStore(trust_dir))
    DiffusersRunner(models_dir, integrity=integrity).load(name)


def _ram_reloads(models_dir: Path, name: str, repeat: int) -> list[float]:
    """Evict then reload ``name`` through a runner with a RAM tier: the reloads' ms."""
    from imagegen_gpu_worker.adapters.diffusers_runner import DiffusersRunner

    runner = DiffusersRunner(models_dir, ram_cache_bytes=1 << 30)
    runner.load(name)
    reloads = []
    for _ in range(repeat):
        assert runner.evict(name) == "evicted" and [m for m, _ in runner.in_ram()] == [name]
        reloads.append(_ms(runner.load, name))
    return reloads


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench models", description=__doc__)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--models-dir", type=Path, default=None)
    args = parser.parse_args(argv)

    from imagegen_gpu_worker.adapters import registry
    from imagegen_gpu_worker.adapters.diffusers_runner import DiffusersRunner
    from imagegen_gpu_worker.adapters.ml import import_all
    from imagegen_gpu_worker.domain.plan import RunPlan
    from imagegen_gpu_worker.domain.samplers import class_names
    from imagegen_model_zoo.build import build_all

    import_all(class_names())  # the ML stack's import is not a load
    with tempfile.TemporaryDirectory() as tmp:
        models_dir = args.models_dir or Path(tmp)
        if args.models_dir is None:
            build_all(models_dir)
        demo = ROOT / "models" / "shapes-demo"
        names = list(MODELS)
        if args.models_dir is None and (demo / "model.json").exists():
            (models_dir / "shapes-demo").symlink_to(demo)
            names.append("shapes-demo")

        rows = {}
        for name in names:
            folder = models_dir / name
            loads = [_ms(_cold_load, models_dir, name) for _ in range(args.repeat)]
            trust_dir = Path(tmp) / ".trust" / name
            _cold_load(models_dir, name, trust_dir)  # the first load: hashes, keeps the record
            trusted_loads = [
                _ms(_cold_load, models_dir, name, trust_dir) for _ in range(args.repeat)
            ]
            full = registry.Integrity()
            fulls = [_ms(full.full_check, folder) for _ in range(args.repeat)]
            trusting = registry.Integrity(registry.TrustStore(trust_dir))
            trusts = [_ms(trusting.verify, folder) for _ in range(args.repeat)]
            size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
            reload = statistics.median(_ram_reloads(models_dir, name, args.repeat))
            load, trusted_load = statistics.median(loads), statistics.median(trusted_loads)
            check, trust = statistics.median(fulls), statistics.median(trusts)
            rows[name] = {
                "files_mb": round(size / 1e6, 2),
                "cold_load_ms": round(load, 1),
                "cold_load_trusted_ms": round(trusted_load, 1),
                "integrity_full_sha256_ms": round(check, 2),
                "integrity_full_share_of_load": round(check / load, 3),
                "integrity_trusted_ms": round(trust, 3),
                "integrity_trusted_share_of_load": round(trust / trusted_load, 4),
                "integrity_full_vs_trusted_ratio": round(check / trust, 1) if trust else None,
                "reload_from_ram_ms": round(reload, 3),
                "ram_vs_disk_ratio": round(load / reload, 1) if reload else None,
            }

        runner = DiffusersRunner(models_dir)

        def plan(loras: tuple[tuple[str, float], ...], n: int) -> RunPlan:
            return RunPlan(
                f"bench-{n}",
                1,
                1,
                "tiny-sd15",
                "a red circle",
                "",
                64,
                64,
                2,
                5.0,
                "euler",
                1,
                1,
                1,
                loras,
            )

        def job(loras: tuple[tuple[str, float], ...], n: int) -> float:
            result = runner.run(plan(loras, n), lambda *a: None, lambda: False)
            return float(result.timings_ms["load"])

        job((), 0)  # the model itself, warm from here on
        ink, glow = "tiny-sd15-lora-ink", "tiny-sd15-lora-glow"
        lora_loads = [job(((ink, 1.0),), 1), job(((glow, 1.0),), 2)]
        pipe = runner.loaded["tiny-sd15"].pipe
        names_loaded = [lo.adapter for lo in runner.loaded["tiny-sd15"].loras.values()]
        switches, offs = [], []
        for i in range(args.repeat):
            switches.append(_ms(pipe.set_adapters, names_loaded[i % 2 :][:1], [1.0]))
            offs.append(_ms(pipe.disable_lora))
            pipe.enable_lora()
        switch, off = statistics.median(switches), statistics.median(offs)
        loras = {
            "lora_load_ms": [round(x, 1) for x in lora_loads],
            "lora_switch_ms": round(switch, 2),
            "baseline_disable_lora_ms": round(off, 2),
            "switch_vs_baseline_ratio": round(switch / off, 2) if off else None,
        }
    print(json.dumps({"models": rows, "loras": loras}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))

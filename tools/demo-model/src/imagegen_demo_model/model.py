"""The committed shapes demo model: where it lives, its ``model.json`` fields, its loader.

The manifest format, the sha256 checks and the loading are the gpu-worker's model registry
(:mod:`imagegen_gpu_worker.adapters.registry`): the demo is registered and loaded exactly like
any model the worker serves.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from imagegen_gpu_worker.adapters import registry
from imagegen_gpu_worker.domain.samplers import supported

from . import layout

MODEL_ID = "shapes-demo"
# The manifest's "created": fixed, so rewriting the manifest of the same files changes nothing.
CREATED = 1764547200
# The sd15 samplers this model runs: all but dpmpp_2m_karras, which fails on its
# zero-terminal-SNR schedule (IndexError in diffusers; services/gpu-worker/tests).
SAMPLERS = tuple(name for name in supported("sd15") if name != "dpmpp_2m_karras")
# tools/demo-model/src/imagegen_demo_model/model.py -> the repository's models/shapes-demo
DEFAULT_MODEL_DIR = Path(__file__).resolve().parents[4] / "models" / MODEL_ID


def write_manifest(model_dir: Path, model_id: str = MODEL_ID) -> registry.ModelEntry:
    """The demo's ``model.json``: every file's sha256 and the fields its documented figures
    use (64 px, 25 steps, guidance 5), with the layout map's preview colours; a tier-1 base
    model with the samplers it runs."""
    return registry.write_manifest(
        model_dir,
        id=model_id,
        family="sd15",
        pipeline="StableDiffusionPipeline",
        default_size=64,
        default_steps=25,
        default_guidance=5.0,
        preview=layout.PREVIEW,
        kind="base",
        tier=1,
        samplers=SAMPLERS,
        created=CREATED,
    )


def load_pipeline(model_dir: Path | str = DEFAULT_MODEL_DIR, device: str = "cpu") -> Any:
    """Verify every file of ``model_dir`` against its ``model.json``, then load it, offline."""
    return registry.load_pipeline(Path(model_dir), device)

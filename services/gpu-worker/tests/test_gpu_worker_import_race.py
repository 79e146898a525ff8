"""The first job after a restart races the warm-up thread's import of diffusers.

Regression (issue 10): the first job after every gpu-worker restart failed with
``AttributeError: module 'diffusers' has no attribute 'DDIMScheduler'``. diffusers' package
``__init__`` replaces itself in ``sys.modules`` with a lazy module as its last statement; an
``import diffusers`` in a second thread while the first is still executing that ``__init__``
waits for it, then hands back the *replaced* half-initialised module, which has none of the
lazy attributes. Only a fresh interpreter has not imported diffusers yet, so the race runs in a
subprocess: the warm-up thread is held inside diffusers' ``__init__`` (an import hook gates its
first submodule) until the job's thread starts its run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

DEMO_MODEL_DIR = Path(__file__).resolve().parents[3] / "models" / "shapes-demo"

SCRIPT = """
import importlib.abc, json, sys, threading, traceback
from pathlib import Path

from imagegen_gpu_worker.adapters.diffusers_runner import DiffusersRunner
from imagegen_gpu_worker.domain.plan import RunPlan

assert "diffusers" not in sys.modules
inside_init = threading.Event()  # the warm-up thread is executing diffusers/__init__.py
job_started = threading.Event()


class HoldWarmUpInsideDiffusersInit(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "diffusers.utils" and threading.current_thread().name == "warm-up":
            inside_init.set()
            job_started.wait(60)
        return None  # the normal finders do the import


sys.meta_path.insert(0, HoldWarmUpInsideDiffusersInit())
models = Path(sys.argv[1])
runner = DiffusersRunner(models.parent)
plan = RunPlan(
    job_id="first-job", fencing_token=1, attempt=1, model_id=models.name,
    prompt="a red circle on a blue background", negative_prompt="", width=64, height=64,
    steps=2, guidance_scale=5.0, scheduler="ddim", seed=0, num_images=1, progress_every=1,
)
errors = {}


def warm_up():
    try:
        runner.warm_up(None)
    except BaseException:
        errors["warm-up"] = traceback.format_exc()


def first_job():
    inside_init.wait(60)
    job_started.set()
    try:
        result = runner.run(plan, lambda step, total, preview: None, lambda: False)
        assert len(result.images_png) == 1
    except BaseException:
        errors["job"] = traceback.format_exc()


threads = [threading.Thread(target=warm_up, name="warm-up"), threading.Thread(target=first_job)]
for t in threads:
    t.start()
for t in threads:
    t.join()
print(json.dumps({"hold_reached": inside_init.is_set(), "errors": errors}))
"""


@pytest.mark.timeout(900)  # ~15 s on a quiet machine; minutes when 2 cores are shared
def test_the_first_job_runs_while_the_warm_up_thread_is_still_importing_diffusers() -> None:
    pytest.importorskip("diffusers")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "2"}
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(DEMO_MODEL_DIR)],
        env=env,
        capture_output=True,
        text=True,
        timeout=840,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["hold_reached"], "the warm-up thread never entered diffusers' __init__"
    assert result["errors"] == {}, "\n".join(result["errors"].values())

"""Every model family through the whole stack: each sampler a family runs makes an image, each
one it does not run is refused at the edge, and /v1/models says which is which (issue 12)."""

from __future__ import annotations

import io
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from PIL import Image

from imagegen_gpu_worker.domain.samplers import SAMPLERS, supported
from imagegen_schemas.common import SCHEDULERS

from .conftest import RunningStack

pytestmark = pytest.mark.e2e
FAMILIES = {"tiny-sd15": "sd15", "tiny-sdxl": "sdxl", "tiny-sd3": "sd3", "tiny-flux": "flux"}


def test_models_lists_every_family_with_the_samplers_its_worker_runs(stack: RunningStack) -> None:
    with stack.client() as c:
        r = c.get("/v1/models")
    assert r.status_code == 200, r.text
    listed = {m["id"]: m for m in r.json()["data"]}
    for model_id, family in FAMILIES.items():
        entry = listed[model_id]
        assert (entry["family"], entry["kind"], entry["owned_by"]) == (family, "base", "imagegen")
        assert entry["samplers"] == [s for s in SCHEDULERS if s in supported(family)]


def generate(stack: RunningStack, model_id: str, sampler: str) -> tuple[str, str, dict]:  # type: ignore[type-arg]
    body = {
        "prompt": "a red circle",
        "model": model_id,
        "scheduler": sampler,
        "steps": 4,
        "seed": 7,
    }
    with stack.client() as c:
        r = c.post("/v1/generations", json=body)
    assert r.status_code == 202, (model_id, sampler, r.text)
    return model_id, sampler, stack.wait_terminal(r.json()["id"], timeout_s=300)


def test_every_family_makes_an_image_with_every_sampler_it_runs(stack: RunningStack) -> None:
    pairs = [(m, s) for m, family in FAMILIES.items() for s in sorted(supported(family))]
    assert len(pairs) >= 4 + 3  # every family, and more than one sampler on some
    with ThreadPoolExecutor(8) as pool:
        done = list(pool.map(lambda pair: generate(stack, *pair), pairs))
    for model_id, sampler, job in done:
        assert job.get("status") == "delivered", (model_id, sampler, job)
        png = httpx.get(job["images"][0]["url"], timeout=30)
        assert png.status_code == 200, (model_id, sampler)
        assert Image.open(io.BytesIO(png.content)).size == (64, 64), (model_id, sampler)


def test_a_sampler_a_family_cannot_run_is_refused_naming_the_pair(stack: RunningStack) -> None:
    refused = [
        (m, s) for m, family in FAMILIES.items() for s in SCHEDULERS if s not in supported(family)
    ]
    assert refused, "sd3 and flux do not run every sampler"
    with stack.client() as c:
        for model_id, sampler in refused:
            body = {"prompt": "a red circle", "model": model_id, "scheduler": sampler}
            r = c.post("/v1/generations", json=body)
            assert r.status_code == 422, (model_id, sampler, r.text)
            [problem] = r.json()["detail"]
            assert f"{sampler!r} cannot run on model {model_id!r}" in problem["msg"]
    assert set(SAMPLERS) == {"sd15", "sdxl", "sd3", "flux"}

"""The main job through the whole stack: HTTP in, moderated image out, and its guarantees."""

from __future__ import annotations

import base64
import io
import uuid
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
from PIL import Image

from imagegen.replay import high_watermarks, read

from .conftest import RunningStack

pytestmark = pytest.mark.e2e
MODEL = "tiny-random"


def direct_diffusers(
    stack: RunningStack, prompt: str, seed: int, steps: int, guidance: float
) -> np.ndarray:
    """The same generation as a plain diffusers call, in this process."""
    import torch
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(
        stack.models / MODEL,
        safety_checker=None,
        requires_safety_checker=False,
        local_files_only=True,
    )
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    image = pipe(
        prompt=prompt,
        width=64,
        height=64,
        num_inference_steps=steps,
        guidance_scale=guidance,
        generator=torch.Generator("cpu").manual_seed(seed),
    ).images[0]
    return np.asarray(image)


def test_prompt_in_image_out_equals_a_direct_diffusers_call(stack: RunningStack) -> None:
    prompt, seed, steps = "a red circle on a blue background", 1234, 6
    with stack.client() as c:
        r = c.post(
            "/v1/generations",
            json={
                "prompt": prompt,
                "model": MODEL,
                "steps": steps,
                "seed": seed,
                "guidance_scale": 5.0,
                "width": 64,
                "height": 64,
            },
        )
        assert r.status_code == 202, r.text
        job_id = r.json()["id"]
        events = []
        with c.stream("GET", f"/v1/generations/{job_id}/events", timeout=180) as stream:
            for line in stream.iter_lines():
                if line.startswith("event: "):
                    events.append(line.removeprefix("event: "))
    done = stack.wait_terminal(job_id)
    assert done["status"] == "delivered", done
    assert events[-1] == "delivered" and "started" in events and "step" in events
    url = done["images"][0]["url"]
    png = httpx.get(url, timeout=30)
    assert png.status_code == 200 and png.content[:8] == b"\x89PNG\r\n\x1a\n"
    got = np.asarray(Image.open(io.BytesIO(png.content)).convert("RGB"))
    want = direct_diffusers(stack, prompt, seed, steps, 5.0)
    assert got.shape == want.shape == (64, 64, 3)
    assert np.array_equal(got, want), f"max pixel difference {np.abs(got - want).max()}"
    assert {"requested->prompt_moderated", "total"} <= set(done["timings_ms"]["stages"])


def test_fifty_concurrent_submissions_with_one_idempotency_key_make_one_job(
    stack: RunningStack,
) -> None:
    key = f"idem-{uuid.uuid4()}"
    body = {
        "prompt": "a small green triangle on the left, white background",
        "model": MODEL,
        "steps": 2,
        "seed": 5,
    }

    def submit(_: int) -> httpx.Response:
        with stack.client() as c:
            return c.post("/v1/generations", json=body, headers={"Idempotency-Key": key})

    # ADR 0600: 202 with the same body for every identical request, or 409 while the first
    # one is still in flight (a retry then gets the 202); never 422.
    with ThreadPoolExecutor(max_workers=50) as pool:
        answers = list(pool.map(submit, range(50)))
    assert {r.status_code for r in answers} <= {202, 409}, {
        r.text for r in answers if r.status_code not in (202, 409)
    }
    answers = [r if r.status_code == 202 else submit(0) for r in answers]
    assert {r.status_code for r in answers} == {202}
    assert len({r.text for r in answers}) == 1, "identical retries got different answers"
    ids = {r.json()["id"] for r in answers}
    assert len(ids) == 1
    assert sum(r.headers.get("Idempotent-Replayed") != "true" for r in answers) == 1
    job_id = ids.pop()
    assert stack.wait_terminal(job_id)["status"] == "delivered"
    requested = [
        e for e in read_topic(stack, "imagegen.jobs.requested") if e["correlation_id"] == job_id
    ]
    assert len(requested) == 1, "more than one GenerationRequested for one idempotency key"
    with stack.client() as c:
        other = c.post(
            "/v1/generations", json={**body, "seed": 6}, headers={"Idempotency-Key": key}
        )
    assert other.status_code == 422 and "Idempotency-Key" in other.text


def read_topic(stack: RunningStack, topic: str) -> list[dict]:  # type: ignore[type-arg]
    """Every well-formed envelope of a topic, from the start to its current end, as JSON."""
    ends = high_watermarks(stack.kafka_bootstrap, (topic,))
    return [r.envelope.model_dump(mode="json") for r in read(stack.kafka_bootstrap, ends)]


def total_records(stack: RunningStack, topic: str) -> int:
    return sum(high_watermarks(stack.kafka_bootstrap, (topic,)).values())


GOOD = {"prompt": "a yellow star", "model": MODEL, "steps": 2}
BOUNDS = [
    ({"prompt": ""}, ["body", "prompt"]),
    ({"prompt": "x" * 2001}, ["body", "prompt"]),
    ({"width": 60}, ["body", "width"]),
    ({"height": 2048}, ["body", "height"]),
    ({"width": 0}, ["body", "width"]),
    ({"steps": 0}, ["body", "steps"]),
    ({"steps": 151}, ["body", "steps"]),
    ({"guidance_scale": -0.1}, ["body", "guidance_scale"]),
    ({"guidance_scale": 30.5}, ["body", "guidance_scale"]),
    ({"num_images": 0}, ["body", "num_images"]),
    ({"num_images": 5}, ["body", "num_images"]),
    ({"model": "no-such-model"}, ["body", "model"]),
    ({"scheduler": "no-such-sampler"}, ["body", "scheduler"]),
    ({"loras": [{"name": "no-such-lora"}]}, ["body", "loras", 0, "name"]),
    ({"loras": [{"name": "a"}, {"name": "b"}, {"name": "c"}, {"name": "d"}]}, ["body", "loras"]),
    (
        {"controlnets": [{"type": "no-such", "image": "file:///x.png"}]},
        ["body", "controlnets", 0, "type"],
    ),
    (
        {
            "controlnets": [
                {
                    "type": "canny",
                    "image": "file:///x.png",
                    "start_percent": 0.8,
                    "end_percent": 0.2,
                }
            ]
        },
        ["body", "controlnets", 0],
    ),
    ({"seed": -1}, ["body", "seed"]),
    ({"unknown_field": 1}, ["body", "unknown_field"]),
]


@pytest.mark.parametrize(("change", "loc"), BOUNDS, ids=[str(b[1][1:]) for b in BOUNDS])
def test_every_bound_answers_422_naming_the_field_and_publishes_nothing(
    stack: RunningStack, change: dict, loc: list
) -> None:  # type: ignore[type-arg]
    before = total_records(stack, "imagegen.jobs.requested")
    with stack.client() as c:
        r = c.post("/v1/generations", json={**GOOD, **change})
    assert r.status_code == 422, r.text
    detail = r.json()["detail"]
    assert any(d["loc"][: len(loc)] == loc and d["msg"] for d in detail), detail
    assert total_records(stack, "imagegen.jobs.requested") == before


def test_auth_and_ownership(stack: RunningStack) -> None:
    with httpx.Client(base_url=stack.api) as anon:
        assert anon.post("/v1/generations", json=GOOD).status_code == 401
        assert (
            anon.post(
                "/v1/generations", json=GOOD, headers={"Authorization": "Bearer nope"}
            ).status_code
            == 401
        )
    with stack.client() as c:
        job_id = c.post("/v1/generations", json=GOOD).json()["id"]
    with stack.client(stack.new_key("free")) as other:
        assert other.get(f"/v1/generations/{job_id}").status_code == 404
        assert other.delete(f"/v1/generations/{job_id}").status_code == 404
    with stack.client() as c:
        assert c.get(f"/v1/generations/{uuid.uuid4()}").status_code == 404


def test_openai_python_client_gets_an_image(stack: RunningStack) -> None:
    from openai import OpenAI

    client = OpenAI(base_url=f"{stack.api}/v1", api_key=stack.key, timeout=180)
    result = client.images.generate(
        prompt="a purple square at the bottom",
        model=MODEL,
        size="64x64",
        n=1,
        response_format="b64_json",
    )
    png = base64.b64decode(result.data[0].b64_json)
    assert Image.open(io.BytesIO(png)).size == (64, 64)
    by_url = client.images.generate(prompt="a white ring", model=MODEL, size="64x64")
    assert httpx.get(by_url.data[0].url, timeout=30).status_code == 200


def test_cancel_stops_a_running_job_at_a_step_boundary(stack: RunningStack) -> None:
    model = "shapes-demo" if (stack.models / "shapes-demo").exists() else MODEL
    with stack.client() as c:
        r = c.post(
            "/v1/generations",
            json={
                "prompt": "a red circle on a blue background",
                "model": model,
                "steps": 150,
                "seed": 3,
            },
        )
        job_id = r.json()["id"]
        with c.stream("GET", f"/v1/generations/{job_id}/events", timeout=120) as stream:
            for line in stream.iter_lines():
                if line == "event: step":
                    break
        assert c.delete(f"/v1/generations/{job_id}").status_code == 202
    done = stack.wait_terminal(job_id)
    assert done["status"] == "cancelled", done
    assert done["progress"]["step"] < 150
    with stack.client() as c:
        assert c.delete(f"/v1/generations/{job_id}").status_code == 409

"""The worker's spans of a run (ADR 0800): ``model load`` and one ``denoise`` span for the loop,
with its steps and family and one ``step`` event per step, inside the job's span; exported over
OTLP/HTTP to the in-process receiver. The real runner on the zoo's tiny sd15 model (CPU)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from opentelemetry import trace

from imagegen_gpu_worker.adapters.diffusers_runner import DiffusersRunner
from imagegen_gpu_worker.domain.plan import RunPlan
from imagegen_runtime.tracing import JOB_ID
from tests.support.otlp import OtlpReceiver, exporting_to

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def receiver() -> Iterator[OtlpReceiver]:
    with OtlpReceiver() as r:
        yield r


def test_a_run_has_a_model_load_and_a_denoise_span_with_a_step_event_each(
    zoo: Path, receiver: OtlpReceiver
) -> None:
    torch.set_num_threads(2)
    runner = DiffusersRunner(zoo)
    job = str(uuid.uuid4())
    plan = RunPlan(
        job_id=job,
        fencing_token=1,
        attempt=1,
        model_id="tiny-sd15",
        prompt="a red circle",
        negative_prompt="",
        width=64,
        height=64,
        steps=3,
        guidance_scale=4.0,
        scheduler="ddim",
        seed=7,
        num_images=1,
        progress_every=1,
    )
    with exporting_to(receiver) as exported:
        with trace.get_tracer("test").start_as_current_span(
            "consume imagegen.job.scheduled", attributes={JOB_ID: job}
        ) as parent:
            result = runner.run(plan, lambda *_: None, lambda: False)
        exported.flush()
        trace_id = f"{parent.get_span_context().trace_id:032x}"
        spans = receiver.wait_for(lambda r: len(r.trace(trace_id)) >= 3 and r.trace(trace_id), 10)
    assert len(result.images_png) == 1
    by_name = {s.name: s for s in spans}
    load, denoise = by_name["model load"], by_name["denoise"]
    parent_id = f"{parent.get_span_context().span_id:016x}"
    assert load.parent_id == parent_id and denoise.parent_id == parent_id
    assert load.attributes["imagegen.model.warm"] is False
    assert load.end_ns <= denoise.start_ns
    assert denoise.attributes["imagegen.steps"] == 3
    assert denoise.attributes["imagegen.family"] == "sd15"
    assert denoise.attributes["imagegen.sampler"] == "ddim"
    assert denoise.events == ("step", "step", "step")
    assert load.job_id == denoise.job_id == job  # inherited from the job's span

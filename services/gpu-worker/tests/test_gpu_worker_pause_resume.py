"""Pause at a step boundary and resume elsewhere: the committed demo model on CPU, small steps.

A job paused after k steps and resumed in a fresh runner (as on another worker) must give the
same PNG bytes as the same job run by a plain diffusers pipeline call, for the default sampler,
multistep samplers and a stochastic one; a sampler that cannot resume exactly is never paused.
Two runners load the demo once each (~2-5 s); every run is 64 px, 5 steps (~0.1 s).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from imagegen_gpu_worker.adapters import diffusers_runner as dr
from imagegen_gpu_worker.adapters.blobs import InMemoryBlobStore
from imagegen_gpu_worker.adapters.diffusers_runner import (
    SAMPLERS,
    BadResumeState,
    DiffusersRunner,
    encode_png,
)
from imagegen_gpu_worker.domain.plan import RunPlan, plan_run
from imagegen_gpu_worker.domain.run import RESUMABLE, Paused, RunResult
from imagegen_gpu_worker.service_layer.worker import Worker, WorkerState
from imagegen_runtime.publishing import InMemoryPublisher
from imagegen_schemas import Envelope, GenerationParams, Payload, Tier
from imagegen_schemas import jobs as ev

torch = pytest.importorskip("torch")
# The committed demo model (models/shapes-demo), a registered model like any other.
DEFAULT_MODEL_DIR = Path(__file__).resolve().parents[3] / "models" / "shapes-demo"
pytestmark = pytest.mark.unit

MODEL = DEFAULT_MODEL_DIR.name
STEPS = 5


@pytest.fixture(scope="module")
def runners() -> tuple[DiffusersRunner, DiffusersRunner]:
    """Two runners with their own pipelines: the one that pauses, the one that resumes."""
    torch.set_num_threads(2)
    a, b = DiffusersRunner(DEFAULT_MODEL_DIR.parent), DiffusersRunner(DEFAULT_MODEL_DIR.parent)
    a.load(MODEL)
    b.load(MODEL)
    return a, b


def params(sampler: str, num_images: int = 1, seed: int = 7) -> GenerationParams:
    return GenerationParams(
        prompt="a red circle on a blue background",
        model=MODEL,
        width=64,
        height=64,
        steps=STEPS,
        guidance_scale=5.0,
        scheduler=sampler,
        seed=seed,
        num_images=num_images,
    )


def assignment(
    p: GenerationParams, token: int = 1, worker: str = "w1", resume: ev.ResumeFrom | None = None
) -> ev.JobScheduled:
    return ev.JobScheduled(
        job_id="j", worker_id=worker, fencing_token=token, tier=Tier.RELAX, params=p, resume=resume
    )


def plain_pipeline_pngs(runner: DiffusersRunner, p: GenerationParams) -> list[bytes]:
    """The reference: the diffusers pipeline called directly, no callback, no runner."""
    import diffusers

    model = runner.load(MODEL)
    cls_name, extra = SAMPLERS[p.scheduler]
    model.pipe.scheduler = getattr(diffusers, cls_name).from_config(model.scheduler_config, **extra)
    with torch.inference_mode():
        out = model.pipe(
            prompt=p.prompt,
            width=p.width,
            height=p.height,
            num_inference_steps=p.steps,
            guidance_scale=p.guidance_scale,
            num_images_per_prompt=p.num_images,
            generator=torch.Generator("cpu").manual_seed(p.seed),
        )
    return [encode_png(image) for image in out.images]


def nothing(*_: Any) -> None:
    return None


def never() -> bool:
    return False


def after(k: int) -> Callable[[], bool]:
    """A pause request that is true from the k-th step boundary on."""
    seen = [0]

    def pause() -> bool:
        seen[0] += 1
        return seen[0] >= k

    return pause


@pytest.mark.parametrize(
    ("sampler", "k", "num_images"),
    [
        ("ddim", 2, 2),  # the default sampler, a batch of two
        ("dpmpp_2m", 3, 1),  # multistep: its history of model outputs is part of the state
        ("unipc", 1, 1),  # multistep with a corrector (last sample, order)
        ("euler_a", 4, 1),  # stochastic: the generator's state is part of the state
        ("pndm", 6, 1),  # 5 steps are 11 sampler steps (Runge-Kutta warm-up): pause within it
    ],
)
def test_paused_and_resumed_in_a_fresh_runner_gives_the_plain_pipelines_bytes(
    runners: tuple[DiffusersRunner, DiffusersRunner], sampler: str, k: int, num_images: int
) -> None:
    a, b = runners
    p = params(sampler, num_images)
    plan = plan_run(assignment(p))
    reference = plain_pipeline_pngs(a, p)
    assert a.run(plan, nothing, never, never).images_png == reference  # unpaused: unchanged

    with pytest.raises(Paused) as paused:
        a.run(plan, nothing, never, after(k))
    assert paused.value.steps_done == k < paused.value.total_steps

    steps: list[int] = []
    resumed = b.run(
        plan,
        lambda step, total, preview: steps.append(step),
        never,
        resume_state=paused.value.state,
    )
    assert resumed.images_png == reference
    assert steps and steps[0] > k, "the resumed run repeated steps done before the pause"


def test_a_sampler_not_known_to_resume_exactly_is_never_paused(
    runners: tuple[DiffusersRunner, DiffusersRunner], monkeypatch: pytest.MonkeyPatch
) -> None:
    a, _ = runners
    p = params("euler")
    monkeypatch.setattr(dr, "RESUMABLE", frozenset(SAMPLERS) - {"euler"})
    result = a.run(plan_run(assignment(p)), nothing, never, lambda: True)
    assert result.images_png == plain_pipeline_pngs(a, p)


def test_saved_state_is_refused_for_another_plan(
    runners: tuple[DiffusersRunner, DiffusersRunner],
) -> None:
    a, b = runners
    with pytest.raises(Paused) as paused:
        a.run(plan_run(assignment(params("ddim"))), nothing, never, after(2))
    other = plan_run(assignment(params("ddim", seed=8)))
    with pytest.raises(BadResumeState, match="does not match"):
        b.run(other, nothing, never, resume_state=paused.value.state)


def test_each_run_builds_its_sampler_from_the_models_config_not_the_previous_runs(
    runners: tuple[DiffusersRunner, DiffusersRunner],
) -> None:
    """Otherwise dpmpp_2m after dpmpp_2m_karras kept Karras sigmas: a job's pixels depended on
    what its worker ran before, and a resume elsewhere could not be exact."""
    a, b = runners
    with pytest.raises(IndexError):  # karras fails on the demo's zero-terminal-SNR schedule
        a.run(plan_run(assignment(params("dpmpp_2m_karras"))), nothing, never)
    p = params("dpmpp_2m")
    assert a.run(plan_run(assignment(p)), nothing, never).images_png == plain_pipeline_pngs(b, p)


# ---- the worker: PreemptionRequested -> GenerationPaused -> resumed assignment -------------


class PausingPublisher(InMemoryPublisher):
    """Delivers a PreemptionRequested to the worker when the run reports step ``at_step`` (as
    the control loop would, mid-run)."""

    def __init__(self, at_step: int, request: ev.PreemptionRequested) -> None:
        super().__init__()
        self.at_step, self.request = at_step, request
        self.worker: Worker | None = None

    async def publish(self, payload: Payload, **kw: Any) -> Envelope:
        envelope = await super().publish(payload, **kw)
        if isinstance(payload, ev.StepProgressed) and payload.step == self.at_step:
            assert self.worker is not None
            await self.worker.on_preempt(wrap(self.request), self.request)
        return envelope


def wrap(payload: Payload) -> Envelope:
    return Envelope.wrap(payload, correlation_id="j", producer="test")


def of(publisher: InMemoryPublisher, kind: type[Payload]) -> list[Any]:
    return [
        kind.model_validate(r.envelope.data)
        for r in publisher.records
        if r.envelope.type == kind.event_type
    ]


async def test_worker_pauses_at_the_boundary_it_hears_the_request_and_another_resumes_it(
    runners: tuple[DiffusersRunner, DiffusersRunner],
) -> None:
    a, b = runners
    blobs = InMemoryBlobStore()
    p = params("dpmpp_2m")
    request = ev.PreemptionRequested(job_id="j", worker_id="w1", fencing_token=1, reason="t")
    pub1 = PausingPublisher(2, request)
    first = Worker(WorkerState("w1"), a, blobs, pub1)
    pub1.worker = first
    await first.on_assignment(wrap(assignment(p)), assignment(p))

    [paused] = of(pub1, ev.GenerationPaused)
    assert (paused.fencing_token, paused.steps_done, paused.total_steps) == (1, 2, STEPS)
    assert of(pub1, ev.ImageGenerated) == [] and first.state.running_job is None
    assert hashlib.sha256(blobs.get(paused.state_uri)).hexdigest() == paused.state_sha256

    pub2 = InMemoryPublisher()
    second = Worker(WorkerState("w2"), b, blobs, pub2)
    resume = ev.ResumeFrom(
        steps_done=paused.steps_done, state_uri=paused.state_uri, state_sha256=paused.state_sha256
    )
    again = assignment(p, token=2, worker="w2", resume=resume)
    await second.on_assignment(wrap(again), again)
    [image] = of(pub2, ev.ImageGenerated)
    assert blobs.get(image.images[0].uri) == plain_pipeline_pngs(a, p)[0]
    assert [s.step for s in of(pub2, ev.StepProgressed)] == [3, 4, 5]


class ScriptedRunner:
    """A runner without a model: five steps; pauses when asked; records what it was given."""

    def __init__(self) -> None:
        self.resume_states: list[bytes | None] = []

    def run(
        self,
        plan: RunPlan,
        on_step: Callable[[int, int, str | None], None],
        cancelled: Callable[[], bool],
        pause: Callable[[], bool] | None = None,
        resume_state: bytes | None = None,
    ) -> RunResult:
        self.resume_states.append(resume_state)
        for step in range(1, plan.steps + 1):
            on_step(step, plan.steps, None)
            if pause is not None and plan.scheduler in RESUMABLE and step < plan.steps and pause():
                raise Paused(plan.job_id, step, plan.steps, b"state")
        return RunResult([b"png"], {}, plan.steps)


@pytest.mark.parametrize(("request_token", "request_job"), [(1, "j"), (2, "other")])
async def test_a_request_for_an_older_token_or_another_job_is_ignored(
    request_token: int, request_job: str
) -> None:
    """The worker runs token 2 of job j; a request for token 1 (superseded) or another job
    does not pause it."""
    request = ev.PreemptionRequested(
        job_id=request_job, worker_id="w1", fencing_token=request_token
    )
    pub = PausingPublisher(2, request)
    worker = Worker(WorkerState("w1"), ScriptedRunner(), InMemoryBlobStore(), pub)
    pub.worker = worker
    job = assignment(params("ddim"), token=2)
    await worker.on_assignment(wrap(job), job)
    assert of(pub, ev.GenerationPaused) == [] and len(of(pub, ev.ImageGenerated)) == 1


async def test_a_request_for_the_running_token_pauses_the_scripted_run() -> None:
    """The positive control of the test above, with the same runner."""
    request = ev.PreemptionRequested(job_id="j", worker_id="w1", fencing_token=2)
    pub = PausingPublisher(2, request)
    worker = Worker(WorkerState("w1"), ScriptedRunner(), InMemoryBlobStore(), pub)
    pub.worker = worker
    job = assignment(params("ddim"), token=2)
    await worker.on_assignment(wrap(job), job)
    assert [x.steps_done for x in of(pub, ev.GenerationPaused)] == [2]
    assert of(pub, ev.ImageGenerated) == []


async def test_pausing_a_sampler_that_cannot_resume_exactly_is_refused_and_said(
    caplog: pytest.LogCaptureFixture,
) -> None:
    request = ev.PreemptionRequested(job_id="j", worker_id="w1", fencing_token=1)
    pub = PausingPublisher(2, request)
    worker = Worker(WorkerState("w1"), ScriptedRunner(), InMemoryBlobStore(), pub)
    pub.worker = worker
    job = assignment(params("dpmpp_2m_karras"))
    with caplog.at_level(logging.WARNING):
        await worker.on_assignment(wrap(job), job)
    assert of(pub, ev.GenerationPaused) == [] and len(of(pub, ev.ImageGenerated)) == 1
    assert any("pause refused: sampler dpmpp_2m_karras" in r.getMessage() for r in caplog.records)


async def test_a_request_heard_before_the_run_starts_pauses_it_at_the_first_boundary() -> None:
    pub = InMemoryPublisher()
    worker = Worker(WorkerState("w1"), ScriptedRunner(), InMemoryBlobStore(), pub)
    request = ev.PreemptionRequested(job_id="j", worker_id="w1", fencing_token=1)
    await worker.on_preempt(wrap(request), request)
    job = assignment(params("ddim"))
    await worker.on_assignment(wrap(job), job)
    assert [x.steps_done for x in of(pub, ev.GenerationPaused)] == [1]


async def test_resume_state_is_checked_and_a_bad_one_falls_back_to_a_full_run(
    caplog: pytest.LogCaptureFixture,
) -> None:
    blobs = InMemoryBlobStore()
    uri, sha = blobs.put("j/1-paused-2.pt", b"saved")
    runner = ScriptedRunner()
    worker = Worker(WorkerState("w1"), runner, blobs, InMemoryPublisher())
    good = assignment(
        params("ddim"), token=2, resume=ev.ResumeFrom(steps_done=2, state_uri=uri, state_sha256=sha)
    )
    bad = assignment(
        params("ddim"),
        token=3,
        resume=ev.ResumeFrom(
            steps_done=2, state_uri=uri, state_sha256=hashlib.sha256(b"other").hexdigest()
        ),
    )
    with caplog.at_level(logging.WARNING):
        for job in (good, bad):
            await worker.on_assignment(wrap(job), job)
    assert runner.resume_states == [b"saved", None]
    assert any("pause state unusable" in r.getMessage() for r in caplog.records)
